"""A stand-in for the generator's output: a folder of views of the training images plus its manifest.csv.

The views are noisy copies of the real training images (so they belong to the right identity), named as
Market-1501 images of the same pid under another camera, with the columns `pcdms-aug generate` writes.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def build_fake_generated(folder: Path, data_dir: Path, views_per_source: int = 1, seed: int = 0) -> Path:
    """``views_per_source`` views per real training image (cameras cycled); every other row is marked not kept."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    sources = sorted((data_dir / "bounding_box_train").glob("*.jpg"))
    for i, src in enumerate(sources):
        pid = int(src.name.split("_")[0])
        for v in range(views_per_source):
            cam = 1 + (i + v) % 6
            name = f"{pid:04d}_c{cam}s9_{i:06d}_{v:02d}.jpg"
            img = np.asarray(Image.open(src).convert("RGB")).astype(np.float32)
            img = img + rng.normal(0, 8, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
            rows.append({"file": name, "pid": f"{pid:04d}", "camid": cam, "source": src.name,
                         "kept": int(len(rows) % 2 == 0), "score": f"{rng.uniform():.3f}"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "pid", "camid", "source", "kept", "score"])
        w.writeheader()
        w.writerows(rows)
    return folder
