"""Poses: 18 OpenPose COCO-18 keypoints, the annotation CSV, pose vectors, rendering, flips and the pose bank."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.paths import plain_name

# OpenPose COCO-18 order. Deformable-GAN's label list calls 14-17 Leye, Reye, Lear, Rear, but the
# real Market-1501 annotations put index 14 beside the right shoulder in front views: OpenPose's own names
# (REye, LEye, REar, LEar) are right. Only names differ; flips swap 14<->15 and 16<->17 either way.
JOINTS = ("nose", "neck", "Rsho", "Relb", "Rwri", "Lsho", "Lelb", "Lwri",
          "Rhip", "Rkne", "Rank", "Lhip", "Lkne", "Lank", "Reye", "Leye", "Rear", "Lear")
NUM_JOINTS = len(JOINTS)
MISSING = -1
# Joint index that each joint becomes under a horizontal flip (left <-> right).
FLIP_PERMUTATION = tuple(JOINTS.index(n.replace("R", "#").replace("L", "R").replace("#", "L"))
                         if n[0] in "RL" else i for i, n in enumerate(JOINTS))
# OpenPose limbs (1-based in OpenPose's code, 0-based here) and their colours, in OpenPose's order.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 15), (15, 17), (0, 14), (14, 16))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
          (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
          (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
# Stage-1 sentinel for a missing joint: outside [0, 1] by far, so no real normalised coordinate equals it.
VECTOR_SENTINEL = -2.0
VECTOR_DIM = 3 * NUM_JOINTS  # 36 coordinates + 18 visibility flags
# The four joints the Deformable-GAN pair rule requires (shoulders and hips).
TORSO = tuple(JOINTS.index(n) for n in ("Rsho", "Lsho", "Rhip", "Lhip"))
ANNOTATION_HEADER = "name:keypoints_y:keypoints_x"


@dataclass(frozen=True, eq=False)
class Pose:
    """Keypoints in pixel coordinates of an image of ``size`` = (height, width).

    ``xy`` is (18, 2) float32 of (x, y); entries of invisible joints are -1 and carry no meaning.
    """

    xy: np.ndarray
    visible: np.ndarray
    size: tuple[int, int]

    def __post_init__(self):
        xy = np.asarray(self.xy, dtype=np.float32)
        vis = np.asarray(self.visible, dtype=bool)
        if xy.shape != (NUM_JOINTS, 2) or vis.shape != (NUM_JOINTS,):
            raise ValueError(f"a pose needs ({NUM_JOINTS}, 2) keypoints and ({NUM_JOINTS},) visibility, "
                             f"got {xy.shape} and {vis.shape}")
        xy = np.where(vis[:, None], xy, float(MISSING)).astype(np.float32)
        xy.setflags(write=False)
        vis = vis.copy()
        vis.setflags(write=False)
        object.__setattr__(self, "xy", xy)
        object.__setattr__(self, "visible", vis)
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    @classmethod
    def from_array(cls, array, size: tuple[int, int]) -> "Pose":
        """From an (18, 2) array of (x, y) pixels with -1 (either coordinate) for a missing joint."""
        arr = np.asarray(array, dtype=np.float32)
        if arr.shape != (NUM_JOINTS, 2):
            raise ValueError(f"pose array must have shape ({NUM_JOINTS}, 2) of (x, y), got {arr.shape}")
        visible = (arr[:, 0] != MISSING) & (arr[:, 1] != MISSING)
        return cls(arr, visible, size)

    def to_array(self) -> np.ndarray:
        return self.xy.copy()

    def scaled(self, size: tuple[int, int]) -> "Pose":
        """The same pose for the image resized to ``size`` = (height, width)."""
        sy, sx = size[0] / self.size[0], size[1] / self.size[1]
        return Pose(self.xy * np.array([sx, sy], dtype=np.float32), self.visible, size)

    def flipped(self) -> "Pose":
        """Horizontal mirror: x -> W - 1 - x, and left/right joints swap names."""
        xy = self.xy.copy()
        xy[:, 0] = self.size[1] - 1 - xy[:, 0]
        perm = list(FLIP_PERMUTATION)
        return Pose(xy[perm], self.visible[perm], self.size)

    def vector(self) -> np.ndarray:
        """Stage-1 input: (x/W, y/H) per joint with a sentinel for missing joints, then 18 visibility flags."""
        h, w = self.size
        norm = self.xy / np.array([w, h], dtype=np.float32)
        norm[~self.visible] = VECTOR_SENTINEL
        return np.concatenate([norm.reshape(-1), self.visible.astype(np.float32)]).astype(np.float32)

    def has_torso(self) -> bool:
        return bool(self.visible[list(TORSO)].all())

    def __repr__(self):
        return f"Pose(size={self.size}, visible={int(self.visible.sum())}/{NUM_JOINTS})"

    def __eq__(self, other):
        return (isinstance(other, Pose) and self.size == other.size
                and np.array_equal(self.visible, other.visible) and np.array_equal(self.xy, other.xy))


def as_pose(value, size: tuple[int, int]) -> Pose:
    """Accept a Pose or an (18, 2) (x, y) array; an array is taken in pixels of ``size``."""
    if isinstance(value, Pose):
        return value if value.size == tuple(size) else value.scaled(size)
    return Pose.from_array(value, size)


# ----------------------------------------------------------------------------------------------- CSV io
MAX_COORDINATE = 10**6
MAX_TEXT_BYTES = 256 << 20  # Market-1501's annotations are 4 MB
def _parse_int_list(text: str, what: str, path, line: int) -> list[int]:
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):
        raise DataError(f"cannot parse {what} list {text.strip()[:60]!r}", path, line) from None
    # json reads true as 1 and NaN / Infinity as floats: a coordinate is a finite number, nothing else, and
    # no pixel lies a million pixels away (a 400-digit integer would not even convert to a float).
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_COORDINATE
            and math.isfinite(v) for v in values):
        raise DataError(f"{what} must be a list of finite numbers, got {text.strip()[:60]!r}", path, line)
    if len(values) != NUM_JOINTS:
        raise DataError(f"{what} has {len(values)} keypoints, expected {NUM_JOINTS} (OpenPose COCO-18)",
                        path, line)
    return [int(round(v)) for v in values]


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a BOM allowed); undecodable bytes are an error naming the line."""
    with open(path, "rb") as f:
        data = f.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise DataError(f"too large for an annotation or pairs file (over {MAX_TEXT_BYTES >> 20} MB)", path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})", path,
                        data.count(b"\n", 0, e.start) + 1) from None
    if "\0" in text:
        raise DataError("a text file must not contain NUL bytes", path, text.count("\n", 0, text.index("\0")) + 1)
    return text.splitlines(keepends=True)


