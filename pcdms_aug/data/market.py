"""Market-1501 on disk: the folder layout, file names, splits and the same-identity pair rule."""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Iterable, Mapping

from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import Pose

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
TORCHREID_NESTING = ("market1501", "Market-1501-v15.09.15")
IMAGE_SIZE = (128, 64)  # (height, width) of a Market-1501 crop; other datasets' crops have any size
JUNK_PID, DISTRACTOR_PID = -1, 0
# Real Market-1501 holds a few '.jpg.jpg' files in bounding_box_test (18 of them; the annotations name them too).
_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.((?:jpg|jpeg|png)(?:\.jpg)?)$", re.IGNORECASE)


@dataclass(frozen=True)
class MarketName:
    """``0002_c1s1_000451_03.jpg``: person 2, camera 1, sequence 1, frame 451, 3rd box of that frame."""

    pid: int
    camid: int  # 1-based, as in the name
    sequence: int
    frame: int
    box: int
    ext: str = "jpg"

    @property
    def is_junk(self) -> bool:
        return self.pid == JUNK_PID

    @property
    def is_distractor(self) -> bool:
        return self.pid == DISTRACTOR_PID

    def __str__(self) -> str:
        pid = "-1" if self.pid == JUNK_PID else f"{self.pid:04d}"
        return f"{pid}_c{self.camid}s{self.sequence}_{self.frame:06d}_{self.box:02d}.{self.ext}"


def parse_name(name: str, path: str | Path | None = None) -> MarketName:
    m = _NAME.match(Path(name).name)
    if m is None:
        raise DataError(f"image name {Path(name).name!r} does not follow Market-1501's "
                        "'<pid>_c<cam>s<seq>_<frame>_<box>.jpg' (e.g. 0002_c1s1_000451_03.jpg)",
                        path if path is not None else name)
    pid, cam, seq, frame, box, ext = m.groups()
    if not 1 <= int(cam) <= 9:
        raise DataError(f"camera {cam} in {name!r} is out of range", path if path is not None else name)
    return MarketName(int(pid), int(cam), int(seq), int(frame), int(box), ext.lower())


def pid_of(name: str) -> str:
    """The identity prefix of a file name, as the pair rule groups images ('0002', '-1', ...)."""
    return Path(name).name.split("_", 1)[0]


@dataclass(frozen=True)
class MarketImage:
    path: Path
    name: MarketName

    @property
    def filename(self) -> str:
        return self.path.name


def find_root(root: str | Path) -> Path:
    """The folder that holds the three split folders: ``root`` itself or torchreid's nesting under it."""
    root = Path(root)
    for candidate in (root, root.joinpath(*TORCHREID_NESTING), root / TORCHREID_NESTING[1]):
        if all((candidate / d).is_dir() for d in SPLITS.values()):
            return candidate
    if not root.exists():
        raise DataError("dataset folder does not exist", root)
    present = [d for d in SPLITS.values() if (root / d).is_dir()]
    missing = [d for d in SPLITS.values() if d not in present]
    raise DataError(f"not a Market-1501 folder: missing split folder(s) {', '.join(missing)} "
                    f"(looked in {root} and {root.joinpath(*TORCHREID_NESTING)})", root)


class SplitLists:
    """``train``, ``query`` and ``gallery``: the image lists of ``self.splits`` (a dataset of any layout)."""

    splits: dict[str, list]

    @property
    def train(self) -> list:
        return self.splits["train"]

    @property
    def query(self) -> list:
        return self.splits["query"]

    @property
    def gallery(self) -> list:
        return self.splits["gallery"]


class MarketDataset(SplitLists):
    """The image lists of a Market-1501-layout folder. Names are parsed strictly: a bad one is an error."""

    def __init__(self, root: str | Path):
        self.root = find_root(root)
        self.splits: dict[str, list[MarketImage]] = {}
        for split, folder in SPLITS.items():
            items = []
            for p in sorted((self.root / folder).iterdir()):
                if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or p.name.startswith(".") or not p.is_file():
                    continue
                items.append(MarketImage(p, parse_name(p.name, p)))
            self.splits[split] = items

    def path_of(self, filename: str) -> Path:
        """Find an image by file name in any split (train first, then gallery, then query)."""
        for split in ("train", "gallery", "query"):
            p = self.root / SPLITS[split] / filename
            if p.is_file():
                return p
        raise DataError(f"image {filename!r} not found in any split", self.root)

    def all_images(self) -> Iterable[MarketImage]:
        for items in self.splits.values():
            yield from items


# A person crop smaller than this on a side carries nothing to condition on (Market-1501 crops are 128x64): such
# a file is refused rather than upsampled into a source or a metric's ground truth.
MIN_SIDE = 8


def load_image(path: str | Path, size: tuple[int, int] | None = None):
    """Open an image as RGB (any mode, see :mod:`.images`), failing with the file named; optionally resized to
    (height, width)."""
    from PIL import Image

    from pcdms_aug.data.images import open_rgb

    im, _ = open_rgb(path)
    if min(im.size) < MIN_SIDE:
        raise DataError(f"image is {im.height}x{im.width} pixels: too small for a person crop (at least "
                        f"{MIN_SIDE} on each side)", path)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels; a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    from pcdms_aug.data.images import MAX_PIXELS

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise DataError("image not found", path) from None
    except Image.DecompressionBombError:
        raise DataError(f"image too large for a person crop (at most {MAX_PIXELS} pixels)", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"unreadable image ({e.__class__.__name__}: {e})", path) from None


def image_sizes(images: Iterable) -> dict[str, tuple[int, int]]:
    """{file name: (height, width)} of dataset images (anything with ``filename`` and ``path``): the frame each
    image's keypoints are in, for :func:`pcdms_aug.data.pose.read_annotations`."""
    return {it.filename: image_size(it.path) for it in images}


def valid_for_pairs(name: str, pose: Pose) -> bool:
    """Deformable-GAN's rule: no junk or distractor, both shoulders and both hips annotated."""
    return not (name.startswith("-1") or name.startswith("0000")) and pose.has_torso()


def make_pairs(poses: Mapping[str, Pose], max_pairs: int | None = None, seed: int = 0,
               names: Iterable[str] | None = None,
               identities: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """Every ordered pair of two different valid images of one identity; ``max_pairs`` samples (seeded).

    The identity of an image is its Market-1501 name's prefix, junk and distractors left out; or, for other
    datasets (whose names need not carry it), ``identities[name]`` (images it does not name are left out)."""
    allowed = None if names is None else set(names)
    by_pid: dict = defaultdict(list)
    for name in sorted(poses):
        if allowed is not None and name not in allowed:
            continue
        if identities is None and valid_for_pairs(name, poses[name]):
            by_pid[pid_of(name)].append(name)
        elif identities is not None and name in identities and poses[name].has_torso():
            by_pid[identities[name]].append(name)
    pairs = [p for pid in sorted(by_pid) for p in permutations(by_pid[pid], 2)]
    if max_pairs is not None and len(pairs) > max_pairs:
        rng = random.Random(seed)
        pairs = rng.sample(pairs, max_pairs)
    return pairs
