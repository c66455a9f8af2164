"""Per camera: the head on a causal window of clip features, and alarms that open and close as clips arrive.

:class:`CameraScorer` takes one clip's features at a time (in stream order) and
scores it with :func:`anomaly.scoring.windows.score_clips` on the trailing
window (``causal=True``): the same window rule as batch scoring, fed only past
clips. :class:`AlarmTracker` turns the clip scores into alarms with
:func:`anomaly.alarms.find_alarms` itself (the rules of ``ray_jobs.score``:
threshold, merge gap, then minimum duration), run over the clips since the last
closed alarm:

- an alarm *opens* as soon as ``find_alarms`` reports it (its clips above the
  threshold, after merging, last ``min_duration_s``); while open, its end, peak
  and mean follow the latest clips;
- it *closes* once the next clip can no longer merge into it (the next clip
  would start more than ``merge_gap_s`` after its end), or when the stream is
  closed (:meth:`AlarmTracker.close`).

So the alarms of a whole recording fed clip by clip are exactly
``find_alarms`` on its causal scores (tested), and those scores are batch's
centred scores delayed by :func:`~anomaly.scoring.windows.causal_delay` clips.
Times are whatever the caller passes: wall-clock seconds live, media seconds in tests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from anomaly.alarms import Alarm, AlarmSettings, find_alarms
from anomaly.scoring.windows import score_clips


@dataclass
class LiveAlarm:
    """An alarm of one camera; ``end`` is None while it is open (``last_end`` is its latest clip end)."""

    camera: str
    start: float
    last_end: float
    peak_score: float
    mean_score: float
    end: float | None = None
    clips: int = 0

    @property
    def open(self) -> bool:
        return self.end is None


@dataclass
class AlarmTracker:
    """Incremental :func:`find_alarms` over a stream of ``(start_s, end_s, score)`` clips."""

    camera: str
    settings: AlarmSettings = field(default_factory=AlarmSettings)
    _start: list[float] = field(default_factory=list)
    _end: list[float] = field(default_factory=list)
    _score: list[float] = field(default_factory=list)
    _open: LiveAlarm | None = None

    def add(self, start_s: float, end_s: float, score: float, next_start_s: float | None = None) -> list:
        """Add one clip; returns events ``[("opened" | "updated" | "closed", LiveAlarm), …]``.

        ``next_start_s``: when the next clip will start (default: this clip's end, i.e. stride = clip length).
        """
        self._start.append(float(start_s))
        self._end.append(float(end_s))
        self._score.append(float(score))
        return self._update(end_s if next_start_s is None else next_start_s, final=False)

    def close(self) -> list:
        """The stream ended: close an open alarm (and one that just reached its minimum duration)."""
        return self._update(float("inf"), final=True)

    def expire(self, now: float) -> list:
        """No clip came (a stream that stopped): close an open alarm once ``now`` is past its merge gap."""
        if self._open is None or now - self._open.last_end <= self.settings.merge_gap_s:
            return []
        return self._update(now, final=False)

    def _alarms(self, settings: AlarmSettings) -> list[Alarm]:
        if not self._score:
            return []
        return find_alarms(
            self.camera, np.array(self._start), np.array(self._end), np.array(self._score), settings
        )

    def _update(self, next_start: float, *, final: bool) -> list:
        events = []
        alarms = self._alarms(self.settings)
        for alarm in alarms:
            closed = final or next_start - alarm.end_s > self.settings.merge_gap_s
            current = self._open if self._open is not None and self._open.start == alarm.start_s else None
            if current is None:
                current = LiveAlarm(
                    self.camera, alarm.start_s, alarm.end_s, alarm.peak_score, alarm.mean_score
                )
                self._open = current
                events.append(("opened", current))
            elif (current.last_end, current.peak_score) != (alarm.end_s, alarm.peak_score):
                events.append(("updated", current))
            current.last_end, current.peak_score, current.mean_score = (
                alarm.end_s,
                alarm.peak_score,
                alarm.mean_score,
            )
            current.clips = alarm.last_clip - alarm.first_clip + 1
            if closed:
                current.end = alarm.end_s
                events = [e for e in events if e[0] != "updated" or e[1] is not current]
                events.append(("closed", current))
                self._open = None
                self._drop_through(alarm.last_clip)
                return events + self._update(next_start, final=final) if self._score else events
        self._prune(next_start)
        return events

    def _drop_through(self, last: int) -> None:
        del self._start[: last + 1], self._end[: last + 1], self._score[: last + 1]

    def _prune(self, next_start: float) -> None:
        """Forget clips that can no longer be part of an alarm (bounded memory on an endless stream)."""
        if self._open is not None or not self._score:
            return
        # Runs above the threshold that may still merge with a future clip, whatever their length.
        groups = self._alarms(AlarmSettings(self.settings.threshold, 0.0, self.settings.merge_gap_s))
        alive = [g for g in groups if next_start - g.end_s <= self.settings.merge_gap_s]
        keep_from = alive[0].first_clip if alive else len(self._score)
        if keep_from:
            self._drop_through(keep_from - 1)


class CameraScorer:
    """One camera's head scoring: clip features in, a causal score per clip and alarm events out."""

    def __init__(
        self, camera: str, model, window: int, *, context: int = 0, settings: AlarmSettings | None = None
    ) -> None:
        self.camera, self.model, self.window, self.context = camera, model, max(1, int(window)), int(context)
        self.history = (2 * self.context + 1) * self.window  # clips a causal score can depend on
        self._features: deque[np.ndarray] = deque(maxlen=self.history)
        self.tracker = AlarmTracker(camera, settings or AlarmSettings())
        self.last_score: float | None = None

    def reset_window(self, window: int | None = None) -> None:
        """A new connection: the window restarts (no context across a gap), ``window`` clips long if given."""
        if window is not None:
            self.window = max(1, int(window))
            self.history = (2 * self.context + 1) * self.window
        self._features = deque(maxlen=self.history)

    def add(self, features: np.ndarray, start_s: float, end_s: float, next_start_s: float | None = None):
        """Score one clip on its trailing window; returns ``(score, alarm events)``."""
        self._features.append(np.asarray(features, dtype=np.float32).reshape(-1))
        scores = score_clips(
            self.model, np.stack(self._features), self.window, context=self.context, causal=True
        )
        self.last_score = float(scores[-1])
        return self.last_score, self.tracker.add(start_s, end_s, self.last_score, next_start_s)

    def close(self) -> list:
        return self.tracker.close()

    def expire(self, now: float) -> list:
        return self.tracker.expire(now)
