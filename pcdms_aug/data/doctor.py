"""`pcdms-aug inspect`: a dataset doctor for re-ID dataset folders (any layout) and their annotation CSVs."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from pcdms_aug.data.layouts import LAYOUTS, SPLIT_NAMES, find_dataset, is_identity, open_dataset
from pcdms_aug.data.market import SPLITS, MarketDataset
from pcdms_aug.data.pose import MISSING, NUM_JOINTS, TORSO, check_in_image, read_annotation_rows

SEPARATE_TEST_IDS = ("msmt17", "cuhk03")
MOST_COMMON_SIZES = 10  # sizes listed one by one in the report; MSMT17 alone has thousands
# Annotation CSVs found beside a dataset: Market-1501's files and synth-market --layout's.
ANNOTATION_GLOBS = ("market-annotation-*.csv", "annotation-*.csv")


def default_annotations(root: Path) -> list[Path]:
    """Annotation CSVs that sit beside the dataset's folders (the synthetic sets write them there)."""
    return [p for folder in (root, root.parent) for pattern in ANNOTATION_GLOBS for p in sorted(folder.glob(pattern))]


def open_for_inspection(root: str | Path, layout: str | None = None):
    """The dataset; a folder with some of Market-1501's split folders but not all is named as such."""
    root = Path(root)
    if find_dataset(root, layout) is None and layout in (None, "market1501") and any(
            (root / d).is_dir() for d in SPLITS.values()):
        MarketDataset(root)  # raises, naming the split folders it lacks
    return open_dataset(root, layout)


def inspect_dataset(root: str | Path, annotations: list[str | Path] | None = None,
                    check_images: bool = True, layout: str | None = None) -> dict:
    """Counts and problems of a dataset. Bad names or CSV rows raise DataError; bad images are problems."""
    ds = open_for_inspection(root, layout)
    problems: list[str] = []
    report: dict = {"root": str(ds.root), "layout": ds.layout}
    for split in SPLIT_NAMES:
        items = ds.splits[split]
        report[f"{split}_images"] = len(items)
        report[f"{split}_ids"] = len({it.pid for it in items if is_identity(ds, it)})
        if not items:
            problems.append(f"split {SPLITS[split] if ds.layout == 'market1501' else split} is empty")
    images = list(ds.all_images())
    report["cameras"] = sorted({it.camid + 1 for it in images})  # 1-based, as in file names
    report["junk_images"] = sum(it.pid < 0 for it in images)
    report["distractor_images"] = sum(not is_identity(ds, it) and it.pid >= 0 for it in images)
    problems += _identity_problems(ds)
    sizes: dict[str, tuple[int, int]] | None = None
    if check_images:
        sizes = {}
        problems += _check_images(images, report, sizes)
    files = [Path(a) for a in annotations] if annotations else default_annotations(ds.root)
    problems += _check_annotations(ds, files, report, sizes)
    report["problems"] = problems
    return report


def _identity_problems(ds) -> list[str]:
    """Identities the re-ID protocol cannot use as intended: seen by one camera, queries without a gallery
    image, identities in both train and test."""
    problems = []
    cams = {}
    for it in ds.train:
        if is_identity(ds, it):
            cams.setdefault(it.pid, set()).add(it.camid)
    single = sorted(pid for pid, c in cams.items() if len(c) < 2)
    if single:
        problems.append(f"{len(single)} training identities seen by only one camera (e.g. {single[0]:04d})")
    query_pids = {it.pid for it in ds.query if is_identity(ds, it)}
    gallery_pids = {it.pid for it in ds.gallery if is_identity(ds, it)}
    lost = sorted(query_pids - gallery_pids)
    if lost:
        problems.append(f"{len(lost)} query identities have no gallery image (e.g. {lost[0]:04d})")
    # MSMT17's and CUHK03's test identities are numbered apart from the training ones: equal numbers are
    # different people there.
    overlap = sorted(set(cams) & (query_pids | gallery_pids)) if ds.layout not in SEPARATE_TEST_IDS else []
    if overlap:
        problems.append(f"{len(overlap)} identities appear in both train and test (e.g. {overlap[0]:04d})")
    return problems


def _check_images(images: list, report: dict, sizes: dict) -> list[str]:
    """Every image decoded as the commands decode it: unreadable ones are problems; each one's (height, width)
    into ``sizes``, the most common sizes into ``report["image_sizes"]`` (any size is fine: keypoints are in
    each image's own pixels), the modes converted to RGB into ``report["converted_modes"]``."""
    from pcdms_aug.data.images import open_rgb

    problems = []
    notes = Counter()
    for it in images:
        try:
            with Image.open(it.path) as im:
                im.verify()
            # verify() reads no pixel data: a truncated JPEG passes it and fails only when decoded
            im, note = open_rgb(it.path)
            sizes[it.filename] = (im.height, im.width)
            if note:
                notes[note] += 1
        except Exception as e:  # noqa: BLE001 - any decoder failure is the same finding
            problems.append(f"unreadable image {it.path}: {e.__class__.__name__}: {e}")
    counts = Counter(sizes.values())
    common = sorted(counts.most_common(MOST_COMMON_SIZES))
    report["image_sizes"] = {f"{h}x{w}": n for (h, w), n in common}
    if len(counts) > len(common):
        report["image_sizes"]["other"] = sum(counts.values()) - sum(n for _, n in common)
    report["converted_modes"] = dict(sorted(notes.items()))
    return problems


