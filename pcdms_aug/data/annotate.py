"""`pcdms-aug annotate`: pose annotations for every image of a dataset or a folder, by ViTPose.

Writes the CSV every command reads (``name:keypoints_y:keypoints_x``, OpenPose COCO-18, -1 for a missing joint,
pixels of each image's own size), one row per image, in the order the images are listed. Resumable: rows go to
``OUT.partial`` batch by batch (each batch flushed to disk); a rerun with the same settings skips the images it
holds, and a torn last line of a killed run is dropped. The finished CSV replaces ``OUT`` in one rename, and
the partial file is removed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pcdms_aug.data.layouts import LAYOUTS, SPLIT_NAMES, find_dataset, open_dataset
from pcdms_aug.data.market import load_image
from pcdms_aug.data.pose import ANNOTATION_HEADER, MISSING, format_annotation_row
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import TEMP_PREFIX, atomic_write_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PARTIAL_HEAD = "# pcdms-aug annotate "


def list_images(root: str | Path, splits=None, layout: str | None = None) -> tuple[str, list[tuple[str, Path]]]:
    """(what root is, [(name, path)]): the images of a re-ID dataset's ``splits`` (default all; any layout
    :func:`pcdms_aug.data.layouts.open_dataset` reads), or every image under any other folder (sorted by path).
    A name used twice is an error: the CSV is keyed by file name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("image folder not found (a dataset or a folder of person crops)", root)
    if layout is None and find_dataset(root) is None:
        if splits:
            raise DataError("--splits needs a re-ID dataset; this is a plain folder of crops", root)
        return "folder", _folder_images(root)
    ds = open_dataset(root, layout)
    chosen = splits or SPLIT_NAMES
    images, seen = [], {}
    for split in chosen:
        for it in ds.splits[split]:
            if it.filename in seen:
                raise DataError(f"{it.filename} is in both {seen[it.filename]} and {split}: annotation rows are keyed "
                                "by file name", ds.root)
            seen[it.filename] = split
            images.append((it.filename, it.path))
    return f"{ds.layout} dataset ({', '.join(chosen)})", images


def _folder_images(root: Path) -> list[tuple[str, Path]]:
    seen: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or f.startswith(TEMP_PREFIX) or not f.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(dirpath) / f
            if f in seen:
                raise DataError(f"two images are named {f} ({seen[f]} and {path}): annotation rows are keyed by "
                                "file name", root)
            seen[f] = path
    if not seen:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", root)
    return sorted(seen.items(), key=lambda kv: str(kv[1]))


def check_out(out: str | Path, overwrite: bool, inputs=()) -> Path:
    """The output rule (utils.paths); an existing file is replaced only with --overwrite, and only when it is an
    annotation CSV (its header line): never another file of the user's."""
    from pcdms_aug.utils.paths import check_out_file, written_by

    check_out_file(out, inputs=inputs)
    if os.path.lexists(out) and not overwrite:
        raise DataError("annotation file exists; pass --overwrite to annotate again", out)
    return check_out_file(out, inputs=inputs, command="annotate",
                          own=written_by("annotate", first_line=ANNOTATION_HEADER.strip()))


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _resume(partial: Path, settings: dict, names: set[str]) -> dict[str, str]:
    """Rows of an earlier run with these settings ({name: row}); a torn last line is cut off the file."""
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8").splitlines()
    if not lines or not lines[0].startswith(PARTIAL_HEAD):
        raise DataError("not a partial annotation file of pcdms-aug annotate; remove it or pass --overwrite",
                        partial, 1)
    try:
        before = json.loads(lines[0][len(PARTIAL_HEAD):])
    except ValueError:
        before = None
    if before != settings:
        diff = sorted(k for k in settings if not isinstance(before, dict) or before.get(k) != settings[k])
        raise DataError(f"an unfinished run with other settings ({', '.join(diff)} differ) left this file; pass "
                        "--overwrite to start again, or the same settings to resume it", partial)
    if end != len(data):
        atomic_write_text(partial, "\n".join(lines) + "\n")
    rows = {}
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip()
        if name in names:
            rows[name] = line
    return rows


