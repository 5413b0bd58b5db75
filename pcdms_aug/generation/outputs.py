"""What a generation run keeps in its output folder, and how a rerun decides what is finished.

``OUT/generate.json``  the settings record of the drivers' one protocol (:mod:`.run_folder`: resume, other
                       settings refused unless --overwrite, which removes only :func:`own_files`);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pcdms_aug.utils.errors import DataError
from pcdms_aug.generation.run_folder import Protocol
from pcdms_aug.utils.io import atomic_write_text
from pcdms_aug.generation.plan import PlannedView

SETTINGS = "generate.json"
PLAN = "plan.csv"
MANIFEST = "manifest.csv"
SHARDS = "shards"
LOG = "generate.log"  # begun once the folder is claimed (a refused run writes none)
SHEET = "views.png"  # source, target pose and view of the first identities: to look at before training on them
FILTER = "filter"  # --filter-model train writes its checkpoint here
FORMAT = "pcdms-aug generate v1"
IMAGE_EXTENSIONS = ("jpg", "png")
MANIFEST_COLUMNS = ("file", "pid", "camid", "source", "target_pose_origin", "target_pose_index", "seed", "policy",
                    "weights", "score", "kept")


def own_files(out: Path) -> list[Path]:
    """The files a previous run wrote, as its records name them: views named in plan.csv or manifest.csv that
    have a generated view's name, the shard logs, the filter's checkpoint, the sheet and the tables."""
    import re

    from pcdms_aug.generation.names import is_view_name
    from pcdms_aug.utils.paths import plain_name

    names: set[str] = set()
    for table in (out / PLAN, out / MANIFEST):
        if table.is_file():
            try:
                with open(table, newline="", encoding="utf-8") as f:
                    names.update((r.get("file") or "") for r in csv.DictReader(f))
            except (OSError, csv.Error, UnicodeDecodeError):
                pass
    files = []
    for name in sorted(names):
        try:
            if plain_name(name) and name.lower().endswith(tuple(f".{e}" for e in IMAGE_EXTENSIONS)) \
                    and is_view_name(name):
                files.append(out / name)
        except DataError:
            continue  # not a name this command gives a view: never ours to remove
    shard = re.compile(r"^manifest-rank\d+-of-\d+\.jsonl$")
    model = re.compile(r"^[A-Za-z0-9_]+-\d+x\d+-e\d+\.pth\.tar$")
    for folder, pattern in ((out / SHARDS, shard), (out / FILTER, model)):
        if folder.is_dir() and not folder.is_symlink():
            files += [p for p in sorted(folder.iterdir()) if pattern.match(p.name)]
    return files + [out / n for n in (MANIFEST, PLAN, SHEET)]


PROTOCOL = Protocol("generate", SETTINGS, FORMAT, own_files)


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
