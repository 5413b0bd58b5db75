"""The one output-folder protocol of the three generation drivers (`generate`, `synthesize-pairs`,
`make-refine-inputs`): a settings record, resume, refusal of other settings and of foreign folders, and an
``--overwrite`` that removes only the run's own files.

``OUT/<record>`` = ``{"format": ..., "settings": {...}, ...}`` holds what the images depend on. A rerun with the
same settings resumes (finished files are kept); one with other settings is refused unless ``--overwrite``, which
first removes the previous run's own files: those its records name and that have the names this command gives
its outputs, nothing else. A non-empty folder without the record (nor this command's owner record) is the
user's and refused, ``--overwrite`` or not. :func:`check` only reads, so a run refused for any reason (a bad
dataset, other settings) leaves nothing behind; :func:`begin` writes, once every input is checked.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pcdms_aug.utils.errors import DataError, shown
from pcdms_aug.utils.io import atomic_write_text, is_temp_name
from pcdms_aug.utils.paths import claim_dir, foreign_entries, read_owner


@dataclass(frozen=True)
class Protocol:
    command: str
    record: str  # the settings file in OUT
    format: str
    own_files: Callable[[Path], Iterable[Path]]  # the previous run's own outputs (for --overwrite)
    legacy: Callable[[dict], bool] | None = None  # a record an earlier version wrote (no "format")


def read_record(out: Path, proto: Protocol) -> dict | None:
    """The run's record (None: there is none); a file of that name that is no record of this command is refused."""
    from pcdms_aug.config.loading import read_json

    path = Path(out) / proto.record
    if not path.is_file():
        return None
    data = read_json(path, proto.record)
    if isinstance(data, dict) and data.get("format") == proto.format and isinstance(data.get("settings"), dict):
        return data
    if isinstance(data, dict) and proto.legacy is not None and proto.legacy(data):
        return {**data, "format": proto.format, "settings": {"recorded_by": "an earlier version"}}
    raise DataError(f"not a record of `pcdms-aug {proto.command}` (format {proto.format!r}); use another --out",
                    path)


def owns(proto: Protocol) -> Callable[[Path], bool]:
    """Whether a folder holds this command's run (its record), for :func:`paths.check_out_dir`."""
    def own(out: Path) -> bool:
        try:
            return read_record(out, proto) is not None
        except DataError:
            return False
    return own


def check(out: Path, proto: Protocol, settings: dict, overwrite: bool) -> str:
    """'new', 'resume' or 'overwrite'; reads only. Refuses a foreign folder and a run of other settings."""
    out = Path(out)
    record = read_record(out, proto) if out.is_dir() else None
    if record is None:
        foreign = foreign_entries(out) if out.is_dir() else []
        if foreign and read_owner(out) != proto.command:
            raise DataError(f"holds files that `pcdms-aug {proto.command}` did not write (e.g. {foreign[0][:80]!r}) "
                            f"and no {proto.record}: give a new or empty folder (--overwrite never adopts one)",
                            out)
        return "new"  # empty, or claimed by this command before a killed run wrote its record
    before = record["settings"]
    diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if not diff:
        return "resume"
    if not overwrite:
        what = "; ".join(f"{k}: {shown(before.get(k), 40)} -> {shown(settings.get(k), 40)}" for k in diff[:4])
        raise DataError(f"the folder holds a run with other settings ({what}); use another --out, the same "
                        "settings to resume, or --overwrite to replace that run", out / proto.record)
    return "overwrite"


def begin(out: Path, proto: Protocol, settings: dict, mode: str, extra: dict | None = None) -> None:
    """Claim the folder, remove the previous run's own files (``mode`` overwrite) and our temporaries, and
    record the settings (a resume keeps its record)."""
    out = claim_dir(out, proto.command)
    if mode == "overwrite":
        remove_own(out, proto)
    remove_temp_files(out)
    if mode != "resume":
        write_record(out, proto, settings, extra)


def write_record(out: Path, proto: Protocol, settings: dict, extra: dict | None = None) -> None:
    data = {**(extra or {}), "format": proto.format, "settings": settings}
    atomic_write_text(Path(out) / proto.record, json.dumps(data, indent=1, sort_keys=True) + "\n")


def remove_own(out: Path, proto: Protocol) -> int:
    """Delete the previous run's own files (inside ``out`` only, never a folder's other content) and its record;
    folders left empty by that are removed. Returns how many files went."""
    root = Path(os.path.realpath(out))
    n = 0
    for p in list(proto.own_files(out)) + [out / proto.record]:
        real = Path(os.path.realpath(p))
        if root in real.parents and p.is_file() and not p.is_symlink():
            p.unlink()
            n += 1
            parent = p.parent
            if parent != out and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    return n


def remove_temp_files(out: Path, folders: Iterable[str] = ("", "shards")) -> int:
    """Half-written temporaries of a killed process (only when no writer runs: before the ranks start): only
    files with this program's own temporary prefix, never a user's ``.x.tmp``."""
    n = 0
    for name in folders:
        folder = Path(out) / name
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and is_temp_name(p.name):
                    p.unlink()
                    n += 1
    return n
