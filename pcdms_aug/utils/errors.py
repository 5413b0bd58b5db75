"""The one exception type for bad input: it always names the file (and line or key) at fault."""
from __future__ import annotations

import reprlib
from pathlib import Path

# A message quotes at most this much of a value: a value read from a file can be megabytes (or, through YAML
# aliases, far more once printed), and an error message is one line.
SHOWN_CHARS = 80
MAX_MESSAGE_CHARS = 2000


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, without building the full repr first."""
    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 6, 8, 8, 8
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit + 20 else text[:limit] + "..."


class DataError(ValueError):
    """Bad user input. ``str()`` reads ``<file>[:<line>]: <what is wrong>``."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + " ..."
        self.reason = message
        where = ""
        if self.path is not None:
            shown_path = self.path if len(self.path) <= 300 else self.path[:300] + "..."
            where = shown_path if line is None else f"{shown_path}:{line}"
            where += ": "
        super().__init__(where + message)
