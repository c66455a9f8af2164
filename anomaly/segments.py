"""Sultani's 32-segment rule and its inverse (frame -> clip -> segment).

Pooling cuts a video's *clips* into 32 runs with ``round(linspace(0, n_clips, 33))``;
the inverse therefore maps a frame to its clip first (``frame // clip_len``) and
the clip to the segment it was pooled into (:func:`clip_frame_segments`), so a
frame's score always comes from the segment its clip's features went into.
Cutting the *frames* into 32 runs instead (:func:`frame_segments`, the older
rule kept as the ``frames32`` protocol) gives 4 % of the frames of 16-frame
clips a neighbouring segment's score. The evaluation protocols built on these
mappings are in :mod:`anomaly.protocols`.
:class:`SegmentAccumulator` gives :func:`pool_segments`' result from clips
arriving in any order, in pieces, with repeats, keeping only ``(32, D)`` sums.
"""

from __future__ import annotations

import numpy as np

NUM_SEGMENTS = 32


def segment_bounds(length: int, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """``num_segments + 1`` boundaries splitting ``length`` items into equal runs."""
    if length < 1:
        raise ValueError(f"cannot split {length} items into segments")
    return np.round(np.linspace(0, length, num_segments + 1)).astype(np.int64)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32)


def pool_segments(
    clip_features: np.ndarray, num_segments: int = NUM_SEGMENTS, *, l2: bool = True
) -> np.ndarray:
    """Average the clip features of one video into ``num_segments`` segments, then L2-normalise.

    Segment i averages clips ``bounds[i]:bounds[i+1]``; an empty run (fewer clips
    than segments) repeats the clip at its start, as Sultani's MATLAB code does.
    ``l2=False`` keeps the averages as they are (the importer: published rows keep
    their scale whatever their count; normalisation is the model's job).
    """
    feats = np.asarray(clip_features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"expected (clips, dim) features, got shape {feats.shape}")
    bounds = segment_bounds(feats.shape[0], num_segments)
    pooled = np.empty((num_segments, feats.shape[1]), dtype=np.float32)
    for i in range(num_segments):
        start, end = bounds[i], bounds[i + 1]
        if end <= start:
            pooled[i] = feats[min(start, feats.shape[0] - 1)]
        else:
            pooled[i] = feats[start:end].mean(axis=0)
    return l2_normalize(pooled) if l2 else pooled


def frame_segments(num_frames: int, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """Segment index of every frame (the official UCF-Crime evaluation protocol).

    With fewer frames than segments some segments hold no frame; each frame
    takes the last segment that starts at or before it.
    """
    bounds = segment_bounds(num_frames, num_segments)
    return np.searchsorted(bounds, np.arange(num_frames), side="right") - 1


def frame_scores(segment_scores: np.ndarray, num_frames: int, clip_len: int | None = None) -> np.ndarray:
    """Spread 32 segment scores over ``num_frames`` frames.

    With ``clip_len`` (frames per clip of the store) frames go through their clip
    (:func:`clip_frame_segments`, what evaluation uses); without it the frames
    are cut into 32 equal runs (the ``frames32`` rule).
    """
    scores = np.asarray(segment_scores, dtype=np.float32)
    if clip_len:
        return scores[clip_frame_segments(num_frames, clip_len, scores.shape[0])]
    return scores[frame_segments(num_frames, scores.shape[0])]


def frame_labels(num_frames: int, intervals) -> np.ndarray:
    """0/1 per frame: 1 inside any ``[start, end)`` interval (clipped to the video)."""
    labels = np.zeros(num_frames, dtype=np.int8)
    for start, end in intervals or ():
        labels[max(int(start), 0) : min(int(end), num_frames)] = 1
    return labels


class SegmentAccumulator:
    """The clip features of one video, folded into its 32 segments as they arrive, in any order.

    With ``num_clips >= 32`` every segment holds at least one clip, so a
    running ``(32, D)`` sum per segment is all that is kept (memory independent
    of the video's length); with fewer clips the few rows are kept and pooled
    by :func:`anomaly.segments.pool_segments` (empty runs repeat a clip). Both
    give Sultani's segments; a clip seen twice (a retried task) counts once.
    """

    def __init__(self, num_clips: int, dim: int) -> None:
        if num_clips < 1:
            raise ValueError(f"a video needs at least one clip, got {num_clips}")
        self.num_clips = num_clips
        self.seen = np.zeros(num_clips, dtype=bool)
        self.count = 0
        if num_clips < NUM_SEGMENTS:
            self.rows: np.ndarray | None = np.zeros((num_clips, dim), dtype=np.float32)
        else:
            self.rows = None
            bounds = segment_bounds(num_clips)
            self.bounds = bounds
            self.sums = np.zeros((NUM_SEGMENTS, dim), dtype=np.float64)
            self.sizes = np.diff(bounds).astype(np.float64)

    def add(self, clip_index: np.ndarray, features: np.ndarray) -> None:
        index = np.asarray(clip_index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_clips):
            raise ValueError(f"clip index out of range 0..{self.num_clips - 1}")
        index, first = np.unique(index, return_index=True)
        fresh = ~self.seen[index]
        index, feats = index[fresh], np.asarray(features, dtype=np.float32)[first[fresh]]
        self.seen[index] = True
        self.count += int(index.size)
        if self.rows is not None:
            self.rows[index] = feats
        else:
            segments = np.searchsorted(self.bounds, index, side="right") - 1
            np.add.at(self.sums, segments, feats)

    @property
    def complete(self) -> bool:
        return self.count == self.num_clips

    def pooled(self, groups: int = 1) -> np.ndarray:
        """``(32, D)`` float32, L2-normalised segments; only once :attr:`complete`.

        ``groups > 1``: each row is ``groups`` features side by side (ten crops),
        pooled alike and L2-normalised each on its own: ``(32, groups, D / groups)``.
        """
        if not self.complete:
            raise ValueError(f"only {self.count} of {self.num_clips} clips are in")
        if self.rows is not None:
            means = pool_segments(self.rows, l2=False)
        else:
            means = (self.sums / self.sizes[:, None]).astype(np.float32)
        if groups == 1:
            return l2_normalize(means)
        return l2_normalize(means.reshape(means.shape[0], groups, -1))


def num_clips(num_frames: int, clip_len: int) -> int:
    """Clips of ``clip_len`` frames a video of ``num_frames`` frames yields (non-overlapping, at least 1)."""
    return max(1, int(num_frames) // max(1, int(clip_len)))


def clip_frame_segments(num_frames: int, clip_len: int, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """Segment index of every frame through its clip: frame -> ``frame // clip_len`` -> pooled segment.

    Frames after the last whole clip belong to the last clip; clips map to
    segments by the pooling boundaries (:func:`segment_bounds` over the clips).
    """
    clips = num_clips(num_frames, clip_len)
    clip_of_frame = np.minimum(np.arange(int(num_frames)) // max(1, int(clip_len)), clips - 1)
    bounds = segment_bounds(clips, num_segments)
    segment_of_clip = np.searchsorted(bounds, np.arange(clips), side="right") - 1
    return segment_of_clip[clip_of_frame]
