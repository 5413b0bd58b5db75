"""Where names read from files may point, and where outputs may go: one rule each.

A name read from a file (an annotation row, a pairs row, ``--names``) is a plain file name, never a path, so
a shared CSV cannot make the program read or write outside the folders the user gave on the command line.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import MARK_KEY, mark


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


# Every folder a command writes holds this record naming the command; a non-empty folder without it (or without
# the command's own settings file) is the user's, and no command writes into it.
OWNER = ".pcdms-aug-owner.json"
LOCK = ".pcdms-aug.lock"


def _inputs(not_inside, inputs) -> list[tuple[str, Path]]:
    pairs = list((not_inside or {}).items()) + list(inputs or ())
    out = []
    for desc, value in pairs:
        for p in ([value] if isinstance(value, (str, Path)) else list(value or ())):
            if p is not None and str(p).strip() and Path(p).exists():
                out.append((desc, Path(p)))
    return out


def _check_against_inputs(out: Path, what: str, inputs: list[tuple[str, Path]]) -> None:
    """``out`` is no input file and lies inside no input folder (symbolic links resolved)."""
    for desc, p in inputs:
        if is_inside(out, p):
            said = "is" if os.path.realpath(out) == os.path.realpath(p) else "lies inside"
            raise DataError(f"{what} {said} {desc} ({p}): outputs never go into the input data", out)


def _writable(out: Path, what: str) -> None:
    existing = out
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{what}: {existing} is a file, so the folder cannot be made", out)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{what} is not writable (permission denied on {existing})", out)


def foreign_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that are not bookkeeping of this program (owner record, lock, temporaries)."""
    from pcdms_aug.utils.io import is_temp_name

    return sorted(n for n in os.listdir(folder) if n not in (OWNER, LOCK) and not is_temp_name(n))


def read_owner(folder: Path) -> str | None:
    """The command that claimed ``folder`` (its owner record), or None."""
    import json

    path = Path(folder) / OWNER
    try:
        if path.is_file() and path.stat().st_size < 4096:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data.get("command") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    return None


def claim_dir(folder: str | Path, command: str) -> Path:
    """Make ``folder`` (if needed) and record that ``command`` writes it: called once every input is checked,
    so a refused run creates nothing."""
    import json

    from pcdms_aug.utils.io import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if read_owner(folder) != command:
        atomic_write_text(folder / OWNER, json.dumps({"command": command}) + "\n")
    return folder


def written_by(command: str, first_line: str | None = None):
    """A predicate: whether a file carries ``command``'s mark (a PNG's Software text, a JSON object's
    ``written_by``), or (``first_line``) is a text file that begins with that line."""
    def own(path: Path) -> bool:
        import json

        suffix = path.suffix.lower()
        try:
            if path.stat().st_size > 64 << 20:
                return False
            if suffix == ".png":
                from PIL import Image

                with Image.open(path) as im:
                    return getattr(im, "text", {}).get("Software") == mark(command)
            if suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
                return isinstance(data, dict) and data.get(MARK_KEY) == mark(command)
            if first_line is not None:
                with open(path, encoding="utf-8") as f:
                    return f.readline().rstrip("\n") == first_line
        except (OSError, ValueError, SyntaxError, RecursionError):
            return False
        return False
    return own


def check_out_dir(out: str | Path, what: str = "--out", not_inside: dict[str, str | Path] | None = None, *,
                  inputs=(), command: str | None = None, own=None) -> Path:
    """An output folder that can be written: not empty text, the root or the home folder; not a file; not an
    input nor inside one (``not_inside`` {description: folder}, ``inputs`` [(description, file or folder)]);
    creatable and writable. With ``command``: an existing non-empty folder must hold that command's own run
    (its owner record, or ``own(folder)`` true: the command's settings file), else it is the user's and refused.
    Reads only: checked before a model loads, so a bad ``--out`` costs nothing and leaves nothing."""
    out = check_not_special(out, what)
    if os.path.lexists(out) and not out.is_dir():
        raise DataError(f"{what} is a file, not a folder", out)
    _check_against_inputs(out, what, _inputs(not_inside, inputs))
    _writable(out, what)
    if command is not None and out.is_dir():
        foreign = foreign_entries(out)
        if foreign and read_owner(out) != command and not (own is not None and own(out)):
            raise DataError(f"{what} holds files that `pcdms-aug {command}` did not write (e.g. {foreign[0][:80]!r}): "
                            "give a new or empty folder; nothing of a folder of yours is replaced", out)
    return out


def check_new_dir(out: str | Path, what: str = "--out", *, inputs=()) -> Path:
    """A folder a command writes whole (a stage or pipeline folder, renamed into place): the rule of
    :func:`check_out_dir`, and it must not exist or be empty (its content would be replaced)."""
    out = check_out_dir(out, what, inputs=inputs)
    if out.is_dir() and foreign_entries(out):
        raise DataError(f"{what} exists and is not empty: give a new folder (it is written whole, and nothing of "
                        "a folder of yours is replaced)", out)
    return out


def check_out_file(out: str | Path, what: str = "--out", *, inputs=(), command: str | None = None,
                   own=None) -> Path:
    """An output file path: not empty text, the root or the home folder; not an existing folder; not an input
    file nor inside an input folder; its folder creatable and writable. With ``command``: an existing file is
    replaced only when ``own(path)`` shows this command wrote it (a user's file is never overwritten)."""
    out = check_not_special(out, what)
    if out.is_dir():
        raise DataError(f"{what} is a folder; give a file name", out)
    _check_against_inputs(out, what, _inputs(None, inputs))
    _writable(out.parent if str(out.parent) else Path("."), f"the folder of {what}")
    if command is not None and os.path.lexists(out) and not (own is not None and not out.is_symlink() and own(out)):
        raise DataError(f"{what} exists and was not written by `pcdms-aug {command}`: remove it or give another "
                        "name (a file of yours is never overwritten)", out)
    return out