def annotate(root, out, estimator, *, splits=None, layout: str | None = None, batch: int = 16,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Annotate every image of ``root`` into ``out`` with ``estimator`` (a :class:`VitPoseEstimator`, or any
    callable from PIL images to Poses with a ``settings`` dict); returns counts."""
    from tqdm import tqdm

    out = Path(out)
    kind, images = list_images(root, splits, layout)
    partial = partial_path(out)
    check_out(out, overwrite)
    if overwrite:
        partial.unlink(missing_ok=True)
    settings = {"root": str(Path(root).resolve()), **estimator.settings}
    rows = _resume(partial, settings, {n for n, _ in images}) if partial.is_file() else {}
    todo = [(n, p) for n, p in images if n not in rows]
    if not partial.is_file():
        atomic_write_text(partial, PARTIAL_HEAD + json.dumps(settings, sort_keys=True) + "\n")
    bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="annotate", unit="img",
               disable=not progress, dynamic_ncols=True)
    try:
        with open(partial, "a", encoding="utf-8") as log:
            for lo in range(0, len(todo), batch):
                chunk = todo[lo:lo + batch]
                poses = estimator([load_image(p) for _, p in chunk])
                lines = [format_annotation_row(n, pose) for (n, _), pose in zip(chunk, poses)]
                log.write("".join(line + "\n" for line in lines))
                log.flush()
                os.fsync(log.fileno())
                rows.update((n, line) for (n, _), line in zip(chunk, lines))
                bar.update(len(chunk))
    finally:
        bar.close()
    atomic_write_text(out, "\n".join([ANNOTATION_HEADER] + [rows[n] for n, _ in images]) + "\n")
    partial.unlink()
    return {"source": kind, "images": len(images), "annotated_now": len(todo),
            "resumed": len(images) - len(todo), **_coverage(rows.values())}


def _coverage(rows) -> dict:
    """Images with at least one joint, and with a full torso, from the rows as written."""
    from pcdms_aug.data.pose import TORSO

    rows = list(rows)
    any_joint = torso = 0
    for row in rows:
        ys = json.loads(row.split(":")[1])
        any_joint += any(y != MISSING for y in ys)
        torso += all(ys[j] != MISSING for j in TORSO)
    return {"with_pose": any_joint, "without_pose": len(rows) - any_joint, "with_torso": torso}


def configure(parser):
    from pcdms_aug.data.vitpose import DEFAULT_THRESHOLD, LAYOUT
    from pcdms_aug.utils.argtypes import batch_int, choice_list, finite_float

    parser.add_argument("images", help="a re-ID dataset (Market-1501, DukeMTMC-reID, MSMT17, CUHK03 or train/query/"
                                       "gallery/<identity>/ folders; its own folder or torchreid's root) or any "
                                       "folder of person crops (searched recursively; file names must be unique)")
    parser.add_argument("--estimator", required=True, metavar="FOLDER",
                        help=f"a ViTPose checkpoint folder: {LAYOUT}; read locally, never downloaded")
    parser.add_argument("--out", required=True, help="the annotation CSV to write")
    parser.add_argument("--splits", type=choice_list(SPLIT_NAMES), default=None,
                        help="of a dataset: a comma list of train,query,gallery (default: all)")
    parser.add_argument("--layout", choices=LAYOUTS + ("cuhk03-labeled",), default=None,
                        help="the dataset's layout (default: detected)")
    parser.add_argument("--threshold", type=finite_float(0.0, 1.0), default=DEFAULT_THRESHOLD,
                        help="a joint whose heatmap score is below this is written as missing (-1)")
    parser.add_argument("--batch", type=batch_int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="annotate again, replacing --out")


def run(args):
    from pcdms_aug.data.vitpose import VitPoseEstimator, check_folder
    from pcdms_aug.utils.io import folder_lock
    from pcdms_aug.utils.runtime import pick_device

    out = check_out(args.out, args.overwrite, inputs=[("the images", args.images), ("the estimator", args.estimator)])
    check_folder(args.estimator)
    list_images(args.images, args.splits, args.layout)  # a bad folder fails before the model loads
    with folder_lock(out.parent, name=f".{out.name}.lock"):
        estimator = VitPoseEstimator(args.estimator, pick_device(args.device), args.threshold)
        counts = annotate(args.images, out, estimator, splits=args.splits, layout=args.layout, batch=args.batch,
                          overwrite=args.overwrite)
    print(f"[annotate] {counts['images']} images of the {counts['source']} ({counts['resumed']} from an earlier "
          f"run): {counts['with_pose']} with a pose, {counts['without_pose']} without, {counts['with_torso']} "
          f"with shoulders and hips -> {out}")
    return 0
