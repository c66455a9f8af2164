"""Sultani's 32-segment rule and its inverse (frame -> segment).

Both directions use the same boundaries, ``round(linspace(0, n, 33))``, so a
frame's score always comes from the segment its clips were pooled into.
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


def pool_segments(clip_features: np.ndarray, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """Average the clip features of one video into ``num_segments`` segments, then L2-normalise.

    Segment i averages clips ``bounds[i]:bounds[i+1]``; an empty run (fewer clips
    than segments) repeats the clip at its start, as Sultani's MATLAB code does.
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
    return l2_normalize(pooled)


def frame_segments(num_frames: int, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
    """Segment index of every frame (the official UCF-Crime evaluation protocol).

    With fewer frames than segments some segments hold no frame; each frame
    takes the last segment that starts at or before it.
    """
    bounds = segment_bounds(num_frames, num_segments)
    return np.searchsorted(bounds, np.arange(num_frames), side="right") - 1


def frame_scores(segment_scores: np.ndarray, num_frames: int) -> np.ndarray:
    """Spread 32 segment scores over ``num_frames`` frames."""
    scores = np.asarray(segment_scores, dtype=np.float32)
    return scores[frame_segments(num_frames, scores.shape[0])]


def frame_labels(num_frames: int, intervals) -> np.ndarray:
    """0/1 per frame: 1 inside any ``[start, end)`` interval (clipped to the video)."""
    labels = np.zeros(num_frames, dtype=np.int8)
    for start, end in intervals or ():
        labels[max(int(start), 0) : min(int(end), num_frames)] = 1
    return labels
