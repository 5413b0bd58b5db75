"""Pictures for people: pose renderings, overlays and labelled contact sheets (`pcdms-aug render-pose`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pcdms_aug.data.images import rgb
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_save_image
from pcdms_aug.data.pose import Pose, read_annotations, render_pose


def _as_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return rgb(img)[0]
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def contact_sheet(rows: Sequence[Sequence], col_labels: Sequence[str] | None = None,
                  row_labels: Sequence[str] | None = None, cell: tuple[int, int] | None = None,
                  pad: int = 2) -> Image.Image:
    """A grid of images (PIL, uint8 arrays or None for an empty cell) with optional labels.

    ``cell`` = (height, width) of every cell; default: the first image's size.
    """
    first = next((c for r in rows for c in r if c is not None), None)
    if first is None:
        raise ValueError("contact sheet needs at least one image")
    ch, cw = cell or (_as_pil(first).height, _as_pil(first).width)
    font = ImageFont.load_default()
    top = 12 if col_labels else 0
    left = max((len(s) for s in row_labels), default=0) * 6 + 4 if row_labels else 0
    ncols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (left + ncols * (cw + pad) + pad, top + len(rows) * (ch + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (cw + pad), 0), str(label)[: max(1, cw // 6)], fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = top + pad + i * (ch + pad)
        if row_labels:
            draw.text((2, y + ch // 2 - 5), str(row_labels[i]), fill=(0, 0, 0), font=font)
        for j, img in enumerate(row):
            if img is None:
                continue
            tile = _as_pil(img)
            if tile.size != (cw, ch):
                tile = tile.resize((cw, ch), Image.BICUBIC)
            sheet.paste(tile, (left + pad + j * (cw + pad), y))
    return sheet


def pair_sheet(pairs: Sequence[tuple[str, str]], dataset, poses, columns: dict[str, str | Path]) -> Image.Image:
    """One row per (from, to) pair: source, target pose, one column per ``{label: folder of
    <from>_to_<to>.png}`` (what ``synthesize-pairs`` writes), then the ground truth."""
    from pcdms_aug.data.market import load_image
    from pcdms_aug.data.pairs import pair_image_name

    rows = [[load_image(dataset.path_of(f)), pose_tile(poses[t])] +
            [load_image(Path(d) / pair_image_name(f, t)) for d in columns.values()] + [load_image(dataset.path_of(t))]
            for f, t in pairs]
    return contact_sheet(rows, col_labels=["source", "pose", *columns, "truth"])


def views_sheet(plan: Sequence, dataset, folder: str | Path, identities: int = 8) -> Image.Image | None:
    """One row per identity (its first source in plan order, up to ``identities``): the source, then each of its
    views beside the target pose it was drawn for (``generate``'s plan rows); None when no view exists yet."""
    from pcdms_aug.data.market import load_image

    by_source: dict[str, list] = {}
    pids: dict[int, str] = {}
    for v in plan:
        if (Path(folder) / v.file).is_file():
            by_source.setdefault(v.source, []).append(v)
            pids.setdefault(v.pid, v.source)
    chosen = list(pids.values())[:identities]
    if not chosen:
        return None
    rows = []
    for src in chosen:
        row = [load_image(dataset.path_of(src))]
        for v in by_source[src]:
            row += [pose_tile(v.target), load_image(Path(folder) / v.file)]
        rows.append(row)
    k = max(len(by_source[s]) for s in chosen)
    labels = ["source"] + [x for i in range(k) for x in ("pose", f"view {i + 1}")]
    return contact_sheet(rows, col_labels=labels)


def pose_tile(pose: Pose, size: tuple[int, int] | None = None, image: Image.Image | None = None) -> np.ndarray:
    """A pose drawn on black, or over ``image`` (resized to ``size``) when one is given."""
    size = size or (pose.size if image is None else (image.height, image.width))
    canvas = None if image is None else np.asarray(rgb(image)[0].resize((size[1], size[0])))
    return render_pose(pose, size, canvas=canvas)


def configure(parser):
    from pcdms_aug.utils.argtypes import int_in, items_int, size_hw

    parser.add_argument("--annotations", required=True, help="annotation CSV (name:keypoints_y:keypoints_x)")
    parser.add_argument("--names", nargs="+", action="extend", default=None,
                        help="image names to draw (default: the first --max)")
    parser.add_argument("--max", type=items_int, default=16, help="how many rows of the CSV when --names is absent")
    parser.add_argument("--dataset", default=None,
                        help="re-ID dataset folder (any layout): draw each skeleton over its image, beside the image "
                             "(needed for crops that are not 128x64: keypoints are in each image's pixels)")
    parser.add_argument("--size", type=size_hw(2048), default=(256, 128), help="HxW of each tile (default 256x128)")
    parser.add_argument("--cols", type=int_in(1, 256), default=8, help="poses per row of the contact sheet")
    parser.add_argument("--out", required=True, help="output PNG")


# A contact sheet larger than this is refused before it is allocated (a 20000-pose sheet is a mistake).
MAX_SHEET_PIXELS = 200_000_000


def run(args):
    from pcdms_aug.data.layouts import open_dataset
    from pcdms_aug.data.market import image_sizes, load_image
    from pcdms_aug.utils.paths import check_out_file, plain_name, written_by

    size = args.size
    out = check_out_file(args.out, inputs=[("the annotations", args.annotations), ("the dataset", args.dataset)],
                         command="render-pose", own=written_by("render-pose"))
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise DataError("--out must end in .png or .jpg", out)
    ds = open_dataset(args.dataset) if args.dataset else None
    # Keypoints are in each image's own pixels; without the images, in Market-1501's 128x64.
    poses = read_annotations(args.annotations, image_sizes(ds.all_images()) if ds is not None else (128, 64))
    names = [plain_name(n, what="--names") for n in args.names] if args.names else list(poses)[: args.max]
    tiles_n = len(names) * (2 if args.dataset else 1)
    if tiles_n * (size[0] + 2) * (size[1] + 2) > MAX_SHEET_PIXELS:
        raise DataError(f"{tiles_n} tiles of {size[0]}x{size[1]} exceed {MAX_SHEET_PIXELS // 10**6} megapixels: "
                        "draw fewer poses (--max, --names) or smaller tiles (--size)")
    missing = [n for n in names if n not in poses]
    if missing:
        raise DataError(f"no row for {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                        args.annotations)
    tiles, labels = [], []
    for n in names:
        if ds is not None:
            image = load_image(ds.path_of(n))
            tiles += [np.asarray(image.resize((size[1], size[0]), Image.BICUBIC)),
                      pose_tile(poses[n], size, image)]
            labels += [n[:12], "overlay"]
        else:
            tiles.append(pose_tile(poses[n], size))
            labels.append(n[:12])
    cols = max(2, args.cols - (args.cols % 2)) if ds is not None else args.cols  # image and overlay side by side
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    row_labels = None
    sheet = contact_sheet(rows, cell=size, row_labels=row_labels)
    # Column labels differ per row here, so names go under each tile instead.
    draw = ImageDraw.Draw(sheet)
    for k, label in enumerate(labels):
        i, j = divmod(k, cols)
        draw.text((2 + j * (size[1] + 2) + 2, 2 + i * (size[0] + 2) + size[0] - 12), label, fill=(255, 255, 255))
    atomic_save_image(out, sheet, written_by="render-pose")
    print(f"wrote {out} ({len(names)} poses, {sheet.width}x{sheet.height})")
    return 0
