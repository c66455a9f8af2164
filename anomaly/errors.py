"""The one user-facing exception type.

Commands turn it into a single line on stderr (``error: <where>: <what>``) and
exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class AnomalyError(Exception):
    """A problem with the user's input, data or settings, not with the code."""

    def __init__(self, where: str, what: str) -> None:
        self.where = str(where)
        self.what = " ".join(str(what).split())  # always one line
        super().__init__(f"{self.where}: {self.what}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (an OS error's reason without its path), or its type.

    Third-party errors (PyAV, torch, pyarrow) often carry pages of context; the one-line
    error rule keeps their first line only.
    """
    text = str(getattr(exc, "strerror", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SettingError(AnomalyError):
    """A bad value of a named setting: ``name=value: what is wrong``.

    The library names its own parameter (``stride=0: must be ≥ 1``); a command that
    took the value from a flag shows that flag instead (:func:`anomaly.cli.run`).
    """

    def __init__(self, parameter: str, value: object, what: str) -> None:
        self.parameter = parameter
        self.value = value
        super().__init__(f"{parameter}={value!r}", what)