def _check_annotations(ds, files: list[Path], report: dict, sizes: dict | None) -> list[str]:
    """The annotation CSVs against the images: repeated, orphan and missing rows, keypoints inside their image
    (when ``sizes`` were read); counts and pose coverage per split into ``report``."""
    problems = []
    report["annotation_files"] = [str(f) for f in files]
    rows: dict[str, np.ndarray] = {}
    names = {it.filename for it in ds.all_images()}
    for f in files:
        for name, (arr, line) in read_annotation_rows(f).items():
            if name in rows:
                problems.append(f"{name} is annotated in more than one file (last: {f})")
            if sizes is not None and name in sizes:
                check_in_image(name, arr, sizes[name], f, line)
            rows[name] = arr[:, 0] != MISSING
    matched = [n for n in rows if n in names]
    report["annotated_images"] = len(matched)
    report["unannotated_images"] = len(names) - len(matched)
    orphans = sorted(set(rows) - names)
    report["orphan_annotations"] = len(orphans)
    if orphans:
        problems.append(f"{len(orphans)} annotation rows name images not in the dataset (e.g. {orphans[0]})")
    if matched:
        vis = np.stack([rows[n] for n in matched])
        report["missing_joint_fraction"] = round(float(1.0 - vis.mean()), 4)
        report["pair_valid_images"] = int(vis[:, list(TORSO)].all(axis=1).sum())
    else:
        report["missing_joint_fraction"] = None
        if files:
            problems.append("no annotation row matches an image of the dataset")
    report["pose_coverage"] = {split: _coverage([rows.get(it.filename) for it in ds.splits[split]])
                               for split in SPLIT_NAMES}
    unannotated_train = sum(1 for it in ds.train if it.filename not in rows)
    if files and unannotated_train:
        problems.append(f"{unannotated_train} training images have no annotation row (they cannot be sources)")
    return problems


def _coverage(visible: list) -> dict:
    """Of a split's images: with a row that has at least one joint, without one (no row, or no joint), and with
    both shoulders and both hips (usable as a source)."""
    with_pose = sum(v is not None and bool(v.any()) for v in visible)
    torso = sum(v is not None and bool(v[list(TORSO)].all()) for v in visible)
    return {"images": len(visible), "with_pose": with_pose, "without_pose": len(visible) - with_pose,
            "with_torso": torso}


def format_report(r: dict) -> str:
    lines = [f"dataset: {r['root']} ({r['layout']})"]
    for split in SPLIT_NAMES:
        lines.append(f"  {split:8s} {r[f'{split}_images']:6d} images  {r[f'{split}_ids']:5d} identities")
    lines.append(f"  cameras  {', '.join(f'c{c}' for c in r['cameras'])}")
    lines.append(f"  junk (-1) {r['junk_images']}, distractors (0000) {r['distractor_images']}")
    if "image_sizes" in r:
        lines.append(f"  image sizes {r['image_sizes']}")
        lines += [f"  converted to RGB: {n} image(s) of mode {note}" for note, n in r["converted_modes"].items()]
    if r["annotation_files"]:
        lines.append("annotations: " + ", ".join(Path(f).name for f in r["annotation_files"]))
        lines.append(f"  annotated {r['annotated_images']}, unannotated {r['unannotated_images']}, "
                     f"orphan rows {r['orphan_annotations']}")
        for split, c in r["pose_coverage"].items():
            lines.append(f"  {split:8s} {c['with_pose']} of {c['images']} images with a pose, {c['without_pose']} "
                         f"without; {c['with_torso']} with shoulders and hips")
        if r["missing_joint_fraction"] is not None:
            lines.append(f"  missing joints {100 * r['missing_joint_fraction']:.1f}% of {NUM_JOINTS} per image; "
                         f"{r['pair_valid_images']} images valid for pairs (shoulders and hips)")
    else:
        lines.append("annotations: none given or found")
    lines.append("problems: none" if not r["problems"] else "problems:")
    lines += [f"  - {p}" for p in r["problems"]]
    return "\n".join(lines)


def configure(parser):
    parser.add_argument("root", help="a re-ID dataset folder (Market-1501, DukeMTMC-reID, MSMT17, CUHK03 or "
                                     "train/query/gallery/<identity>/ folders), or torchreid's root above it")
    parser.add_argument("--layout", choices=LAYOUTS + ("cuhk03-labeled",), default=None,
                        help="the dataset's layout (default: detected)")
    from pcdms_aug.utils.argtypes import add_annotations_argument

    add_annotations_argument(parser, "annotation CSV(s); default: (market-)annotation-*.csv beside the dataset folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-image-check", action="store_true", help="skip opening every image")


def run(args):
    report = inspect_dataset(args.root, args.annotations, check_images=not args.no_image_check, layout=args.layout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
