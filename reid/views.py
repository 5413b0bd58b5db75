"""The generated folder's manifest: which views exist, of which identity, from which real image, kept or not."""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pcdms_aug.utils.errors import DataError

MANIFEST = "manifest.csv"
_TORCHREID_NAME = re.compile(r"([-\d]+)_c(\d+)")  # the identity and camera that generated file names carry


@dataclass(frozen=True)
class GeneratedView:
    path: Path
    pid: int  # the real identity, as in the 4-digit prefix
    camid: int  # 1-based, as in the name
    source: str | None  # file name of the real training image it was generated from
    kept: bool | None
    score: float | None
    line: int


def _truth(text: str, path: Path, line: int) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "y"):
        return True
    if t in ("0", "false", "no", "n"):
        return False
    raise DataError(f"column 'kept' must be 1 or 0, got {text!r}", path, line)


def read_manifest(generated_dir: str | Path) -> list[GeneratedView]:
    """Rows of ``<generated_dir>/manifest.csv`` (columns file, pid, camid; source, kept, score used if present).

    ``file`` is relative to the folder (or absolute). The file name must carry the same pid and camera as its
    row, because torchreid-style tools read them from the name.
    """
    folder = Path(generated_dir)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in the generated folder (written by `pcdms-aug generate`)",
                        folder if folder.exists() else path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        missing = {"file", "pid", "camid"} - columns
        if missing:
            raise DataError(f"manifest lacks column(s) {', '.join(sorted(missing))} "
                            f"(has {', '.join(reader.fieldnames or []) or 'none'})", path, 1)
        views = []
        for line, row in enumerate(reader, start=2):
            file = (row.get("file") or "").strip()
            try:
                pid, camid = int(row["pid"]), int(row["camid"])
            except (TypeError, ValueError):
                raise DataError(f"pid {row.get('pid')!r} / camid {row.get('camid')!r} are not integers",
                                path, line) from None
            if pid < 0:
                raise DataError(f"pid {pid} is junk; generated views must belong to a training identity", path, line)
            if camid < 1:
                raise DataError(f"camid {camid} must be 1-based, as in the file name", path, line)
            m = _TORCHREID_NAME.search(Path(file).name)
            if m is None or int(m.group(1)) != pid or int(m.group(2)) != camid:
                raise DataError(f"file name {Path(file).name!r} must start with '{pid:04d}_c{camid}' "
                                "(torchreid reads pid and camera from the name)", path, line)
            img = Path(file) if Path(file).is_absolute() else folder / file
            if not img.is_file():
                raise DataError(f"generated image {file!r} not found", path, line)
            try:
                score = float(row["score"]) if row.get("score") not in (None, "") else None
            except ValueError:
                raise DataError(f"score {row['score']!r} is not a number", path, line) from None
            views.append(GeneratedView(
                img, pid, camid,
                Path(row["source"].strip()).name if row.get("source") else None,
                _truth(row["kept"], path, line) if "kept" in columns else None,
                score, line))
    return views


def select_views(views: list[GeneratedView], *, kept_only: bool = False, views_per_identity: int | None = None,
                 sources: set[str] | None = None, views_per_image: int | None = None,
                 where=None) -> list[GeneratedView]:
    """Filter in manifest order: kept rows only, sources inside a subset, at most N views per identity."""
    if kept_only and views and any(v.kept is None for v in views):
        raise DataError("kept_only needs a 'kept' column in the manifest", where)
    if sources is not None and views and any(v.source is None for v in views):
        raise DataError("a split needs the manifest's 'source' column to keep only views generated from the "
                        "subset's images", where)
    for key, cap in (("views_per_identity", views_per_identity), ("views_per_image", views_per_image)):
        if cap is not None and int(cap) < 0:
            raise DataError(f"{key} must be >= 0, got {cap}", where)
    if views_per_image is not None and views and any(v.source is None for v in views):
        raise DataError("views_per_image needs the manifest's 'source' column", where)
    out, per_pid, per_source = [], defaultdict(int), defaultdict(int)
    for v in views:
        if kept_only and not v.kept:
            continue
        if sources is not None and v.source not in sources:
            continue
        if views_per_image is not None and per_source[v.source] >= int(views_per_image):
            continue
        if views_per_identity is not None and per_pid[v.pid] >= int(views_per_identity):
            continue
        per_pid[v.pid] += 1
        per_source[v.source] += 1
        out.append(v)
    return out