def read_annotation_rows(path: str | Path) -> dict[str, tuple[np.ndarray, int]]:
    """Read ``name:keypoints_y:keypoints_x`` rows into {image name: ((18, 2) float32 (x, y), line number)}, -1
    for a missing joint. Every malformed row is an error; coordinates are not checked against an image."""
    path = Path(path)
    if not path.is_file():
        raise DataError("annotation file not found", path)
    rows: dict[str, tuple[np.ndarray, int]] = {}
    lines = read_text_lines(path)
    header = lines[0].strip() if lines else ""
    if header.replace(" ", "") != ANNOTATION_HEADER:
        raise DataError(f"bad header {header[:80]!r}, expected {ANNOTATION_HEADER!r}", path, 1)
    for line_no, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        parts = raw.rstrip("\r\n").split(":")
        if len(parts) != 3:
            raise DataError(f"expected 3 ':'-separated fields (name, y list, x list), got {len(parts)}",
                            path, line_no)
        name = plain_name(parts[0].strip(), path, line_no)
        ys = _parse_int_list(parts[1], "keypoints_y", path, line_no)
        xs = _parse_int_list(parts[2], "keypoints_x", path, line_no)
        if name in rows:
            raise DataError(f"image {name} annotated twice", path, line_no)
        arr = np.array([xs, ys], dtype=np.float32).T
        if np.any((arr[:, 0] == MISSING) != (arr[:, 1] == MISSING)):
            bad = [JOINTS[i] for i in np.nonzero((arr[:, 0] == MISSING) != (arr[:, 1] == MISSING))[0]]
            raise DataError(f"{name}: joint(s) {', '.join(bad)} missing in one list only", path, line_no)
        rows[name] = (arr, line_no)
    return rows


def read_annotations(path: str | Path,
                     image_size: tuple[int, int] | Mapping[str, tuple[int, int]] = (128, 64)) -> dict[str, Pose]:
    """Read ``name:keypoints_y:keypoints_x`` rows into {image name: Pose}. Every bad row is an error.

    ``image_size``: (height, width) of every image, or {image name: (height, width)} for images of many sizes;
    with a mapping, rows of images it does not name are left out (one annotation file may cover more images
    than a command reads). A joint outside its image is an error."""
    sizes = image_size if isinstance(image_size, Mapping) else None
    poses: dict[str, Pose] = {}
    for name, (arr, line_no) in read_annotation_rows(path).items():
        size = tuple(image_size) if sizes is None else sizes.get(name)
        if size is None:
            continue
        check_in_image(name, arr, size, path, line_no)
        poses[name] = Pose.from_array(arr, size)
    return poses


