"""`pcdms-aug synth-market OUT --layout L --crop HxW`: the synthetic people in another dataset's layout and size.

The same plan, people and cameras as the synthetic Market-1501 (:mod:`pcdms_aug.data.synthetic`), written the
way torchreid's own class for ``L`` reads it: ``OUT`` is the folder torchreid looks for under its ``root``
(name it ``market1501``, ``dukemtmc-reid``, ``msmt17`` or ``cuhk03`` and pass its parent as ``root``).

- ``dukemtmcreid``: ``DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}/0001_c2_f0046182.jpg``
- ``msmt17``: ``MSMT17_V1/{train,test}/<pid>/<pid>_<index>_<camera>_<day><time>_<frame>_<box>.jpg`` and the four
  ``list_*.txt``; training pids 0..N-1 and test pids 0..M-1, as MSMT17 numbers them (torchreid does not relabel)
- ``cuhk03``: the raw ``.mat`` files as downloaded (:mod:`pcdms_aug.data.synthetic_cuhk03`)

Junk and distractor crops are Market-1501's alone. Every crop is drawn at 128x64 and resized to ``--crop``; the
annotation CSVs (``annotation-{train,query,gallery}.csv``) hold the keypoints in the crop's own pixels. The
Market-1501 layout at 128x64 is :func:`~pcdms_aug.data.synthetic.build_synthetic_market` itself, byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

from pcdms_aug.data import posegen as pg
from pcdms_aug.data import synthetic as syn
from pcdms_aug.data.market import make_pairs
from pcdms_aug.data.pose import write_annotations, write_pairs
from pcdms_aug.utils.argtypes import size_hw
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_save_image, atomic_write_text

LAYOUTS = ("market1501", "dukemtmcreid", "msmt17", "cuhk03")
ANNOTATIONS = {split: f"annotation-{split}.csv" for split in ("train", "query", "gallery")}
PAIRS = "pairs-test.csv"
NATIVE = (pg.H, pg.W)
_MSMT17_TIMES = ("morning", "noon", "afternoon")


def _market_name(it: syn.Item) -> str:
    return f"{syn.SPLITS[it.split]}/{it.name}"


def _duke_names(items: list[syn.Item]) -> dict[int, str]:
    out = {}
    for it in items:
        frame = int(it.name.split("_")[2])
        out[it.index] = f"DukeMTMC-reID/{syn.SPLITS[it.split]}/{it.pid:04d}_c{it.cam}_f{frame:07d}.jpg"
    return out


def _msmt17_names(items: list[syn.Item]) -> tuple[dict[int, str], dict[str, list[str]]]:
    """Relative paths by item, and the lines of each list file."""
    train = sorted({it.pid for it in items if it.split == "train"})
    test = sorted({it.pid for it in items if it.split != "train"})
    number = {**{p: i for i, p in enumerate(train)}, **{("t", p): i for i, p in enumerate(test)}}
    out, lists, count = {}, {"train": [], "val": [], "query": [], "gallery": []}, {}
    for it in items:
        pid = number[it.pid] if it.split == "train" else number[("t", it.pid)]
        k = count[(it.split == "train", pid)] = count.get((it.split == "train", pid), -1) + 1
        _, seq_part, frame, box = it.name.rsplit(".", 1)[0].split("_")
        seq = int(seq_part.split("s")[1])
        when = f"03{10 + (seq - 1) // 3:02d}{_MSMT17_TIMES[(seq - 1) % 3]}"
        rel = f"{pid:04d}/{pid:04d}_{k:03d}_{it.cam:02d}_{when}_{int(frame) % 10000:04d}_{int(box) - 1}.jpg"
        folder = "train" if it.split == "train" else "test"
        out[it.index] = f"MSMT17_V1/{folder}/{rel}"
        # MSMT17 holds out some training images as list_val (torchreid trains on list_train only)
        listed = "val" if it.split == "train" and pid % 10 == 9 and k == 0 else it.split
        lists[listed].append(f"{rel} {pid}")
    return out, lists


def build_layout(out: str | Path, layout: str, crop: tuple[int, int] = NATIVE,
                 train_ids: int = syn.DEFAULT_TRAIN_IDS, test_ids: int = syn.DEFAULT_TEST_IDS,
                 seed: int = syn.DEFAULT_SEED, progress: bool = True) -> Path:
    """Build the synthetic set in ``layout`` at ``crop`` = (height, width) into ``out``; resumable like
    :func:`~pcdms_aug.data.synthetic.build_synthetic_market`."""
    from PIL import Image
    from tqdm import tqdm

    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}", "--layout")
    crop = (int(crop[0]), int(crop[1]))
    if layout == "market1501" and crop == NATIVE:
        return syn.build_synthetic_market(out, train_ids, test_ids, seed, progress)
    if layout == "cuhk03":
        from pcdms_aug.data.synthetic_cuhk03 import build_cuhk03
        return build_cuhk03(out, crop, train_ids, test_ids, seed, progress)
    if train_ids + test_ids > 1500:
        raise DataError(f"train + test = {train_ids + test_ids} identities is too many (at most 1500)", "--train-ids")
    out = Path(out)
    settings = {**syn._settings(train_ids, test_ids, seed), "layout": layout, "crop": list(crop)}
    if syn._check(out, settings):
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / syn.META, json.dumps({"generator": "pcdms-aug synth-market", "settings": settings,
                                                  "complete": False}, indent=2) + "\n")
    items = syn.plan(train_ids, test_ids, seed)
    lists: dict[str, list[str]] = {}
    if layout == "market1501":
        names = {it.index: _market_name(it) for it in items}
    else:
        items = [it for it in items if it.kind == "person"]
        names = _duke_names(items) if layout == "dukemtmcreid" else None
        if layout == "msmt17":
            names, lists = _msmt17_names(items)
    for folder in ({"market1501": ".", "dukemtmcreid": "DukeMTMC-reID"}.get(layout),):
        for split in syn.SPLITS.values():  # an empty split is still a folder torchreid requires
            if folder:
                (out / folder / split).mkdir(parents=True, exist_ok=True)
    world = syn._World(seed)
    poses: dict[str, dict] = {split: {} for split in ANNOTATIONS}
    for it in tqdm(items, desc=f"synth-market ({layout})", unit="img", disable=not progress, dynamic_ncols=True):
        path = out / names[it.index]
        pose, img = syn._compose(it, world, draw=not path.is_file())
        poses[it.split][path.name] = pose.scaled(crop)
        if img is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(img)
            if crop != NATIVE:
                image = image.resize((crop[1], crop[0]), Image.BICUBIC)
            atomic_save_image(path, image, quality=syn.JPEG_QUALITY)
    for split, lines in lists.items():
        atomic_write_text(out / "MSMT17_V1" / f"list_{split}.txt", "".join(f"{line}\n" for line in lines))
    for split, name in ANNOTATIONS.items():
        write_annotations(out / name, dict(sorted(poses[split].items())))
    pairs = make_pairs({**poses["query"], **poses["gallery"]}, max_pairs=syn.PAIRS_PER_TEST_ID * test_ids, seed=seed)
    write_pairs(out / PAIRS, pairs)
    counts = {"train_images": len(poses["train"]), "query_images": len(poses["query"]),
              "gallery_images": len(poses["gallery"]), "train_ids": train_ids, "test_ids": test_ids,
              "test_pairs": len(pairs)}
    meta = {"generator": "pcdms-aug synth-market", "settings": settings, "complete": True, "counts": counts,
            "image_size": list(crop), "jpeg_quality": syn.JPEG_QUALITY,
            "annotations": {**ANNOTATIONS, "pairs": PAIRS}}
    atomic_write_text(out / syn.META, json.dumps(meta, indent=2) + "\n")
    return out


def configure(parser):
    syn.configure(parser)
    parser.add_argument("--layout", choices=LAYOUTS, default="market1501",  # cuhk03: the raw .mat files
                        help="dataset layout and file names (default market1501); OUT is the folder torchreid's "
                             "class looks for under its root (market1501, dukemtmc-reid, msmt17, cuhk03)")
    parser.add_argument("--crop", type=size_hw(1024), default=NATIVE, metavar="HxW",
                        help="crop size in pixels (default 128x64); keypoints are written in the crop's pixels")


def run(args):
    from pcdms_aug.utils.paths import check_not_special

    check_not_special(args.out, "OUT")
    if args.layout == "market1501" and tuple(args.crop) == NATIVE:
        return syn.run(args)
    if args.compare_poses:
        raise DataError("--compare-poses is for the Market-1501 layout at 128x64", "--compare-poses")
    out = build_layout(args.out, args.layout, args.crop, args.train_ids, args.test_ids, args.seed,
                       progress=not args.quiet)
    c = json.loads((out / syn.META).read_text(encoding="utf-8"))["counts"]
    print(f"[synth-market] {out} ({args.layout}, {args.crop[0]}x{args.crop[1]}): {c['train_images']} train images "
          f"of {c['train_ids']} ids, {c['query_images']} query and {c['gallery_images']} gallery images of "
          f"{c['test_ids']} ids, {c['test_pairs']} test pairs")
    return 0
