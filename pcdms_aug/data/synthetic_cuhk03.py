"""`synth-market OUT --layout cuhk03`: the synthetic people as CUHK03 is downloaded, for torchreid's CUHK03 class.

``OUT/cuhk03_release/cuhk-03.mat`` (MATLAB v7.3, i.e. HDF5: ``detected`` and ``labeled`` hold five camera pairs,
each a persons x 10 grid of images, views 1 and 2 in columns 1-5 and 6-10; ``testsets`` the 20 classic test
splits as [pair, person] rows) and the new protocol's ``cuhk03_new_protocol_config_{detected,labeled}.mat``
(``filelist``, ``labels``, ``train_idx``, ``query_idx``, ``gallery_idx``, ``camId``; the synthetic training
identities are its training identities, one query per test identity and view). Labelled and detected boxes are
the same drawing here. As with the real set, torchreid's ``CUHK03(root=<parent of OUT>)`` extracts the images
(``images_detected/1_001_1_01.png``...) and writes its split files on its first run; the annotation CSVs are
keyed by those names, with keypoints in the crop's pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pcdms_aug.data import synthetic as syn
from pcdms_aug.data.pose import write_annotations
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_path, atomic_write_text

PAIRS, IMAGES_PER_VIEW, CLASSIC_SPLITS = 5, 5, 20
ANNOTATIONS = {split: f"annotation-{split}.csv" for split in ("train", "query", "gallery")}


def _persons(items: list[syn.Item]) -> list[dict]:
    """Each identity seen by its first two cameras: up to five images per view, in plan order."""
    by_pid: dict[int, list[syn.Item]] = {}
    for it in items:
        if it.kind == "person":
            by_pid.setdefault(it.pid, []).append(it)
    persons = []
    for i, pid in enumerate(sorted(by_pid)):
        cams = sorted({it.cam for it in by_pid[pid]})[:2]
        views = [[it for it in by_pid[pid] if it.cam == cam][:IMAGES_PER_VIEW] for cam in cams]
        persons.append({"pid": pid, "train": by_pid[pid][0].split == "train", "pair": i % PAIRS + 1,
                        "index": i // PAIRS + 1, "views": views})
    return persons


def _name(person: dict, view: int, k: int) -> str:
    """torchreid's name of an extracted image: pair, person in the pair, view, image (1..10)."""
    return f"{person['pair']}_{person['index']:03d}_{view + 1}_{view * IMAGES_PER_VIEW + k + 1:02d}.png"


def _write_raw_mat(path: Path, grids: list[list[list[np.ndarray | None]]], testsets: list[np.ndarray]) -> None:
    try:
        import h5py
    except ImportError:
        raise DataError("writing CUHK03's cuhk-03.mat (MATLAB v7.3) needs h5py, as torchreid's CUHK03 reading "
                        "it does: pip install h5py", "--layout") from None
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        refs = f.create_group("#refs#")
        count = 0

        def ref_of(array: np.ndarray):
            nonlocal count
            count += 1
            return refs.create_dataset(f"r{count}", data=array).ref

        empty = np.zeros(2, dtype=np.uint64)  # how MATLAB stores an empty cell
        pairs = []
        for grid in grids:  # one persons x 10 grid per camera pair, stored transposed as MATLAB does
            cells = np.empty((10, len(grid)), dtype=h5py.ref_dtype)
            for p, row in enumerate(grid):
                for c, img in enumerate(row):
                    cells[c, p] = ref_of(empty if img is None else np.ascontiguousarray(img.transpose(2, 1, 0)))
            pairs.append(ref_of(cells))
        for key in ("detected", "labeled"):
            f.create_dataset(key, data=np.array([pairs], dtype=h5py.ref_dtype))
        f.create_dataset("testsets", data=np.array([[ref_of(t.T.astype(np.float64)) for t in testsets]],
                                                   dtype=h5py.ref_dtype))


