"""Re-ID datasets on disk, read by torchreid's rules: folders, list files, file names, identities and cameras.

Layouts, under the names torchreid registers them by (``root`` may be the dataset folder itself or torchreid's
``root`` above it, e.g. ``data/`` holding ``msmt17/MSMT17_V1``):

- ``market1501``: ``bounding_box_train/ query/ bounding_box_test/``, ``0002_c1s1_000451_03.jpg``; junk (``-1``)
  images are listed, as the annotation files name them (torchreid drops them when it trains).
- ``dukemtmcreid``: the same folders under ``DukeMTMC-reID/``, ``0001_c2_f0046182.jpg``.
- ``msmt17``: ``MSMT17_V1/`` (or ``_V2``) with ``train/ test/`` and ``list_{train,val,query,gallery}.txt``
  (``<relative path> <pid>`` per line; the camera is the name's third ``_`` field).
- ``cuhk03``: the new protocol (767/700) as torchreid writes it on its first run: ``images_detected/`` and
  ``splits_new_detected.json`` (``cuhk03-labeled``: ``images_labeled/``, ``splits_new_labeled.json``).
- ``folder``: a plain folder of crops, ``train/ query/ gallery/`` each holding one folder per identity; the
  camera is the ``_c<N>`` of a file name when it has one, else 0 for query and train, 1 for gallery (every query
  then has its matches under another camera, as torchreid's ranking needs).

``pid`` and ``camid`` are exactly what torchreid reads (camid 0-based; training pids before torchreid's relabel,
except CUHK03's, which its split file stores relabelled). ``filename`` is an image's key in annotation CSVs and
split files: unique within a split.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pcdms_aug.data.market import SPLITS as MARKET_SPLITS, MarketDataset, SplitLists
from pcdms_aug.utils.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_NAMES = ("train", "query", "gallery")
LAYOUTS = ("market1501", "dukemtmcreid", "msmt17", "cuhk03", "folder")
# Where torchreid's own class looks under its root, and the folder its download unpacks to.
TORCHREID_DIRS = {"market1501": ("market1501", "Market-1501-v15.09.15"), "dukemtmcreid": ("dukemtmc-reid", "DukeMTMC-reID"),
                  "msmt17": ("msmt17", None), "cuhk03": ("cuhk03", None)}
MSMT17_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
CAMERA_IN_NAME = re.compile(r"([-\d]+)_c(\d)")  # torchreid's Market-1501 / DukeMTMC-reID pattern
_FOLDER_CAMERA = re.compile(r"_c(\d+)")


@dataclass(frozen=True)
class ReidImage:
    path: Path
    filename: str  # the key in annotation CSVs and split files
    pid: int
    camid: int  # 0-based, as torchreid reads it
    split: str  # train | query | gallery


class ReidDataset(SplitLists):
    """The image lists of a re-ID dataset folder in one of :data:`LAYOUTS`."""

    def __init__(self, root: Path, layout: str, splits: dict[str, list[ReidImage]]):
        self.root, self.layout, self.splits = Path(root), layout, splits
        for split, items in splits.items():
            seen: dict[str, Path] = {}
            for it in items:
                if it.filename in seen:
                    raise DataError(f"two {split} images are named {it.filename!r} ({seen[it.filename]} and "
                                    f"{it.path}): names key the annotation and split files", self.root)
                seen[it.filename] = it.path
        self._by_name = {}
        for split in ("gallery", "query", "train"):  # train wins a name shared across splits
            self._by_name.update({it.filename: it for it in splits.get(split, [])})

    def all_images(self) -> Iterable[ReidImage]:
        for split in SPLIT_NAMES:
            yield from self.splits[split]

    def image(self, filename: str) -> ReidImage:
        try:
            return self._by_name[filename]
        except KeyError:
            raise DataError(f"image {filename!r} not found in any split", self.root) from None

    def path_of(self, filename: str) -> Path:
        return self.image(filename).path


def is_identity(dataset, it) -> bool:
    """Whether an image shows a person of the dataset's identities: not junk (-1) and, in Market-1501's layout,
    not a distractor (0000); in the other layouts 0 is a person. ``it``: a ReidImage or a MarketDataset image."""
    pid = it.pid if isinstance(it, ReidImage) else it.name.pid
    return pid >= 0 and not (pid == 0 and getattr(dataset, "layout", "market1501") == "market1501")


def pair_identities(dataset) -> dict[str, int] | None:
    """What :func:`pcdms_aug.data.market.make_pairs` groups training images by: None for Market-1501 (its names
    carry the identity), else {file name: identity} of the dataset's training identities."""
    if dataset.layout == "market1501":
        return None
    return {it.filename: it.pid for it in dataset.train if is_identity(dataset, it)}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _market(root: Path) -> dict[str, list[ReidImage]]:
    ds = MarketDataset(root)
    return {split: [ReidImage(it.path, it.filename, it.name.pid, it.name.camid - 1, split) for it in items]
            for split, items in ds.splits.items()}


