"""How much identity do generated views carry? A judge re-ID model trained on a subset's real images assigns each
view to the nearest identity centroid (mean feature of that identity's subset images); the same is done for the
real training images outside the subset (new real views of the same people: what a perfect generator would add).

    python experiments/view_identity.py DATASET SPLIT.json OUT_DIR NAME=GENERATED_DIR [NAME=...]

Prints, per folder, the top-1 identity accuracy and the mean cosine to the own centroid, beside the held-out real
images. The judge (osnet_x0_25, 15 epochs, softmax, seed 0) is trained once into OUT_DIR.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pcdms_aug.generation.identity_filter import ConsistencyScorer, FilterConfig
from pcdms_aug.data.market import MarketDataset
from pcdms_aug.data.splits import load_split
from reid.filter_model import train_filter_model

SIZE = (128, 64)


def identity_accuracy(scorer: ConsistencyScorer, centroids: dict[int, np.ndarray], images, pids) -> tuple:
    ids = sorted(centroids)
    table = np.stack([centroids[i] for i in ids])
    feats = scorer.embed(images)
    sims = feats @ table.T
    own = np.array([ids.index(p) for p in pids])
    top1 = float(np.mean(sims.argmax(1) == own))
    return top1, float(np.mean(sims[np.arange(len(own)), own])), len(own)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__)
        return 2
    dataset, split, out = MarketDataset(argv[0]), load_split(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    judge = out / "judge.pth.tar"
    if not judge.is_file():
        train_filter_model(dataset.root, judge, split=argv[1], epochs=15, size=SIZE, seed=0)
    scorer = ConsistencyScorer(FilterConfig(model=str(judge), size=SIZE))
    kept = set(split.files)
    inside = [it for it in dataset.train if it.filename in kept]
    held_out = [it for it in dataset.train if it.filename not in kept and it.name.pid > 0]
    centroids = {}
    for pid in sorted({it.name.pid for it in inside}):
        f = scorer.embed([Image.open(it.path) for it in inside if it.name.pid == pid]).mean(0)
        centroids[pid] = f / np.linalg.norm(f)
    held_out = [it for it in held_out if it.name.pid in centroids]
    rows = [("real images outside the subset", *identity_accuracy(
        scorer, centroids, [Image.open(it.path) for it in held_out], [it.name.pid for it in held_out]))]
    for arg in argv[3:]:
        name, _, folder = arg.partition("=")
        views = list(csv.DictReader(open(Path(folder) / "manifest.csv", newline="")))
        rows.append((name, *identity_accuracy(scorer, centroids, [Image.open(Path(folder) / v["file"]) for v in views],
                                              [int(v["pid"]) for v in views])))
    print("| images | top-1 identity (of %d) | mean cosine to own centroid | n |" % len(centroids))
    print("|---|---|---|---|")
    for name, top1, cos, n in rows:
        print(f"| {name} | {100 * top1:.1f} % | {cos:.3f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
