"""The one exception type for bad input: it always names the file (and line or key) at fault."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad user input. ``str()`` reads ``<file>[:<line>]: <what is wrong>``."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(where + message)