def check_in_image(name: str, arr: np.ndarray, size: tuple[int, int], path=None, line: int | None = None) -> None:
    """A DataError naming the row when a joint of the (18, 2) (x, y) array lies outside the (height, width)."""
    h, w = size
    out = (arr[:, 0] != MISSING) & ((arr[:, 0] < 0) | (arr[:, 0] >= w) | (arr[:, 1] < 0) | (arr[:, 1] >= h))
    if out.any():
        j = int(np.nonzero(out)[0][0])
        raise DataError(f"{name}: joint {JOINTS[j]} at (x={int(arr[j, 0])}, y={int(arr[j, 1])}) is outside the "
                        f"{h}x{w} image", path, line)


def read_annotation_files(paths: Sequence[str | Path],
                          image_size: tuple[int, int] | Mapping[str, tuple[int, int]] = (128, 64)) -> dict[str, Pose]:
    """Several annotation CSVs as one mapping (``image_size`` as :func:`read_annotations`). An image in two
    files with different poses is refused (which one is right is the user's call, not the last file's);
    identical rows are the same annotation."""
    poses: dict[str, Pose] = {}
    origin: dict[str, Path] = {}
    for path in paths:
        for name, pose in read_annotations(path, image_size).items():
            if name in poses and poses[name] != pose:
                raise DataError(f"image {name} has a different pose here than in {origin[name]}", path)
            poses.setdefault(name, pose)
            origin.setdefault(name, Path(path))
    return poses


def format_annotation_row(name: str, pose: Pose) -> str:
    xy = np.rint(pose.xy).astype(int)
    ys = [int(y) if v else MISSING for y, v in zip(xy[:, 1], pose.visible)]
    xs = [int(x) if v else MISSING for x, v in zip(xy[:, 0], pose.visible)]
    return f"{name}: {ys}: {xs}"


def write_annotations(path: str | Path, poses: Mapping[str, Pose]) -> None:
    """Write {name: Pose} in the real format (rounded to integer pixels), atomically."""
    from pcdms_aug.utils.io import atomic_write_text
    lines = [ANNOTATION_HEADER] + [format_annotation_row(n, p) for n, p in poses.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read a ``from,to`` pairs CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError("pairs file not found", path)
    try:
        rows = list(csv.reader(read_text_lines(path)))
    except csv.Error as e:
        raise DataError(f"not a CSV file: {e}", path) from None
    if not rows or [c.strip() for c in rows[0]] != ["from", "to"]:
        raise DataError(f"bad header {','.join(rows[0]) if rows else '(empty file)'!r}, expected 'from,to'",
                        path, 1)
    pairs, seen = [], {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"expected two image names 'from,to', got {','.join(row)[:80]!r}", path, line_no)
        pair = (plain_name(row[0].strip(), path, line_no), plain_name(row[1].strip(), path, line_no))
        if pair in seen:
            # generated once but counted twice in the metrics: a silent bias, so refuse it
            raise DataError(f"pair {pair[0]},{pair[1]} is listed twice (first on line {seen[pair]})", path, line_no)
        seen[pair] = line_no
        pairs.append(pair)
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]]) -> None:
    from pcdms_aug.utils.io import atomic_write_text
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["from", "to"])
    writer.writerows(pairs)
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------- rendering
def render_pose(pose: Pose, size: tuple[int, int] | None = None, canvas: np.ndarray | None = None,
                limb_width: float | None = None) -> np.ndarray:
    """OpenPose-style skeleton as (H, W, 3) uint8: limbs as filled ellipses, joints as dots.

    Missing joints and their limbs are left out. ``canvas`` (H, W, 3) draws over an image (overlay).
    Deterministic: plain OpenCV rasterisation, no randomness, no anti-aliasing.
    """
    import cv2

    if size is None:
        size = pose.size if canvas is None else canvas.shape[:2]
    pose = pose.scaled(size) if tuple(size) != pose.size else pose
    h, w = size
    img = np.zeros((h, w, 3), np.uint8) if canvas is None else np.ascontiguousarray(canvas, dtype=np.uint8).copy()
    scale = min(h / 128.0, w / 64.0)
    stick = max(1, int(round((limb_width if limb_width is not None else 2.0) * scale)))
    radius = max(1, int(round(2.0 * scale)))
    # Fixed-point coordinates (shift=4) keep sub-pixel positions at small sizes.
    shift, one = 4, 16
    xy, vis = pose.xy, pose.visible
    limbs = np.zeros_like(img)
    for k, (a, b) in enumerate(LIMBS):
        if not (vis[a] and vis[b]):
            continue
        (xa, ya), (xb, yb) = xy[a], xy[b]
        cx, cy = (xa + xb) / 2, (ya + yb) / 2
        length = math.hypot(xb - xa, yb - ya) / 2
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        poly = cv2.ellipse2Poly((int(round(cx)), int(round(cy))), (int(round(length)), stick),
                                int(round(angle)), 0, 360, 1)
        cv2.fillConvexPoly(limbs, poly, COLORS[k])
    # OpenPose blends limbs at 0.6 over the joint layer; integer arithmetic keeps it bit-exact everywhere.
    limb_mask = limbs.any(axis=2)
    for j in range(NUM_JOINTS):
        if vis[j]:
            cv2.circle(img, (int(round(xy[j, 0] * one)), int(round(xy[j, 1] * one))), radius * one, COLORS[j],
                       thickness=-1, shift=shift)
    blended = (img.astype(np.uint16) * 2 + limbs.astype(np.uint16) * 3) // 5
    img[limb_mask] = blended[limb_mask].astype(np.uint8)
    return img


