"""From per-clip scores to alarms: a threshold, then a merge gap, then a minimum duration.

This module is the one home of the alarm threshold (:data:`DEFAULT_THRESHOLD`);
plots, metrics and commands that draw or count "above threshold" import it.

Order matters: runs of clips above the threshold are merged first when the
pause between them is at most ``merge_gap_s`` (one incident that flickers
around the threshold is one alarm, not five), and only then are alarms shorter
than ``min_duration_s`` dropped (a fragmented event must not be lost piece by
piece). The defaults suit CCTV review: an operator cares about incidents of a
second or more, and two bursts a few seconds apart are one incident.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from anomaly.errors import SettingError

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_DURATION_S = 1.0
DEFAULT_MERGE_GAP_S = 3.0


@dataclass(frozen=True)
class AlarmSettings:
    threshold: float = DEFAULT_THRESHOLD
    min_duration_s: float = DEFAULT_MIN_DURATION_S
    merge_gap_s: float = DEFAULT_MERGE_GAP_S

    def validate(self) -> AlarmSettings:
        if not 0.0 <= self.threshold <= 1.0:
            raise SettingError("threshold", self.threshold, "must be within [0, 1]")
        if not self.min_duration_s >= 0:
            raise SettingError("min_duration_s", self.min_duration_s, "must be >= 0 seconds")
        if not self.merge_gap_s >= 0:
            raise SettingError("merge_gap_s", self.merge_gap_s, "must be >= 0 seconds")
        return self


@dataclass(frozen=True)
class Alarm:
    """One incident in one video: ``[start_s, end_s)`` and the clip scores inside it."""

    video_id: str
    start_s: float
    end_s: float
    peak_score: float
    mean_score: float
    first_clip: int
    last_clip: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        return asdict(self)


def find_alarms(
    video_id: str,
    start_s: np.ndarray,
    end_s: np.ndarray,
    scores: np.ndarray,
    settings: AlarmSettings = AlarmSettings(),
) -> list[Alarm]:
    """Alarms of one video from its clips in time order (``start_s``, ``end_s``, ``scores`` per clip).

    A clip is above when its score is strictly greater than the threshold. The
    mean score is over every clip the alarm spans, bridged gaps included.
    """
    start_s, end_s = np.asarray(start_s, dtype=np.float64), np.asarray(end_s, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (start_s.shape == end_s.shape == scores.shape) or scores.ndim != 1:
        raise ValueError(f"per-clip arrays differ in shape: {start_s.shape}, {end_s.shape}, {scores.shape}")
    order = np.argsort(start_s, kind="stable")
    start_s, end_s, scores = start_s[order], end_s[order], scores[order]
    above = np.concatenate([[False], scores > settings.threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    runs = [[int(a), int(b) - 1] for a, b in zip(edges[0::2], edges[1::2], strict=True)]  # clip ranges
    merged: list[list[int]] = []
    for first, last in runs:
        if merged and start_s[first] - end_s[merged[-1][1]] <= settings.merge_gap_s:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    alarms = []
    for first, last in merged:
        begin, finish = float(start_s[first]), float(end_s[last])
        if finish - begin < settings.min_duration_s:
            continue
        inside = scores[first : last + 1]
        alarms.append(
            Alarm(
                video_id=video_id,
                start_s=begin,
                end_s=finish,
                peak_score=float(inside.max()),
                mean_score=float(inside.mean()),
                first_clip=int(order[first]),
                last_clip=int(order[last]),
            )
        )
    return alarms


def sort_by_peak(alarms: list[Alarm]) -> list[Alarm]:
    """Most alarming first; ties by video and time, so outputs are reproducible."""
    return sorted(alarms, key=lambda a: (-a.peak_score, a.video_id, a.start_s))


def format_alarm(alarm: Alarm) -> str:
    return (
        f"  {alarm.start_s:8.2f}s – {alarm.end_s:8.2f}s  "
        f"(peak {alarm.peak_score:.2f}, mean {alarm.mean_score:.2f})"
    )