def _duke(root: Path) -> dict[str, list[ReidImage]]:
    out = {}
    for split, folder in MARKET_SPLITS.items():
        items = []
        for p in _images(root / folder):
            m = CAMERA_IN_NAME.match(p.name)
            if m is None or not 1 <= int(m.group(2)) <= 8:
                raise DataError(f"image name {p.name!r} does not follow DukeMTMC-reID's '<pid>_c<cam>_f<frame>.jpg' "
                                "(cameras 1..8)", p)
            items.append(ReidImage(p, p.name, int(m.group(1)), int(m.group(2)) - 1, split))
        out[split] = items
    return out


def _msmt17(root: Path) -> dict[str, list[ReidImage]]:
    if (root / "list_train.txt").is_file():  # the version folder itself (MSMT17_V1/)
        base, (train_dir, test_dir) = root, MSMT17_VERSIONS.get(root.name, MSMT17_VERSIONS["MSMT17_V1"])
    else:
        version = next((v for v in MSMT17_VERSIONS if (root / v).is_dir()), None)
        if version is None:
            raise DataError(f"no {' or '.join(MSMT17_VERSIONS)} folder", root)
        base, (train_dir, test_dir) = root / version, MSMT17_VERSIONS[version]
    lists = {"train": (train_dir, "list_train.txt"), "query": (test_dir, "list_query.txt"),
             "gallery": (test_dir, "list_gallery.txt")}
    out = {}
    for split, (folder, list_name) in lists.items():
        path = base / list_name
        if not path.is_file():
            raise DataError(f"MSMT17 list file missing ({list_name})", path)
        items = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                rel, pid = fields[0], int(fields[1])
                camid = int(rel.split("_")[2]) - 1
            except (IndexError, ValueError):
                raise DataError(f"expected '<pid folder>/<pid>_<index>_<camera>_<...>.jpg <pid>', got {line!r}",
                                path, line_no) from None
            img = base / folder / rel
            if len(fields) != 2 or ".." in Path(rel).parts or Path(rel).is_absolute():
                raise DataError(f"bad line {line!r}", path, line_no)
            if not img.is_file():
                raise DataError(f"image {rel!r} listed but not found in {folder}/", path, line_no)
            items.append(ReidImage(img, img.name, pid, camid, split))
        out[split] = items
    return out


def _cuhk03(root: Path, labeled: bool = False) -> dict[str, list[ReidImage]]:
    kind = "labeled" if labeled else "detected"
    split_path, images = root / f"splits_new_{kind}.json", root / f"images_{kind}"
    if not split_path.is_file() or not images.is_dir():
        raise DataError(f"CUHK03 without {split_path.name} and {images.name}/: torchreid writes them from "
                        "cuhk03_release/cuhk-03.mat on its first run (torchreid.data.datasets.CUHK03(root=...))", root)
    from pcdms_aug.config.loading import read_json

    try:
        split = read_json(split_path, split_path.name, limit=256 << 20)[0]
        out = {}
        for name in SPLIT_NAMES:
            items = []
            for path, pid, camid in split[name]:
                # torchreid stores absolute paths; the images are looked up where this copy of the folder holds them
                img = images / Path(path).name
                if not img.is_file():
                    raise DataError(f"image {Path(path).name!r} of the {name} split not found in {images.name}/",
                                    split_path)
                items.append(ReidImage(img, img.name, int(pid), int(camid), name))
            out[name] = items
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"not torchreid's CUHK03 split file ({e.__class__.__name__}: {e})", split_path) from None
    return out


