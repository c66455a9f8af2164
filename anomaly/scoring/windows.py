"""How a scorer trained on 32-segment bags scores one clip: a centred window about one training segment long.

A MIL scorer never saw a single clip's feature in training: it saw *segments*,
the L2-normalised mean of the clip features of 1/32 of a video
(:func:`anomaly.segments.pool_segments`). Scoring a raw clip feature would feed
it inputs of another kind (a different norm, more noise). Pooling a long
recording into 32 segments instead gives one score per 1/32 of the recording:
minutes per score for an hour of CCTV.

The rule here keeps the input the scorer knows and the resolution of a clip:
clip ``i`` is scored on the L2-normalised mean of the clip features in a
window of ``window`` clips centred on it (clipped at the ends of the video;
a video shorter than the window is one window), i.e. a segment of training
length that slides clip by clip. The window defaults to about as many
seconds as a training segment lasted (:func:`window_clips`).

Heads that need context (a sequence of segments, e.g. RTFM-style or
transformer heads, recorded as ``model:`` in the checkpoint's config) score,
for each clip, the sequence of ``2 * context + 1`` such windows spaced one
window apart and centred on it, and the clip takes the middle one's score.

Live scoring (:mod:`anomaly.live`) cannot wait for future clips: with
``causal=True`` clip ``i`` is scored on the *trailing* window ``[i - window + 1,
i]`` (fewer clips at the start of a stream), and a sequence head on the
``2 * context + 1`` trailing windows, taking the last one's score. Away from the
ends, the causal score of clip ``i`` is the centred score of clip
``i - causal_delay(window)``: live and batch scores agree up to that delay.
"""

from __future__ import annotations

import numpy as np
import torch

from anomaly.segments import NUM_SEGMENTS, l2_normalize
from anomaly.video.frame_folder import DEFAULT_FPS

# About one UCF-Crime training segment: the median training video has 2221 frames
# (bundled Train_Annotation_with_frame_counts.txt), / 32 segments / 30 fps = 2.3 s.
DEFAULT_WINDOW_SECONDS = 2.5
# Heads scored per segment (no context): the MIL scorer of Sultani et al.
PER_SEGMENT_HEADS = ("mil", "sultani", "mlp")


def window_clips(seconds: float, fps: float, stride: int) -> int:
    """Clips in a window of ``seconds`` at ``fps`` with clips every ``stride`` frames (at least 1)."""
    if not fps or not np.isfinite(fps) or fps <= 0:
        return 1
    return max(1, int(round(seconds * fps / stride)))


def context_segments(payload: dict, model: torch.nn.Module | None = None) -> int:
    """Segments of context on each side a head needs: 0 for per-segment heads, 16 (a 32-segment bag) else.

    A head that says what it needs (a ``context`` attribute, ``"segment"`` for per-segment heads) is
    taken at its word; otherwise the checkpoint config's ``model`` key decides.
    """
    declared = getattr(model, "context", None)
    if declared is not None:
        return 0 if declared == "segment" else NUM_SEGMENTS // 2
    config = payload.get("config") or {}
    head = str(config.get("model") or "mlp").lower()
    return 0 if head in PER_SEGMENT_HEADS else NUM_SEGMENTS // 2


def causal_delay(window: int) -> int:
    """Clips by which a trailing window lags the centred one: causal clip ``i`` = centred clip ``i - delay``."""
    window = max(1, int(window))
    return window - 1 - (window - 1) // 2


