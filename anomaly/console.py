"""What a command shows a person: its own lines on the terminal, Ray's internals in log files.

A job's output is a short story: numbered steps, one progress line per stage, results.
Ray's own chatter (worker logs, Train reports, Data execution plans and progress, Tune
tables) is useful when something goes wrong and noise otherwise, so by default it goes
to files and the command says once where; ``--verbose`` brings it back to the terminal.

- :func:`configure`: called once by :func:`anomaly.cli.run` before any Ray import starts
  workers; sets the project's log format and the quiet Ray settings.
- :func:`hold_ray_logs` / :func:`route_ray_logs`: around ``ray.init``; Ray's driver-side
  records go to ``ray-driver.log`` in the session's log folder, which is returned.
- :class:`Progress`: one updating line per stage (count, rate, ETA); on a terminal it
  rewrites itself, elsewhere (CI, ``ray job logs``) it prints at most every
  ``interval_s`` seconds and once at the end.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

# Ray's loggers whose driver-side records are internals (execution plans, progress, tables).
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")

_state = {"verbose": False}


def verbose() -> bool:
    """Whether the running command asked for Ray's own output (``--verbose``)."""
    return _state["verbose"]


class _ProjectFormatter(logging.Formatter):
    """``message`` for information, ``warning: message`` for the rest: lines a person reads."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def configure(*, verbose: bool = False) -> None:
    """The project's log lines, and (unless ``verbose``) Ray's output kept off the terminal.

    Environment variables are set only where unset, so a user's own choice wins; local
    Ray processes inherit them.
    """
    _state["verbose"] = verbose
    level = os.environ.get("ANOMALY_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_ProjectFormatter("%(message)s"))
        # Ray Data's progress bars and Tune's experiment boxes are what `--verbose` is for (Tune's
        # newer console output prints its boxes even at verbose=0; the classic one is silent).
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    project = logging.getLogger("anomaly")
    project.handlers[:] = [handler]
    project.setLevel(level)


def hold_ray_logs() -> None:
    """Before ``ray.init``: keep Ray's console quiet and hold its records until the log folder exists.

    ``ray.init`` itself logs (the local instance, token authentication) before its session
    folder is known; those records wait in memory and :func:`route_ray_logs` writes them.
    """
    if verbose():
        return
    # Ray and Ray Data configure their loggers when imported: adjust them after.
    import ray  # noqa: F401
    import ray.data  # noqa: F401

    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    _state["held"] = held
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            # Ray's console handlers are stream handlers on stderr; its own file handlers stay.
            if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler):
                handler.setLevel(logging.ERROR)
        if name == "ray" or not logger.propagate:
            logger.addHandler(held)


def route_ray_logs(session_dir: str | None) -> str | None:
    """After ``ray.init``: Ray's driver-side records go to ``SESSION/logs/ray-driver.log``; return the folder.

    Workers' own output is in the same folder (``ray.init(log_to_driver=False)``). With
    ``--verbose`` nothing moves and ``None`` is returned.
    """
    held = _state.pop("held", None)
    if held is None or not session_dir:
        return None
    log_dir = os.path.join(session_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    to_file = logging.FileHandler(os.path.join(log_dir, "ray-driver.log"))
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    held.setTarget(to_file)
    held.flush()
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        if held in logger.handlers:
            logger.removeHandler(held)
            logger.addHandler(to_file)
    return log_dir


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """One progress line for a stage: ``extract  12/32 videos  0.8/s  ETA 25s``.

    ``update(done)`` as work completes; ``close(summary)`` ends the line. A total of
    ``None`` (not known yet) shows the count and rate only.
    """

    def __init__(
        self, label: str, total: int | None, unit: str, *, stream=None, interval_s: float = 10.0
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stdout
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.shown_at = -float("inf")
        self.shown_done: int | None = None
        self.done = 0
        self.note = ""

    def text(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{self.label}  {count} {self.unit}", f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s"]
        if self.total and 0 < self.done < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.append(_duration(elapsed))
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)

    def update(self, done: int, *, total: int | None = None, note: str = "") -> None:
        """Record progress; shown now on a terminal, else when ``interval_s`` has passed."""
        self.done = done
        if total is not None:
            self.total = total
        self.note = note
        now = time.monotonic()
        if self.interactive:
            self.stream.write("\r\033[K" + self.text())
            self.stream.flush()
        elif now - self.shown_at >= self.interval_s:
            self.shown_at, self.shown_done = now, done
            print(self.text(), file=self.stream, flush=True)

    def close(self, summary: str = "") -> None:
        """The stage's last line (its final count and rate, then ``summary``)."""
        line = self.text() + (f"  {summary}" if summary else "")
        if self.interactive:
            self.stream.write("\r\033[K" + line + "\n")
        elif summary or self.shown_done != self.done:  # not the line just printed again
            print(line, file=self.stream)
        self.stream.flush()
