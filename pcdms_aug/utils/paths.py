"""Where names read from files may point, and where outputs may go: one rule each.

A name read from a file (an annotation row, a pairs row, ``--names``) is a plain file name, never a path, so
a shared CSV cannot make the program read or write outside the folders the user gave on the command line.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from pcdms_aug.utils.errors import DataError


def plain_name(name: str, path: str | Path | None = None, line: int | None = None, what: str = "image name") -> str:
    """``name`` itself when it is a plain file name (no separator, no ``..``, not absolute, no control
    character); otherwise a DataError naming the file and line it came from."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or any(ord(c) < 32 for c in name) or PurePosixPath(name).is_absolute()
           or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute())
    if bad:
        raise DataError(f"{what} {name[:80]!r} is not a plain file name (no folders, no '..', not absolute): "
                        f"names in a file never point outside the folders given on the command line",
                        path, line)
    return name


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (symbolic links resolved)."""
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return p == f or f in p.parents


def check_not_special(out: str | Path, what: str) -> Path:
    """Refuse an output path that is empty (it would mean the current folder), the file system's root or the
    home folder: a command writes into a folder of its own, never over a user's whole tree."""
    text = str(out)
    if not text.strip():
        raise DataError(f"{what} is empty: give a folder or file name")
    path = Path(os.path.expanduser(text))
    real = Path(os.path.realpath(path))
    if real == Path(real.anchor) or real == Path(os.path.realpath(os.path.expanduser("~"))):
        raise DataError(f"{what} is {'the root folder' if real == Path(real.anchor) else 'the home folder'}: "
                        "give a folder of its own", text)
    return Path(text)


def check_out_dir(out: str | Path, what: str = "--out", not_inside: dict[str, str | Path] | None = None) -> Path:
    """An output folder that can be written: not a file, creatable and writable, not inside any of
    ``not_inside`` ({description: folder}, e.g. the dataset). Checked before a model loads, so a bad ``--out``
    costs nothing."""
    out = check_not_special(out, what)
    if out.exists() and not out.is_dir():
        raise DataError(f"{what} is a file, not a folder", out)
    for desc, folder in (not_inside or {}).items():
        if folder and Path(folder).exists() and is_inside(out, folder):
            raise DataError(f"{what} lies inside {desc} ({folder}): outputs never go into the input data", out)
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{what}: {existing} is a file, so the folder cannot be made", out)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{what} is not writable (permission denied on {existing})", out)
    return out


def check_out_file(out: str | Path, what: str = "--out") -> Path:
    """An output file path: not an existing folder, its folder creatable and writable."""
    out = check_not_special(out, what)
    if out.is_dir():
        raise DataError(f"{what} is a folder; give a file name", out)
    check_out_dir(out.parent if str(out.parent) else Path("."), what=f"the folder of {what}")
    return out
