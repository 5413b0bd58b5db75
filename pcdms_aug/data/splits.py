"""Low-data training subsets: a seeded fraction of the training images with at least one image per identity.

The downstream protocol of the PATN -> PIDM -> PCDMs line keeps 20/40/60/80% of Market-1501's training images.
A subset is written once to a JSON file and read back by every run (baseline, augmented, filtered) and by the
generator, so all of them see exactly the same real images.
"""
from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_write_text
from pcdms_aug.data.market import MarketImage, parse_name

FORMAT = "pcdms-aug reid split v1"


@dataclass(frozen=True)
class Split:
    files: tuple[str, ...]  # kept training image file names (no folder), sorted
    fraction: float
    seed: int
    total: int  # images in the full training list the subset was drawn from
    num_ids: int

    def __len__(self) -> int:
        return len(self.files)


def _name_and_pid(item, where=None) -> tuple[str, int]:
    """A training item as (file name, pid): a file name/path, a MarketImage, a layouts.ReidImage, or torchreid's
    (path, pid, camid...)."""
    if isinstance(item, MarketImage):
        return item.filename, item.name.pid
    if hasattr(item, "filename") and hasattr(item, "pid"):  # pcdms_aug.data.layouts.ReidImage
        return item.filename, int(item.pid)
    if isinstance(item, (tuple, list)):
        return Path(item[0]).name, int(item[1])
    name = Path(item).name
    return name, parse_name(name, where).pid


def check_fraction(fraction, where=None) -> float:
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise DataError(f"fraction {fraction!r} is not a number", where) from None
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction {fraction} must be in (0, 1]", where)
    return fraction


def make_split(train_items: Iterable, fraction: float, seed: int) -> Split:
    """Keep ``round(fraction * N)`` training images, never fewer than one per identity.

    One image per identity is drawn first, the rest are filled at random from the remaining images; both draws
    use ``random.Random(seed)`` over the sorted names, so a (list, fraction, seed) always gives the same subset.
    Junk images (pid -1) are never kept: torchreid drops them from training anyway.
    """
    fraction = check_fraction(fraction)
    by_pid: dict[int, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for item in train_items:
        name, pid = _name_and_pid(item)
        if name in seen:
            raise DataError(f"training image {name!r} is listed twice")
        seen.add(name)
        if pid != -1:
            by_pid[pid].append(name)
    total = sum(len(v) for v in by_pid.values())
    if total == 0:
        raise DataError("no training images to draw a subset from")
    want = min(total, max(len(by_pid), int(math.floor(fraction * total + 0.5))))
    rng = random.Random(seed)
    kept, rest = [], []
    for pid in sorted(by_pid):
        names = sorted(by_pid[pid])
        first = rng.randrange(len(names))
        kept.append(names[first])
        rest.extend(n for i, n in enumerate(names) if i != first)
    rng.shuffle(rest)
    kept.extend(rest[:want - len(kept)])
    return Split(tuple(sorted(kept)), fraction, int(seed), total, len(by_pid))


def save_split(path: str | Path, split: Split) -> Path:
    path = Path(path)
    data = {"format": FORMAT, "fraction": split.fraction, "seed": split.seed, "total_images": split.total,
            "num_ids": split.num_ids, "num_images": len(split.files), "files": list(split.files)}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def load_split(path: str | Path) -> Split:
    from pcdms_aug.config.loading import read_json

    path = Path(path)
    data = read_json(path, "split file", limit=64 << 20)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"not a split file (expected \"format\": \"{FORMAT}\")", path)
    missing = [k for k in ("fraction", "seed", "total_images", "num_ids", "files") if k not in data]
    if missing:
        raise DataError(f"split file lacks key(s) {', '.join(missing)}", path)
    for key in ("seed", "total_images", "num_ids"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or not 0 <= data[key] < 2**63:
            raise DataError(f"split file: {key} must be a non-negative integer", path)
    files = data["files"]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise DataError("'files' must be a non-empty list of image names", path)
    if len(set(files)) != len(files):
        raise DataError("'files' names an image twice", path)
    return Split(tuple(sorted(files)), check_fraction(data["fraction"], path), int(data["seed"]),
                 int(data["total_images"]), int(data["num_ids"]))


def split_names(split: Split | str | Path) -> list[str]:
    """The subset's training image names (e.g. to run the generator on the subset's images only)."""
    if not isinstance(split, Split):
        split = load_split(split)
    return list(split.files)


def split_filename(fraction: float, seed: int) -> str:
    """The name the experiment runner gives the split of (fraction, seed): ``split_f0.2_s0.json``."""
    return f"split_f{check_fraction(fraction):g}_s{int(seed)}.json"
