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