# ------------------------------------------------------------------------------------------- pose bank
class PoseBank:
    """All poses of a split, with k-means canonical poses (as PN-GAN) and flips."""

    def __init__(self, poses: Mapping[str, Pose] | Sequence[Pose], names: Sequence[str] | None = None,
                 require_torso: bool = True):
        if isinstance(poses, Mapping):
            names, poses = list(poses.keys()), list(poses.values())
        else:
            poses = list(poses)
            names = list(names) if names is not None else [str(i) for i in range(len(poses))]
        keep = [i for i, p in enumerate(poses) if p.has_torso() or not require_torso]
        self.names = [names[i] for i in keep]
        self.poses = [poses[i] for i in keep]
        if not self.poses:
            raise ValueError("pose bank is empty (no pose with both shoulders and hips visible)")

    def __len__(self):
        return len(self.poses)

    def vectors(self) -> np.ndarray:
        return np.stack([p.vector() for p in self.poses])

    def with_flips(self) -> "PoseBank":
        names = self.names + [n + "#flip" for n in self.names]
        return PoseBank(self.poses + [p.flipped() for p in self.poses], names, require_torso=False)

    def canonical(self, k: int, seed: int = 0) -> list[Pose]:
        """k canonical poses: k-means on normalised coordinates (missing joints imputed by the
        cluster-agnostic mean), each centre replaced by its nearest real pose so it stays a real skeleton."""
        from sklearn.cluster import KMeans

        k = min(k, len(self.poses))
        feats = self._features()
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(feats)
        out = []
        for c in range(k):
            members = np.nonzero(km.labels_ == c)[0]
            d = ((feats[members] - km.cluster_centers_[c]) ** 2).sum(1)
            out.append(self.poses[int(members[np.argmin(d)])])
        return out

    def _mean_joint(self) -> np.ndarray:
        xy, vis = _normalised(self.poses)
        return np.where(vis[..., None], xy, 0).sum(0) / np.maximum(vis.sum(0), 1)[:, None]

    def _features(self, poses: Sequence[Pose] | None = None) -> np.ndarray:
        # Missing joints take the bank's mean joint position so they pull no pose towards the origin.
        xy, vis = _normalised(self.poses if poses is None else poses)
        xy = np.where(vis[..., None], xy, self._mean_joint()[None])
        return np.concatenate([xy.reshape(len(xy), -1), 0.25 * vis.astype(np.float32)], axis=1)

    def distances(self, queries: Sequence[Pose]) -> np.ndarray:
        """(len(queries), len(bank)) Euclidean distances in the k-means feature space."""
        bank, q = self._features(), self._features(list(queries))
        return np.sqrt(((q[:, None, :] - bank[None]) ** 2).sum(-1))


def _normalised(poses: Sequence[Pose]) -> tuple[np.ndarray, np.ndarray]:
    xy = np.stack([p.xy / np.array([p.size[1], p.size[0]], np.float32) for p in poses])
    return xy, np.stack([p.visible for p in poses])
