"""Frame-level metrics of UCF-Crime, computed with scikit-learn.

Every evaluated frame of a test video takes a segment's score by the chosen
protocol (:mod:`anomaly.protocols`; default ``clips``: frame -> clip -> the
segment the clip was pooled into); a frame's label is 1 inside an annotated
interval; one ROC AUC over the frames of all videos concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomaly.alarms import DEFAULT_THRESHOLD
from anomaly.protocols import DEFAULT_PROTOCOL, SNIPPET, frame_scores_and_labels

FALSE_ALARM_THRESHOLD = DEFAULT_THRESHOLD  # the one alarm threshold (anomaly.alarms)


@dataclass
class FrameLevel:
    """Per-frame scores and labels of many videos, concatenated, with each frame's video."""

    scores: np.ndarray
    labels: np.ndarray
    video_index: np.ndarray


def frame_level(
    segment_scores: np.ndarray,
    num_frames: Sequence[int],
    intervals: Sequence[Sequence[tuple[int, int]]],
    *,
    protocol: str = DEFAULT_PROTOCOL,
    clip_len: int = SNIPPET,
) -> FrameLevel:
    scores, labels, owner = [], [], []
    for i, (seg, frames, ivs) in enumerate(zip(segment_scores, num_frames, intervals, strict=True)):
        frames = int(frames)
        if frames <= 0:
            raise ValueError(f"video {i} has no frame count; frame-level metrics need num_frames")
        video_scores, video_labels = frame_scores_and_labels(
            seg, frames, ivs, protocol=protocol, clip_len=clip_len
        )
        scores.append(video_scores)
        labels.append(video_labels)
        owner.append(np.full(video_scores.size, i, dtype=np.int64))
    return FrameLevel(np.concatenate(scores), np.concatenate(labels), np.concatenate(owner))


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present (AUC is undefined there)."""
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def video_auc(segment_scores: np.ndarray, labels: np.ndarray) -> float:
    """Video-level AUC of the bag maximum against the video label (for weakly labelled data)."""
    return _auc(np.asarray(labels), np.asarray(segment_scores).max(axis=1))


def bag_scores(segment_scores: np.ndarray, k: int = 3) -> np.ndarray:
    """Each bag's mean top-``k`` segment score: its video-level score (k=3: robust to one spike)."""
    return np.sort(np.asarray(segment_scores), axis=1)[:, -k:].mean(axis=1)


def bag_auc(segment_scores: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Video-level AUC of each bag's mean top-``k`` segment score (:func:`bag_scores`).

    The cross-validation figure that chooses recipes on the train split's video labels
    (``tune.cv_folds``, ``benchmarks/cv_select.py``).
    """
    return _auc(np.asarray(labels), bag_scores(segment_scores, k))


def saturated_share(segment_scores: np.ndarray) -> float:
    """Share of segment scores that are exactly 0 or 1: in float32, sigmoid reaches 1.0 from a logit
    of about 17, so the most confident segments tie and lose their order (a frame AUC counts ties
    as half): read a frame AUC with many of them as partly a video-level figure."""
    scores = np.asarray(segment_scores)
    return float(((scores <= 0.0) | (scores >= 1.0)).mean()) if scores.size else float("nan")


def within_video_aucs(frames: FrameLevel, video_labels: np.ndarray) -> dict[int, float]:
    """Video index -> the AUC of its own frames, for each anomalous video with both kinds of frame."""
    got = {}
    for i in np.flatnonzero(np.asarray(video_labels) == 1):
        mine = frames.video_index == i
        auc = _auc(frames.labels[mine], frames.scores[mine])
        if auc == auc:
            got[int(i)] = auc
    return got


def within_video_auc(frames: FrameLevel, video_labels: np.ndarray) -> float:
    """Mean over anomalous videos (with both kinds of frame) of the AUC of their own frames.

    How well a scorer finds the moments *inside* a video: frame AUC pools every video's frames,
    so it also rewards ranking whole videos; this does not (0.5: no better than chance).
    """
    got = within_video_aucs(frames, video_labels)
    return float(np.mean(list(got.values()))) if got else float("nan")


def video_oracle_auc(frames: FrameLevel, video_labels: np.ndarray) -> float:
    """Frame AUC of a perfect *video* classifier: every frame of an anomalous video scores 1, of a
    normal one 0. From the labels alone, it says how much of a split's frame AUC ranking whole
    videos can earn (it rises with the share of each anomalous video that is anomalous)."""
    return _auc(frames.labels, np.asarray(video_labels)[frames.video_index].astype(np.float64))


def evaluate_frames(
    segment_scores: np.ndarray,
    labels: np.ndarray,
    num_frames: Sequence[int],
    intervals: Sequence[Sequence[tuple[int, int]]],
    classes: Sequence[str],
    *,
    threshold: float = FALSE_ALARM_THRESHOLD,
    protocol: str = DEFAULT_PROTOCOL,
    clip_len: int = SNIPPET,
) -> dict:
    """``frame_auc``, ``frame_ap``, ``false_alarm_rate`` and ``per_class_auc``.

    - false-alarm rate: share of the frames of normal videos scored above ``threshold``;
    - detection rate: share of the anomalous frames scored above ``threshold`` (read the
      false-alarm rate beside it: a scorer that never alarms has 0 % of both);
    - per-class AUC: frame AUC over the videos of one class plus all normal videos;
    - ``saturated_share``: the share of segment scores exactly 0 or 1 (:func:`saturated_share`);
    - ``within_video_auc`` and ``video_oracle_auc``: what of the frame AUC is finding moments
      and what ranking whole videos could earn on these labels (:func:`within_video_auc`,
      :func:`video_oracle_auc`).
    """
    frames = frame_level(segment_scores, num_frames, intervals, protocol=protocol, clip_len=clip_len)
    labels = np.asarray(labels)
    normal_frames = labels[frames.video_index] == 0
    classes_arr = np.asarray(classes)
    per_class = {}
    for name in sorted(set(classes_arr[labels == 1])):
        keep = normal_frames | (classes_arr[frames.video_index] == name)
        per_class[str(name)] = _auc(frames.labels[keep], frames.scores[keep])
    has_both = frames.labels.size and frames.labels.min() != frames.labels.max()
    return {
        "frame_auc": _auc(frames.labels, frames.scores),
        "frame_ap": float(average_precision_score(frames.labels, frames.scores))
        if has_both
        else float("nan"),
        "false_alarm_rate": float((frames.scores[normal_frames] > threshold).mean())
        if normal_frames.any()
        else float("nan"),
        "detection_rate": float((frames.scores[frames.labels == 1] > threshold).mean())
        if (frames.labels == 1).any()
        else float("nan"),
        "per_class_auc": per_class,
        "saturated_share": saturated_share(segment_scores),
        "within_video_auc": within_video_auc(frames, labels),
        "video_oracle_auc": video_oracle_auc(frames, labels),
        "num_videos": int(len(labels)),
        "num_frames": int(frames.labels.size),
    }


def roc_points(frames: FrameLevel) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(frames.labels, frames.scores)
    return fpr, tpr
