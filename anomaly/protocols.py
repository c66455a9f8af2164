"""Frame-level evaluation protocols: how 32 segment scores become one score per frame.

Published UCF-Crime figures are computed in different ways, and the differences
move the frame AUC by a point or more, so the protocol is an explicit option
recorded in ``metrics.json`` (``evaluation_protocol``):

- ``clips`` (default): frame -> clip (``frame // clip_len``) -> the segment that
  clip was pooled into (:func:`anomaly.segments.clip_frame_segments`), over all
  ``num_frames`` frames (frames after the last whole clip take the last clip's score);
- ``frames32``: the frames themselves cut into 32 equal runs (this project's
  rule before the clip mapping; ~4 % of frames take a neighbour's score);
- ``sultani_matlab``: Sultani et al.'s ``Evaluate_Anomaly_Detector.m``:
  ``n = num_frames // 16`` clips, shots ``round(linspace(1, n, 33))`` (1-based),
  shot i fills frames ``(ss-1)*16+1 .. (ee-1)*16+16`` with ``ee = next - 1``, so
  the last clip's frames keep score 0, as do the frames after the last whole clip
  (the script pads with the last value, which is that 0);
- ``snippet16``: the RTFM-era protocol (Tian et al. 2021 and later): one score
  per 16-frame snippet repeated 16 times, over ``16 * (num_frames // 16)`` frames
  (the tail after the last whole snippet is not evaluated); with 32-segment
  stores a snippet's score is its segment's (clip mapping).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from anomaly.segments import clip_frame_segments, frame_labels, frame_segments, num_clips

SNIPPET = 16  # frames per C3D/I3D snippet in the published protocols
DEFAULT_PROTOCOL = "clips"


def _clips(scores: np.ndarray, num_frames: int, intervals, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    return scores[clip_frame_segments(num_frames, clip_len, len(scores))], frame_labels(num_frames, intervals)


def _frames32(scores: np.ndarray, num_frames: int, intervals, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    return scores[frame_segments(num_frames, len(scores))], frame_labels(num_frames, intervals)


def _matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB's round: halves away from zero (numpy rounds halves to even)."""
    return np.floor(np.asarray(x) + 0.5).astype(np.int64)


def _sultani_matlab(
    scores: np.ndarray, num_frames: int, intervals, clip_len: int
) -> tuple[np.ndarray, np.ndarray]:
    clips = num_clips(num_frames, SNIPPET)
    shots = _matlab_round(np.linspace(1, clips, len(scores) + 1))
    detection = np.zeros(clips * SNIPPET, dtype=np.float32)
    for i in range(len(scores)):
        ss, ee = int(shots[i]), int(shots[i + 1]) - 1
        stop = (ss - 1) * SNIPPET + SNIPPET if ee < ss else (ee - 1) * SNIPPET + SNIPPET
        detection[(ss - 1) * SNIPPET : stop] = scores[i]
    pad = max(0, num_frames - detection.size)
    final = np.concatenate([detection, np.full(pad, detection[-1], dtype=np.float32)])[:num_frames]
    return final, frame_labels(num_frames, intervals)


def _snippet16(
    scores: np.ndarray, num_frames: int, intervals, clip_len: int
) -> tuple[np.ndarray, np.ndarray]:
    snippets = num_clips(num_frames, SNIPPET)
    segment_of_frame = clip_frame_segments(snippets * SNIPPET, SNIPPET, len(scores))
    labels = frame_labels(max(num_frames, snippets * SNIPPET), intervals)[: snippets * SNIPPET]
    return scores[segment_of_frame], labels


PROTOCOLS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "clips": _clips,
    "frames32": _frames32,
    "sultani_matlab": _sultani_matlab,
    "snippet16": _snippet16,
}


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        from anomaly.errors import AnomalyError

        raise AnomalyError("evaluation protocol", f"'{name}' is not one of {', '.join(PROTOCOLS)}")
    return name


def frame_scores_and_labels(
    segment_scores: np.ndarray,
    num_frames: int,
    intervals: Sequence[Sequence[int]] | None,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    clip_len: int = SNIPPET,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, 0/1 labels) per evaluated frame of one video under ``protocol``."""
    scores = np.asarray(segment_scores, dtype=np.float32)
    return PROTOCOLS[check_protocol(protocol)](scores, int(num_frames), intervals, int(clip_len or SNIPPET))


def describe(protocol: str, clip_len: int) -> dict:
    """What ``metrics.json`` records about the protocol."""
    return {
        "name": protocol,
        "clip_len": int(clip_len) if protocol == "clips" else SNIPPET,
        "frames32_equivalent": protocol == "frames32",
        "choices": sorted(PROTOCOLS),
    }


def store_clip_len(metadata: dict | None) -> int:
    """Frames per clip from the store's metadata (extracted stores record it); 16 otherwise.

    Published C3D, I3D and ResNet3D-34 releases all use 16-frame snippets.
    """
    value = (metadata or {}).get("clip_len")
    try:
        return int(value) if value and not (isinstance(value, float) and math.isnan(value)) else SNIPPET
    except (TypeError, ValueError):
        return SNIPPET
