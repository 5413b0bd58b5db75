"""What a generation run keeps in its output folder, and how a rerun decides what is finished.

``OUT/generate.json``  the settings (a rerun with other settings is refused unless --overwrite);
``OUT/plan.csv``       every view planned (see :mod:`.plan`);
``OUT/shards/manifest-rank<r>-of-<w>.jsonl``  one line per finished batch (its files and consistency scores),
                       appended by the rank that made it; a line cut by a crash does not parse and is ignored;
``OUT/manifest.csv``   the merge of every shard log over the plan, sorted by plan order (rewritten atomically
                       at the end of every run, on rank 0 after a barrier);
``OUT/views.png``      a contact sheet of the first identities' sources, target poses and views (the same).
A batch counts as finished when a shard log holds it (scored by the current filter, if any) and all its images
exist; images are written atomically, so an existing image is a whole one.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_write_text, is_temp_name
from pcdms_aug.generation.plan import PlannedView

SETTINGS = "generate.json"
PLAN = "plan.csv"
MANIFEST = "manifest.csv"
SHARDS = "shards"
SHEET = "views.png"  # source, target pose and view of the first identities: to look at before training on them
FILTER = "filter"  # --filter-model train writes its checkpoint here
FORMAT = "pcdms-aug generate v1"
MANIFEST_COLUMNS = ("file", "pid", "camid", "source", "target_pose_origin", "target_pose_index", "seed", "policy",
                    "weights", "score", "kept")


def read_settings(out: Path) -> dict | None:
    path = out / SETTINGS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable settings file ({e}); rerun with --overwrite to start again", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("settings"), dict):
        raise DataError(f"not a settings file of `pcdms-aug generate` (format {FORMAT!r}); rerun with --overwrite",
                        path)
    return data


def write_settings(out: Path, settings: dict, extra: dict | None = None) -> None:
    data = {"format": FORMAT, "settings": settings, **(extra or {})}
    atomic_write_text(out / SETTINGS, json.dumps(data, indent=1, sort_keys=True) + "\n")


def check_out(out: Path, settings: dict, overwrite: bool) -> str:
    """'new', 'resume' or 'overwrite' (after removing the previous run's files). Refuses foreign content."""
    old = read_settings(out) if not overwrite else None
    if old is not None:
        prev = old["settings"]
        diff = sorted(k for k in set(prev) | set(settings) if prev.get(k) != settings.get(k))
        if not diff:
            return "resume"
        what = "; ".join(f"{k}: {prev.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
        raise DataError(f"the folder holds a run with other settings ({what}); use another --out, the same "
                        "settings to resume, or --overwrite to replace it", out / SETTINGS)
    present = [n for n in (MANIFEST, PLAN, SHARDS) if (out / n).exists()]
    if not overwrite:
        if present:
            raise DataError(f"the folder holds {', '.join(present)} but no {SETTINGS}: not a run of this command "
                            "(or another version's); use another --out or --overwrite", out / present[0])
        return "new"
    if out.exists():
        remove_run(out)
        return "overwrite"
    return "new"


def remove_run(out: Path) -> None:
    """Delete a previous run: the files its plan or manifest name (inside ``out`` only) and its bookkeeping.

    Other files in the folder are left alone: --overwrite replaces a run, not a folder.
    """
    names: set[str] = set()
    for table in (out / PLAN, out / MANIFEST):
        if table.is_file():
            try:
                with open(table, newline="", encoding="utf-8") as f:
                    names.update((r.get("file") or "") for r in csv.DictReader(f))
            except (OSError, csv.Error, UnicodeDecodeError):
                pass
    root = out.resolve()
    for name in sorted(n for n in names if n):
        p = (out / name).resolve()
        if p.parent == root and p.is_file():
            p.unlink()
    for n in (MANIFEST, PLAN, SETTINGS, SHEET):
        if (out / n).is_file():
            (out / n).unlink()
    for folder in (SHARDS, FILTER):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
    remove_temp_files(out)


def remove_temp_files(out: Path) -> int:
    """Half-written temporaries of a killed process (only when no writer runs: before the ranks start): only
    files with this program's own temporary prefix, never a user's ``.x.tmp``."""
    n = 0
    for folder in (out, out / SHARDS):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and is_temp_name(p.name):
                    p.unlink()
                    n += 1
    return n


# ------------------------------------------------------------------------------------------- shard logs
@dataclass(frozen=True)
class Finished:
    group: int
    scorer: str | None  # fingerprint of the filter that scored the batch; None without a filter
    scores: dict  # file -> score (None without a filter)


class ShardLog:
    """Append-only log of one rank's finished batches (one JSON line each, flushed and fsync'ed)."""

    def __init__(self, out: Path, rank: int, world: int):
        self.path = out / SHARDS / f"manifest-rank{rank}-of-{world}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A line cut by a crash must not swallow the next one.
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                self._append("\n")

    def _append(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def add(self, group: int, scorer: str | None, scores: dict) -> None:
        self._append(json.dumps({"group": group, "scorer": scorer, "scores": scores}, sort_keys=True) + "\n")


def read_shard_logs(out: Path, scorer: str | None) -> dict[int, Finished]:
    """Every batch any rank of any run (any world size) logged; the entry scored by ``scorer`` wins."""
    found: dict[int, Finished] = {}
    folder = out / SHARDS
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("manifest-rank*-of-*.jsonl")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    entry = Finished(int(d["group"]), d.get("scorer"), dict(d["scores"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash
                old = found.get(entry.group)
                if old is None or (old.scorer != scorer and entry.scorer == scorer):
                    found[entry.group] = entry
    return found


# -------------------------------------------------------------------------------------------- manifest
def format_score(score) -> str:
    return "" if score is None else f"{float(score):.6f}"


def write_manifest(out: Path, plan: Sequence[PlannedView], done: dict[int, Finished], kept: dict[str, bool],
                   policy: str, weights: str) -> int:
    """manifest.csv: one row per finished view, in plan order. Returns the number of rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    n = 0
    for v in plan:
        entry = done.get(v.group)
        if entry is None or v.file not in entry.scores:
            continue
        w.writerow([v.file, v.pid, v.camid, v.source, v.target_origin, v.target_index, v.seed, policy, weights,
                    format_score(entry.scores[v.file]), int(kept.get(v.file, True))])
        n += 1
    atomic_write_text(out / MANIFEST, buf.getvalue())
    return n