def _folder(root: Path) -> dict[str, list[ReidImage]]:
    names = sorted({d.name for split in SPLIT_NAMES if (root / split).is_dir()
                    for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith(".")})
    numeric = all(n.isdigit() for n in names)
    pid_of = {n: int(n) if numeric else i for i, n in enumerate(names)}
    out = {}
    for split in SPLIT_NAMES:
        items = []
        if (root / split).is_dir():
            for d in sorted(p for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
                for p in _images(d):
                    m = _FOLDER_CAMERA.search(p.stem)
                    camid = int(m.group(1)) - 1 if m else int(split == "gallery")
                    items.append(ReidImage(p, p.name, pid_of[d.name], camid, split))
        out[split] = items
    if not out["train"] and not out["query"]:
        raise DataError("no images in train/<identity>/ or query/<identity>/", root)
    return out


READERS = {"market1501": _market, "dukemtmcreid": _duke, "msmt17": _msmt17, "cuhk03": _cuhk03, "folder": _folder}


def _looks_like(folder: Path) -> str | None:
    """The layout a folder holds directly, judged by its folders and its first training image's name."""
    if not folder.is_dir():
        return None
    if all((folder / d).is_dir() for d in MARKET_SPLITS.values()):
        first = next(iter(_images(folder / "bounding_box_train")), None)
        return "dukemtmcreid" if first is not None and re.match(r"[-\d]+_c\d_f\d+", first.name) else "market1501"
    if any((folder / v).is_dir() for v in MSMT17_VERSIONS) or (folder / "list_train.txt").is_file():
        return "msmt17"
    if (folder / "splits_new_detected.json").is_file() or (folder / "cuhk03_release").is_dir():
        return "cuhk03"
    if (folder / "train").is_dir() or (folder / "query").is_dir():
        return "folder"
    return None


def _candidates(path: Path, layout: str | None):
    """Folders to try: the path itself, then torchreid's folders under it."""
    yield path
    for name, (outer, inner) in TORCHREID_DIRS.items():
        if layout in (None, name):
            yield from (path / outer / inner, path / outer, path / inner) if inner else (path / outer,)


def find_dataset(path: str | Path, layout: str | None = None) -> tuple[Path, str] | None:
    """(folder, layout) of the dataset at ``path`` (its own folder, or torchreid's root above it) in ``layout``
    (detected when None), without reading it; None when there is none."""
    path = Path(path).expanduser()
    want = "cuhk03" if layout == "cuhk03-labeled" else layout
    if want is not None and want not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}, cuhk03-labeled", "--layout")
    for folder in _candidates(path, want):
        found = _looks_like(folder)
        if found is None or (want is not None and found != want and not (want == "dukemtmcreid" and found ==
                                                                          "market1501")):
            continue
        return folder, want if want == "dukemtmcreid" else found
    return None


def open_dataset(path: str | Path, layout: str | None = None) -> ReidDataset:
    """Read the dataset at ``path`` (its own folder, or torchreid's root above it) in ``layout`` (detected when
    None; ``cuhk03-labeled`` reads CUHK03's labelled boxes)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("dataset folder does not exist", path)
    found = find_dataset(path, layout)
    if found is None:
        raise DataError(f"no re-ID dataset found{' in the ' + layout + ' layout' if layout else ''} (looked for "
                        "bounding_box_train/query/bounding_box_test, MSMT17_V1/, CUHK03's splits_new_detected.json "
                        "or train/<identity>/, directly and under torchreid's folder names)", path)
    folder, kind = found
    splits = _cuhk03(folder, layout == "cuhk03-labeled") if kind == "cuhk03" else READERS[kind](folder)
    return ReidDataset(folder, kind, splits)
