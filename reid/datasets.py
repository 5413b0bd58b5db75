"""torchreid datasets: generated views added to any registered torchreid image dataset, under the real labels.

    name = with_generated_views("msmt17", "gen/f0.2_s0", split_file="runs/reid/splits/split_f0.2_s0.json")
    dm = torchreid.data.ImageDataManager(root="reid-data", sources=name, ...)

Generated views are appended to the real training list before torchreid's ``Dataset.__init__`` runs, with the
label of the real image they were made from. Passing them as a second ``sources`` entry would not do: torchreid
adds the first dataset's identity count to every pid of the second one, so a generated view of person 2 would
become a new person. Query and gallery are always the wrapped dataset's own.

torchreid's ``ImageDataManager`` passes no extra arguments to a dataset, so each set of options is a subclass of
its own, registered under a name derived from the options: nothing is re-bound, two bindings live side by side.
Besides torchreid's own datasets, three are registered here: ``market1501_pcdms`` and
``synthetic_market1501_pcdms`` (a Market-1501-layout folder at ``root``, ``root/market1501`` or
``root/synthetic_market1501``) and ``pcdms_layout`` (any layout :mod:`pcdms_aug.data.layouts` reads, detected).
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

from pcdms_aug.data.layouts import open_dataset
from pcdms_aug.data.market import JUNK_PID, find_root
from pcdms_aug.data.splits import load_split
from pcdms_aug.data.synthetic import META
from pcdms_aug.utils.errors import DataError

from .views import MANIFEST, GeneratedView, read_manifest, select_views  # noqa: F401  (re-exported)

with warnings.catch_warnings():
    # torchreid warns at import that its Cython ranking is absent; the Python fallback is what we use.
    warnings.simplefilter("ignore")
    import torchreid

ImageDataset = torchreid.data.ImageDataset  # PyPI's 0.2.5 and the repository's 1.4.x both expose it here

REAL, SYNTHETIC, ANY_LAYOUT = "market1501_pcdms", "synthetic_market1501_pcdms", "pcdms_layout"
# Folders tried under torchreid's ``root``, in order; ``root`` itself is tried last. The synthetic set may sit in
# ``root/synthetic_market1501`` beside a real ``root/market1501``, or alone in ``root/market1501`` (it is written
# in the layout torchreid's own Market1501 reads).
DATASET_DIRS = {REAL: ("market1501",), SYNTHETIC: ("synthetic_market1501", "market1501")}
ALIASES = {"real": REAL, "synthetic": SYNTHETIC, "synthetic_market1501": SYNTHETIC}
log = logging.getLogger(__name__)
_warned: set = set()


def registered() -> list[str] | None:
    """The image datasets torchreid knows now (its own, ours, and any the user registered); None when this
    torchreid keeps them elsewhere (then torchreid itself refuses an unknown name)."""
    table = vars(torchreid.data.datasets).get("__image_datasets")
    return None if table is None else sorted(table)


def dataset_name(name: str) -> str:
    """``real`` / ``synthetic`` or any registered torchreid image dataset name -> the registered name."""
    name = ALIASES.get(name, name)
    known = registered()
    if known is not None and name not in known:
        raise DataError(f"unknown dataset {name!r}; use real, synthetic or a registered torchreid image dataset "
                        f"({', '.join(known)})")
    return name


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


def _quiet_kwargs(kwargs: dict) -> dict:
    """The options ``ImageDataManager`` passes to every dataset, for building the wrapped one silently."""
    return {**kwargs, "transform": None, "mode": "train", "combineall": False, "verbose": False}


def _test_list(items) -> list[tuple]:
    return [(str(path), int(pid), int(camid)) for path, pid, camid, *_ in items]


class LayoutDataset(ImageDataset):
    """A dataset folder read by :mod:`pcdms_aug.data.layouts` (its rules are torchreid's): training pids
    relabelled 0..N-1, junk (pid -1) dropped, Market's ``0000`` distractors kept in the gallery."""

    _junk_pids = [0, -1]
    dataset_dirs: tuple[str, ...] = ()  # folders tried under ``root`` first (Market names only)
    layout: str | None = None  # None: detected

    def __init__(self, root="", **kwargs):
        for key in ("split_id", "cuhk03_labeled", "cuhk03_classic_split", "market1501_500k"):
            kwargs.pop(key, None)  # ImageDataManager passes these to every dataset
        if self.dataset_dirs:
            self.data_dir = locate(root, self.dataset_dirs)
            ds = open_dataset(self.data_dir, "market1501")
        else:
            ds = open_dataset(root, self.layout)
            self.data_dir = ds.root
        real = [it for it in ds.train if it.pid != JUNK_PID]
        pid2label = {pid: i for i, pid in enumerate(sorted({it.pid for it in real}))}
        train = [(str(it.path), pid2label[it.pid], it.camid) for it in real]

        def test_list(items):
            return [(str(it.path), it.pid, it.camid) for it in items if it.pid != JUNK_PID]
        super().__init__(train, test_list(ds.query), test_list(ds.gallery), **kwargs)


class MarketLayout(LayoutDataset):
    dataset_dirs = ("market1501",)


class SyntheticMarketLayout(LayoutDataset):
    dataset_dirs = ("synthetic_market1501", "market1501")


BASES = {REAL: MarketLayout, SYNTHETIC: SyntheticMarketLayout, ANY_LAYOUT: LayoutDataset}
for _name, _cls in BASES.items():
    try:
        torchreid.data.register_image_dataset(_name, _cls)
    except ValueError:
        pass  # registered by an earlier import of this module


def build_base(name: str, root, **kwargs):
    """The registered torchreid dataset ``name`` as torchreid builds it, quietly."""
    return torchreid.data.datasets.init_image_dataset(name, root=str(root), **_quiet_kwargs(kwargs))


def base_folder(dataset, root) -> Path:
    """The folder a built dataset reads (torchreid's classes record it as data_dir or dataset_dir)."""
    return Path(getattr(dataset, "data_dir", None) or getattr(dataset, "dataset_dir", None) or root)


class WithGeneratedViews(ImageDataset):
    """A registered torchreid image dataset with generated views added to its training list.

    Each view takes the training label and the camera of the real image it was generated from (the manifest's
    ``source``); query and gallery are the wrapped dataset's own. Subclasses made by :func:`with_generated_views`
    fix the options (torchreid's ``ImageDataManager`` passes none to a dataset).
    """

    base: str = REAL
    generated_dir: str | None = None
    views_per_identity: int | None = None
    kept_only: bool = False
    split_file: str | None = None
    repeat_to: int | None = None  # the duplicated control: real images repeated to this many training items
    views_per_image: int | None = None

    def __init__(self, root="", **kwargs):
        wrapped = build_base(self.base, root, **kwargs)
        for key in ("split_id", "cuhk03_labeled", "cuhk03_classic_split", "market1501_500k"):
            kwargs.pop(key, None)
        self.data_dir = base_folder(wrapped, root)
        self._junk_pids = list(getattr(wrapped, "_junk_pids", []))
        self.all_real = _test_list(wrapped.train)
        real = list(self.all_real)
        subset = None
        if self.split_file:
            subset = set(load_split(self.split_file).files)
            present = {Path(it[0]).name for it in real}
            unknown = sorted(subset - present)
            if unknown:
                raise DataError(f"{len(unknown)} image(s) of the split are not training images of {self.base} at "
                                f"{self.data_dir} (e.g. {unknown[0]}); was it made for another dataset?",
                                self.split_file)
            real = [it for it in real if Path(it[0]).name in subset]
        if not real:
            raise DataError("no training images", self.data_dir)
        relabel = {label: i for i, label in enumerate(sorted({it[1] for it in real}))}
        real = [(path, relabel[label], camid) for path, label, camid in real]
        train = repeat_items(real, self.repeat_to)

        views: list[GeneratedView] = []
        if self.generated_dir:
            manifest = Path(self.generated_dir) / MANIFEST
            views = select_views(read_manifest(self.generated_dir), kept_only=bool(self.kept_only),
                                 views_per_identity=self.views_per_identity, views_per_image=self.views_per_image,
                                 sources=subset, where=manifest)
            train += _view_items(views, real, manifest)

        self.num_real_train = len(real)
        self.num_repeated = len(train) - len(real) - len(views)
        self.num_generated = len(views)
        self.generated_paths = frozenset(str(v.path) for v in views)
        super().__init__(train, _test_list(wrapped.query), _test_list(wrapped.gallery), **kwargs)


def _view_items(views: list[GeneratedView], real: list[tuple], manifest: Path) -> list[tuple]:
    """(path, label, camid) of each view: its source image's label and camera; one label per manifest pid."""
    by_name = {}
    for path, label, camid in real:
        if Path(path).name in by_name:
            raise DataError(f"two training images are named {Path(path).name!r}: a manifest's source column "
                            "cannot tell them apart", path)
        by_name[Path(path).name] = (label, camid)
    label_of_pid: dict[int, int] = {}
    out = []
    for v in views:
        if v.source is None:
            raise DataError("the manifest needs a 'source' column (the real image each view was made from)",
                            manifest, v.line)
        if v.source not in by_name:
            raise DataError(f"view generated from {v.source!r}, which is not a training image here", manifest, v.line)
        label, camid = by_name[v.source]
        if label_of_pid.setdefault(v.pid, label) != label:
            raise DataError(f"views of identity {v.pid} come from images of two training identities; was the "
                            "folder generated from another dataset?", manifest, v.line)
        out.append((str(v.path), label, camid))
    return out


def with_generated_views(dataset: str, generated_dir: str | Path | None = None, *, views_per_identity: int | None = None,
                         kept_only: bool = False, split_file: str | Path | None = None,
                         repeat_to: int | None = None, views_per_image: int | None = None) -> str:
    """Register ``dataset`` (any registered torchreid image dataset) with generated views added to its training
    list, under a name of its own, and return that name for ``ImageDataManager(sources=...)``.

    The same arguments give the same name (registered once); other arguments, another name. Nothing is re-bound,
    so names made earlier keep their meaning.
    """
    opts = {"base": dataset_name(dataset),
            "generated_dir": None if generated_dir is None else str(Path(generated_dir).resolve()),
            "views_per_identity": None if views_per_identity is None else int(views_per_identity),
            "kept_only": bool(kept_only),
            "split_file": None if split_file is None else str(Path(split_file).resolve()),
            "repeat_to": None if repeat_to is None else int(repeat_to),
            "views_per_image": None if views_per_image is None else int(views_per_image)}
    digest = hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{opts['base']}+pcdms_{digest}"
    cls = type(f"WithGeneratedViews_{digest}", (WithGeneratedViews,), opts)
    try:
        torchreid.data.register_image_dataset(name, cls)
    except ValueError:
        pass  # the same options were registered before: the name already means this
    return name


def repeat_items(items: list, count: int | None) -> list:
    """``items`` repeated whole as often as fits in ``count``, the remainder evenly spaced over the list."""
    if not count or count <= len(items):
        return list(items)
    whole, rest = divmod(int(count), len(items))
    step = len(items) / rest if rest else 0
    return list(items) * whole + [items[int(i * step)] for i in range(rest)]


def validation_items(real: list[tuple], split_file: str | Path | None, count: int, seed: int) -> list[tuple]:
    """Held-out images of the training identities: ``count`` training images outside the subset (seeded).

    ``real`` is the whole real training list as torchreid's (path, label, camid). Validation takes images the
    low-data subset left out, of the same identities, so that every variant of a (fraction, seed) is stopped on
    the same images, the subset itself stays whole, and no test identity is seen.
    """
    import random

    if not split_file:
        raise DataError("converge needs held-out images of the training identities: use a fraction below 1 "
                        "(images outside the subset are the validation images)")
    kept = set(load_split(split_file).files)
    pids = {label for path, label, _ in real if Path(path).name in kept}
    rest = sorted((it for it in real if Path(it[0]).name not in kept and it[1] in pids), key=lambda it: Path(it[0]).name)
    if not rest:
        raise DataError("no training image outside the subset to validate on (fraction 1?)", split_file)
    chosen = random.Random(seed).sample(rest, min(int(count), len(rest)))
    return sorted(chosen, key=lambda it: Path(it[0]).name)


def validation_loader(items: list[tuple], transform, batch_size: int):
    """A torchreid test loader over ``items`` (each image is a query against all the others)."""
    import torch

    data = ImageDataset(list(items), list(items), list(items), transform=transform, mode="query", verbose=False)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