def build_cuhk03(out: str | Path, crop: tuple[int, int], train_ids: int, test_ids: int, seed: int,
                 progress: bool = True) -> Path:
    from PIL import Image
    from scipy.io import savemat
    from tqdm import tqdm

    if train_ids + test_ids > PAIRS * 999:
        raise DataError("too many identities for CUHK03's names", "--train-ids")
    out = Path(out)
    settings = {**syn._settings(train_ids, test_ids, seed), "layout": "cuhk03", "crop": list(crop)}
    if syn._check(out, settings):
        return out
    (out / "cuhk03_release").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / syn.META, json.dumps({"generator": "pcdms-aug synth-market", "settings": settings,
                                                  "complete": False}, indent=2) + "\n")
    persons = _persons(syn.plan(train_ids, test_ids, seed))
    world = syn._World(seed)
    grids: list[list] = [[] for _ in range(PAIRS)]
    poses: dict[str, dict] = {split: {} for split in ANNOTATIONS}
    filelist, labels, cams, train_idx, query_idx, gallery_idx = [], [], [], [], [], []
    bar = tqdm(total=sum(len(v) for p in persons for v in p["views"]), desc="synth-market (cuhk03)", unit="img",
               disable=not progress, dynamic_ncols=True)
    for number, person in enumerate(persons, start=1):
        row: list = [None] * (2 * IMAGES_PER_VIEW)
        for view, images in enumerate(person["views"]):
            for k, it in enumerate(images):
                pose, img = syn._compose(it, world, draw=True)
                image = Image.fromarray(img)
                if tuple(crop) != (img.shape[0], img.shape[1]):
                    image = image.resize((crop[1], crop[0]), Image.BICUBIC)
                row[view * IMAGES_PER_VIEW + k] = np.asarray(image)
                name = _name(person, view, k)
                filelist.append(name)
                labels.append(number)
                cams.append(view + 1)
                index = len(filelist)  # 1-based, as MATLAB's
                split = "train" if person["train"] else ("query" if k == 0 else "gallery")
                {"train": train_idx, "query": query_idx, "gallery": gallery_idx}[split].append(index)
                poses[split][name] = pose.scaled(crop)
                bar.update()
        grids[person["pair"] - 1].append(row)
    bar.close()
    rng = np.random.default_rng(seed)
    testsets = []
    for _ in range(CLASSIC_SPLITS):
        chosen = rng.choice(len(persons), max(1, len(persons) // 2), replace=False)
        testsets.append(np.array([[persons[i]["pair"], persons[i]["index"]] for i in sorted(chosen)]))
    _write_raw_mat(out / "cuhk03_release" / "cuhk-03.mat", grids, testsets)
    config = {"filelist": np.array([[n] for n in filelist], dtype=object), "labels": np.array(labels)[:, None],
              "camId": np.array(cams)[:, None], "train_idx": np.array(train_idx)[:, None],
              "query_idx": np.array(query_idx)[:, None], "gallery_idx": np.array(gallery_idx)[:, None]}
    for kind in ("detected", "labeled"):
        with atomic_path(out / f"cuhk03_new_protocol_config_{kind}.mat") as tmp:
            savemat(str(tmp), config, appendmat=False)
    for split, name in ANNOTATIONS.items():
        write_annotations(out / name, dict(sorted(poses[split].items())))
    counts = {"train_images": len(train_idx), "query_images": len(query_idx), "gallery_images": len(gallery_idx),
              "train_ids": train_ids, "test_ids": test_ids, "test_pairs": 0}
    meta = {"generator": "pcdms-aug synth-market", "settings": settings, "complete": True, "counts": counts,
            "image_size": list(crop), "annotations": dict(ANNOTATIONS),
            "note": "run torchreid's CUHK03 once (root = this folder's parent) to extract images_detected/"}
    atomic_write_text(out / syn.META, json.dumps(meta, indent=2) + "\n")
    return out