def window_features(clip_features: np.ndarray, window: int, *, causal: bool = False) -> np.ndarray:
    """``(N, D)`` clip features -> ``(N, D)`` L2-normalised means over the window of each clip.

    Centred (batch) by default; ``causal``: the trailing window ending at each clip (live).
    """
    feats = np.asarray(clip_features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"expected (clips, dim) features, got shape {feats.shape}")
    n = feats.shape[0]
    index = np.arange(n)
    if causal:  # only past clips: a short stream has short windows, never future ones
        high = index + 1
        low = np.maximum(0, high - max(1, int(window)))
    else:
        window = max(1, min(int(window), n))
        low = np.clip(index - (window - 1) // 2, 0, n - window)
        high = low + window  # shifted inward at the ends: every window holds `window` clips
    sums = np.concatenate([np.zeros((1, feats.shape[1])), np.cumsum(feats, axis=0)])
    means = (sums[high] - sums[low]) / (high - low)[:, None]
    return l2_normalize(means.astype(np.float32))


def _run(model: torch.nn.Module, x: np.ndarray, batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            out.append(
                model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch]))).float().numpy()
            )
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def window_means(features: np.ndarray, lo: int, n: int, window: int, centres: np.ndarray) -> np.ndarray:
    """The L2-normalised window means of clips ``centres`` of an ``n``-clip video (the rule above).

    ``features``: the video's clips ``lo .. lo + len(features)``, which must hold every clip of the
    centres' windows; only this slice is summed (float64), so memory follows the slice, not ``n``.
    """
    feats = np.asarray(features, dtype=np.float32)
    w = max(1, min(int(window), n))
    low = np.clip(centres - (w - 1) // 2, 0, n - w)
    high = low + w
    sums = np.zeros((len(feats) + 1, feats.shape[1]), dtype=np.float64)
    np.cumsum(feats, axis=0, dtype=np.float64, out=sums[1:])
    means = (sums[high - lo] - sums[low - lo]) / w
    return l2_normalize(means.astype(np.float32))


def halo_clips(window: int, n: int, context: int) -> int:
    """Clips beyond a range that scoring the range reads: its windows and, for context heads, theirs."""
    return (max(0, context) + 1) * max(1, min(int(window), n))


def score_clip_range(
    model: torch.nn.Module,
    features: np.ndarray,
    *,
    lo: int,
    n: int,
    window: int,
    start: int,
    end: int,
    context: int = 0,
    batch: int = 1024,
) -> np.ndarray:
    """Scores of clips ``start .. end`` of an ``n``-clip video from its clips ``lo .. lo + len(features)``.

    The slice must reach :func:`halo_clips` beyond ``start .. end`` (clipped at the video's ends);
    the scores are those :func:`score_clips` gives for the whole video.
    """
    model.eval()
    if context <= 0:
        means = window_means(features, lo, n, window, np.arange(start, end))
        return _run(model, means, batch).reshape(-1).astype(np.float32)
    offsets = np.arange(-context, context + 1) * max(1, min(int(window), n))
    index = np.clip(np.arange(start, end)[:, None] + offsets[None, :], 0, n - 1)  # (M, 2K+1) centres
    first, last = int(index.min()), int(index.max()) + 1
    means = window_means(features, lo, n, window, np.arange(first, last))
    rows, step = [], max(1, batch // len(offsets))
    for at in range(0, len(index), step):
        sequences = means[index[at : at + step] - first]
        rows.append(_run(model, sequences, len(sequences))[:, context])
    return np.concatenate(rows).astype(np.float32)


def score_clips(
    model: torch.nn.Module,
    clip_features: np.ndarray,
    window: int,
    *,
    context: int = 0,
    batch: int = 1024,
    causal: bool = False,
) -> np.ndarray:
    """One score per clip (``(N,)`` float32) with the window rule above; ``context`` > 0 for sequence heads.

    ``causal``: trailing windows only (live scoring; see the module docstring). Centred
    windows are scored by :func:`score_clip_range` over the whole video (one rule, chunked
    or not).
    """
    feats = np.asarray(clip_features)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"expected (clips, dim) features, got shape {feats.shape}")
    n = len(feats)
    if not causal:
        return score_clip_range(
            model, feats, lo=0, n=n, window=window, start=0, end=n, context=context, batch=batch
        )
    model.eval()
    windows = window_features(feats, window, causal=True)
    if context <= 0:
        return _run(model, windows, batch).reshape(-1).astype(np.float32)
    # the 2K+1 trailing windows, one window apart; the clip takes the last one's score
    offsets = np.arange(-2 * context, 1) * max(1, int(window))
    index = np.clip(np.arange(n)[:, None] + offsets[None, :], 0, n - 1)  # (N, 2K+1) window ends
    rows, step = [], max(1, batch // len(offsets))
    for start in range(0, n, step):
        sequences = windows[index[start : start + step]]
        rows.append(_run(model, sequences, len(sequences))[:, 2 * context])
    return np.concatenate(rows).astype(np.float32)


def clip_frame_scores(clip_scores: np.ndarray, num_frames: int, stride: int) -> np.ndarray:
    """A score per frame: the latest clip starting at or before it (the tail after the last clip takes the last)."""
    scores = np.asarray(clip_scores, dtype=np.float32)
    if num_frames <= 0 or scores.size == 0:
        return np.zeros(max(num_frames, 0), dtype=np.float32)
    return scores[np.minimum(np.arange(num_frames) // stride, scores.size - 1)]


def clip_times(
    num_clips: int, num_frames: int, clip_len: int, stride: int, fps: float
) -> dict[str, np.ndarray]:
    """First/last frame and start/end second of every clip (:func:`anomaly.video.clip_starts`'s rule)."""
    first = np.arange(num_clips, dtype=np.int64) * stride
    last = np.minimum(first + clip_len, max(num_frames, 1)) - 1
    rate = fps if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS  # no rate stated: as frame folders
    return {
        "first_frame": first,
        "last_frame": last,
        "start_s": first / rate,
        "end_s": (last + 1) / rate,
    }
