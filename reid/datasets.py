"""torchreid datasets: a Market-1501-layout folder plus generated views, under the real identities' labels.

Generated views are appended to the real training list before torchreid's ``Dataset.__init__`` runs, with the
label of their real identity. Passing them as a second ``sources`` entry would not do: torchreid adds the first
dataset's identity count to every pid of the second one, so a generated view of person 2 would become a new
person. Query and gallery are always the real ones.

torchreid's ``ImageDataManager`` passes no extra arguments to a dataset, so :func:`register` binds the choices
(generated folder, views per identity, kept only, split file) into a subclass and registers a name that builds
the currently bound subclass.
"""
from __future__ import annotations

import csv
import logging
import re
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pcdms_aug.data.market import DISTRACTOR_PID, JUNK_PID, MarketDataset, find_root
from pcdms_aug.data.splits import load_split
from pcdms_aug.data.synthetic import META
from pcdms_aug.utils.errors import DataError

with warnings.catch_warnings():
    # torchreid warns at import that its Cython ranking is absent; the Python fallback is what we use.
    warnings.simplefilter("ignore")
    import torchreid
    from torchreid.reid.data.datasets.dataset import ImageDataset

REAL, SYNTHETIC = "market1501_pcdms", "synthetic_market1501_pcdms"
# Folders tried under torchreid's ``root``, in order; ``root`` itself is tried last. The synthetic set may sit in
# ``root/synthetic_market1501`` beside a real ``root/market1501``, or alone in ``root/market1501`` (it is written
# in the layout torchreid's own Market1501 reads).
DATASET_DIRS = {REAL: ("market1501",), SYNTHETIC: ("synthetic_market1501", "market1501")}
ALIASES = {"real": REAL, "market1501": REAL, "synthetic": SYNTHETIC, "synthetic_market1501": SYNTHETIC}
MANIFEST = "manifest.csv"
_TORCHREID_NAME = re.compile(r"([-\d]+)_c(\d)")  # the pattern torchreid's Market1501 applies to file names
_UNSET = object()
log = logging.getLogger(__name__)
_warned: set = set()


def dataset_name(name: str) -> str:
    """``real`` / ``synthetic`` (or the registered names themselves) -> the registered torchreid name."""
    if name in DATASET_DIRS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise DataError(f"unknown dataset {name!r}; use one of {', '.join(sorted(ALIASES) + sorted(DATASET_DIRS))}")


def locate(root: str | Path, dirs: tuple[str, ...]) -> Path:
    """The folder holding bounding_box_train/query/bounding_box_test, following torchreid's ``root/<dir>/``."""
    root = Path(root).expanduser()
    found = None
    for d in dirs:
        if (root / d).is_dir():
            found = find_root(root / d)
            break
    if found is None:
        try:
            found = find_root(root)
        except DataError:
            tried = ", ".join(str(root / d) for d in dirs)
            raise DataError(f"no Market-1501-layout folder found: looked in {tried} and {root} (each directly "
                            "or with Market-1501-v15.09.15/ inside)", root) from None
    # `pcdms-aug synth-market` marks its folders; say so when the name and the data disagree.
    synthetic = (found / META).is_file()
    if (found, dirs) in _warned:
        return found
    _warned.add((found, dirs))
    if synthetic and "synthetic_market1501" not in dirs:
        log.warning("%s is a synthetic Market-1501 (it holds %s) but was opened as the real one", found, META)
    elif not synthetic and "synthetic_market1501" in dirs:
        log.warning("%s has no %s: not built by `pcdms-aug synth-market`", found, META)
    return found


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
            if pid in (JUNK_PID, DISTRACTOR_PID) or pid < 0:
                raise DataError(f"pid {pid} is junk/distractor; generated views must belong to a training "
                                "identity", path, line)
            if not 1 <= camid <= 9:
                raise DataError(f"camid {camid} must be 1-based (1..9), as in the file name", path, line)
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


