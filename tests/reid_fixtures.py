"""A small Market-1501-layout set of coloured JPEGs plus a generated folder with a manifest, for the reid tests.

Each identity has its own two colours (top and bottom half) with per-image noise and camera tint, so that one
epoch of a tiny model already ranks better than chance. Layout is torchreid's: <root>/market1501/
Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}, with junk (-1) and distractor (0000) images.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (64, 32)  # (H, W); torchreid resizes anyway


def _person(rng, colours, cam) -> Image.Image:
    h, w = SIZE
    img = np.empty((h, w, 3), np.float32)
    img[: h // 2] = colours[0]
    img[h // 2:] = colours[1]
    img += rng.normal(0, 18, img.shape) + cam * 6
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def build_fake_market(root: Path, n_train_ids: int = 8, per_id: int = 6, n_test_ids: int = 6, seed: int = 0) -> Path:
    """Write the dataset under ``root``; returns the folder holding the three splits."""
    rng = np.random.default_rng(seed)
    base = root / "market1501" / "Market-1501-v15.09.15"
    dirs = {k: base / k for k in ("bounding_box_train", "query", "bounding_box_test")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    colours = {pid: rng.uniform(0, 255, (2, 3)) for pid in range(1, n_train_ids + n_test_ids + 1)}
    frame = 0

    def save(folder, pid, cam, k):
        nonlocal frame
        frame += 1
        prefix = "-1" if pid == -1 else f"{pid:04d}"
        c = colours.get(pid, rng.uniform(0, 255, (2, 3)))
        _person(rng, c, cam).save(dirs[folder] / f"{prefix}_c{cam}s1_{frame:06d}_{k:02d}.jpg", quality=90)

    for pid in range(1, n_train_ids + 1):
        for k in range(per_id):
            save("bounding_box_train", pid, 1 + k % 3, k)
    for pid in range(n_train_ids + 1, n_train_ids + n_test_ids + 1):
        for cam in (1, 2):
            save("query", pid, cam, 0)
        for k in range(4):
            save("bounding_box_test", pid, 1 + k % 3, k)
    for k in range(3):
        save("bounding_box_test", 0, 1 + k % 3, k)  # distractors
        save("bounding_box_test", -1, 1 + k % 3, k)  # junk
    return base


def build_fake_generated(folder: Path, data_dir: Path, views_per_source: int = 1, seed: int = 0) -> Path:
    """One generated view per real training image (cameras cycled), every other one marked not kept."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    sources = sorted((data_dir / "bounding_box_train").glob("*.jpg"))
    for i, src in enumerate(sources):
        pid = int(src.name.split("_")[0])
        for v in range(views_per_source):
            cam = 1 + (i + v) % 6
            name = f"{pid:04d}_c{cam}s9_{i:06d}_{v:02d}.jpg"
            img = np.asarray(Image.open(src)).astype(np.float32) + rng.normal(0, 8, (*SIZE, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
            rows.append({"file": name, "pid": f"{pid:04d}", "camid": cam, "source": src.name,
                         "kept": int(len(rows) % 2 == 0), "score": f"{rng.uniform():.3f}"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "pid", "camid", "source", "kept", "score"])
        w.writeheader()
        w.writerows(rows)
    return folder