class MarketPCDMs(ImageDataset):
    """Market-1501 layout (real or synthetic) + generated views in train, same labels as the real identities.

    Evaluation follows torchreid's Market1501 and the standard protocol: junk images (pid -1) are dropped from
    every split, ``0000`` distractors stay in the gallery, and torchreid's ranking ignores gallery images of the
    query's identity seen by the query's camera.
    """

    _junk_pids = [0, -1]
    dataset_dirs: tuple[str, ...] = ("market1501",)
    generated_dir: str | None = None
    views_per_identity: int | None = None
    kept_only: bool = False
    split_file: str | None = None
    repeat_to: int | None = None  # the duplicated control: real images repeated to this many training items
    views_per_image: int | None = None

    def __init__(self, root="", generated_dir=_UNSET, views_per_identity=_UNSET, kept_only=_UNSET,
                 split_file=_UNSET, **kwargs):
        generated_dir = self.generated_dir if generated_dir is _UNSET else generated_dir
        views_per_identity = self.views_per_identity if views_per_identity is _UNSET else views_per_identity
        kept_only = self.kept_only if kept_only is _UNSET else kept_only
        split_file = self.split_file if split_file is _UNSET else split_file
        for key in ("split_id", "cuhk03_labeled", "cuhk03_classic_split", "market1501_500k"):
            kwargs.pop(key, None)  # ImageDataManager passes these to every dataset

        self.data_dir = locate(root, self.dataset_dirs)
        market = MarketDataset(self.data_dir)
        real = [it for it in market.train if it.name.pid != JUNK_PID]
        subset = None
        if split_file:
            split = load_split(split_file)
            subset = set(split.files)
            present = {it.filename for it in real}
            unknown = sorted(subset - present)
            if unknown:
                raise DataError(f"{len(unknown)} image(s) of the split are not in {self.data_dir}/bounding_box_train "
                                f"(e.g. {unknown[0]}); was it made for another dataset?", split_file)
            real = [it for it in real if it.filename in subset]
        if not real:
            raise DataError("no training images", self.data_dir)
        pid2label = {pid: i for i, pid in enumerate(sorted({it.name.pid for it in real}))}
        train = repeat_items([(str(it.path), pid2label[it.name.pid], it.name.camid - 1) for it in real],
                             self.repeat_to)

        views: list[GeneratedView] = []
        if generated_dir:
            manifest = Path(generated_dir) / MANIFEST
            views = select_views(read_manifest(generated_dir), kept_only=bool(kept_only),
                                 views_per_identity=views_per_identity, views_per_image=self.views_per_image,
                                 sources=subset, where=manifest)
            for v in views:
                if v.pid not in pid2label:
                    raise DataError(f"generated view of identity {v.pid:04d}, which has no real training image "
                                    "here", manifest, v.line)
            train += [(str(v.path), pid2label[v.pid], v.camid - 1) for v in views]

        def test_list(items):
            return [(str(it.path), it.name.pid, it.name.camid - 1) for it in items if it.name.pid != JUNK_PID]

        self.num_real_train = len(real)
        self.num_repeated = len(train) - len(real) - len(views)
        self.num_generated = len(views)
        self.generated_paths = frozenset(str(v.path) for v in views)
        self.pid2label = pid2label
        super().__init__(train, test_list(market.query), test_list(market.gallery), **kwargs)


def repeat_items(items: list, count: int | None) -> list:
    """``items`` repeated whole as often as fits in ``count``, the remainder evenly spaced over the list."""
    if not count or count <= len(items):
        return list(items)
    whole, rest = divmod(int(count), len(items))
    step = len(items) / rest if rest else 0
    return list(items) * whole + [items[int(i * step)] for i in range(rest)]


_BOUND: dict[str, type] = {}


def _factory(name: str):
    def build(**kwargs):
        # Looked up at call time through sys.modules, so a reloaded module's bindings are the ones used.
        return sys.modules[__name__]._BOUND[name](**kwargs)
    build.__name__ = build.__qualname__ = f"build_{name}"
    return build


def register(generated_dir: str | Path | None = None, views_per_identity: int | None = None,
             kept_only: bool = False, split_file: str | Path | None = None,
             repeat_to: int | None = None, views_per_image: int | None = None) -> dict[str, type]:
    """Register (or re-bind) ``market1501_pcdms`` and ``synthetic_market1501_pcdms`` with torchreid.

    Safe to call any number of times; the last call's choices are used by datasets built afterwards
    (``ImageDataManager`` builds them in its constructor). Returns the bound classes by name.
    """
    opts = {"generated_dir": None if generated_dir is None else str(generated_dir),
            "views_per_identity": None if views_per_identity is None else int(views_per_identity),
            "kept_only": bool(kept_only), "split_file": None if split_file is None else str(split_file),
            "repeat_to": None if repeat_to is None else int(repeat_to),
            "views_per_image": None if views_per_image is None else int(views_per_image)}
    for name, dirs in DATASET_DIRS.items():
        first = name not in _BOUND
        _BOUND[name] = type(f"MarketPCDMs_{name}", (MarketPCDMs,), {"dataset_dirs": dirs, **opts})
        if first:
            try:
                torchreid.data.register_image_dataset(name, _factory(name))
            except ValueError:
                pass  # registered by an earlier import of this module (a reload); its factory reads our _BOUND
    return dict(_BOUND)


def validation_items(data_dir: str | Path, split_file: str | Path | None, count: int, seed: int) -> list[tuple]:
    """Held-out images of the training identities: ``count`` training images outside the subset (seeded).

    Validation takes images the low-data subset left out, of the same identities, so that every variant of a
    (fraction, seed) is stopped on the same images, the subset itself stays whole, and no test identity is seen.
    Returned as torchreid's (path, pid, camid) with camid 0-based.
    """
    import random

    if not split_file:
        raise DataError("converge needs held-out images of the training identities: use a fraction below 1 "
                        "(images outside the subset are the validation images)")
    kept = set(load_split(split_file).files)
    real = [it for it in MarketDataset(data_dir).train if it.name.pid != JUNK_PID]
    pids = {it.name.pid for it in real if it.filename in kept}
    rest = sorted((it for it in real if it.filename not in kept and it.name.pid in pids), key=lambda it: it.filename)
    if not rest:
        raise DataError("no training image outside the subset to validate on (fraction 1?)", split_file)
    chosen = random.Random(seed).sample(rest, min(int(count), len(rest)))
    return [(str(it.path), it.name.pid, it.name.camid - 1) for it in sorted(chosen, key=lambda it: it.filename)]


def validation_loader(items: list[tuple], transform, batch_size: int):
    """A torchreid test loader over ``items`` (each image is a query against all the others)."""
    import torch

    data = ImageDataset(list(items), list(items), list(items), transform=transform, mode="query", verbose=False)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
