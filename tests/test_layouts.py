"""Datasets in torchreid's layouts: drawn by synth-market, read by torchreid's own classes, by our reader, and
with generated views through reid.with_generated_views."""
import csv
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from pcdms_aug.data.layouts import open_dataset
from pcdms_aug.data.pose import read_annotations
from pcdms_aug.data.splits import make_split, save_split
from pcdms_aug.data.synthetic_layouts import ANNOTATIONS, NATIVE, build_layout
from pcdms_aug.utils.errors import DataError
from reid import datasets as reid_datasets
import torchreid  # after reid.datasets, which imports it with its Cython warning silenced

CASES = {"dukemtmcreid": ("dukemtmc-reid", (160, 72)), "msmt17": ("msmt17", (192, 80))}


def torchreid_own(name, root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchreid.data.datasets.init_image_dataset(name, root=str(root), mode="train", verbose=False)


def as_set(items):
    return {(str(p), pid, camid) for p, pid, camid, *_ in items}


@pytest.mark.parametrize("layout", CASES)
def test_torchreid_reads_the_drawn_layout_as_our_reader_does(drawn_layouts, layout):
    folder, crop = CASES[layout]
    theirs = torchreid_own(layout, drawn_layouts)
    ours = open_dataset(drawn_layouts, layout)
    assert ours.layout == layout and open_dataset(drawn_layouts / folder).layout == layout  # detected, too
    if layout == "msmt17":  # the version folder itself works too
        assert len(open_dataset(drawn_layouts / folder / "MSMT17_V1").train) == len(ours.train)
    assert as_set(theirs.query) == {(str(it.path), it.pid, it.camid) for it in ours.query}
    assert as_set(theirs.gallery) == {(str(it.path), it.pid, it.camid) for it in ours.gallery}
    assert {(p, c) for p, _, c in as_set(theirs.train)} == {(str(it.path), it.camid) for it in ours.train}
    pairs = {(label, it.pid) for (p, label, _), it in zip(sorted(as_set(theirs.train)), sorted(ours.train,
                                                                                           key=lambda i: str(i.path)))}
    assert len(pairs) == len({label for label, _ in pairs}) == theirs.num_train_pids == 4  # a bijection of ids
    # every query has a true match under another camera (torchreid's ranking needs one)
    gallery = {(pid, camid) for _, pid, camid in as_set(theirs.gallery)}
    assert all(any(g_pid == pid and g_cam != camid for g_pid, g_cam in gallery) for _, pid, camid in
               as_set(theirs.query))
    for it in list(ours.all_images())[::7]:
        assert Image.open(it.path).size == (crop[1], crop[0])
    poses = {split: read_annotations(drawn_layouts / folder / name, crop) for split, name in ANNOTATIONS.items()}
    for split in ("train", "query", "gallery"):
        assert set(poses[split]) == {it.filename for it in ours.splits[split]}
    xy = [p.xy[p.visible] for p in poses["train"].values()]
    assert max(float(a[:, 1].max()) for a in xy if len(a)) > NATIVE[0]  # keypoints in the crop's own pixels


def test_market_layout_at_its_own_size_is_the_market_build(synth_market):
    # the same settings as the session's Market build: the finished folder is recognised, nothing rewritten
    from tests.conftest import SYNTH_SETTINGS
    before = {p: p.stat().st_mtime_ns for p in synth_market.rglob("*")}
    assert build_layout(synth_market, "market1501", NATIVE, progress=False, **SYNTH_SETTINGS) == synth_market
    assert {p: p.stat().st_mtime_ns for p in synth_market.rglob("*")} == before


def fake_views(folder: Path, dataset, per_source: int = 1) -> Path:
    """Copies of the training images named and listed as `pcdms-aug generate` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, it in enumerate(dataset.train):
        for v in range(per_source):
            name = f"{it.pid:04d}_c{it.camid + 1}s9_{i:06d}_{v:02d}.jpg"
            shutil.copyfile(it.path, folder / name)
            rows.append({"file": name, "pid": it.pid, "camid": it.camid + 1, "source": it.filename, "kept": 1})
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.mark.parametrize("layout", CASES)
def test_generated_views_join_torchreid_own_dataset(drawn_layouts, layout, tmp_path):
    ours = open_dataset(drawn_layouts, layout)
    gen = fake_views(tmp_path / "gen", ours, per_source=2)
    split = save_split(tmp_path / "split.json", make_split(torchreid_own(layout, drawn_layouts).train, 0.5, 0))
    name = reid_datasets.with_generated_views(layout, gen, split_file=split)
    ds = torchreid_own(name, drawn_layouts)
    own = torchreid_own(layout, drawn_layouts)
    assert as_set(ds.query) == as_set(own.query) and as_set(ds.gallery) == as_set(own.gallery)
    real = {Path(p).name: (label, camid) for p, label, camid, *_ in ds.train if p not in ds.generated_paths}
    assert sorted(real) == sorted(load(split)) and ds.num_train_pids == 4
    by_file = {r["file"]: r for r in csv.DictReader(open(gen / "manifest.csv"))}
    assert ds.num_generated == 2 * len(real)
    for p, label, camid, *_ in ds.train:
        if p in ds.generated_paths:
            assert (label, camid) == real[by_file[Path(p).name]["source"]]  # its source's label and camera
    dm = torchreid.data.ImageDataManager(root=str(drawn_layouts), sources=name, height=32, width=16,
                                         batch_size_train=4, batch_size_test=8, workers=0, use_gpu=False)
    assert dm.num_train_pids == 4 and len(dm.test_loader[name]["query"].dataset) == len(own.query)


def load(split):
    from pcdms_aug.data.splits import load_split
    return load_split(split).files


def test_plain_folder_of_crops(drawn_layouts, tmp_path):
    """train/query/gallery with one folder per identity: our reader and the registered pcdms_layout."""
    duke = open_dataset(drawn_layouts, "dukemtmcreid")
    crops = tmp_path / "crops"
    for it in duke.all_images():
        person = crops / it.split / f"person{it.pid}"
        person.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.path, person / it.filename.split("_", 1)[1])  # no identity nor camera in the name
    ours = open_dataset(crops)
    assert ours.layout == "folder" and len(ours.train) == len(duke.train)
    assert {it.camid for it in ours.query} == {0} and {it.camid for it in ours.gallery} == {1}
    ds = torchreid_own(reid_datasets.with_generated_views("pcdms_layout"), crops)
    assert ds.num_train_pids == 4 and len(ds.query) == len(duke.query)


def test_bad_layouts_are_refused_with_the_file(drawn_layouts, tmp_path):
    with pytest.raises(DataError, match="no re-ID dataset found"):
        open_dataset(tmp_path)
    msmt = tmp_path / "msmt17"
    shutil.copytree(drawn_layouts / "msmt17", msmt)
    lst = msmt / "MSMT17_V1" / "list_query.txt"
    lst.write_text(lst.read_text() + "0001/missing_000_01_x_0001_0.jpg 1\n")
    with pytest.raises(DataError, match="listed but not found") as e:
        open_dataset(msmt)
    assert str(e.value).startswith(f"{lst}:")
    with pytest.raises(DataError, match="unknown layout"):
        open_dataset(msmt, "viper")


def test_cuhk03_as_downloaded_is_extracted_by_torchreid_and_read_by_us(tmp_path):
    """Raw .mat files only, as CUHK03 is downloaded: torchreid's CUHK03 extracts the images and writes its split
    files on its first run; the reader then agrees with it on the new protocol (detected and labelled)."""
    out = build_layout(tmp_path / "cuhk03", "cuhk03", (160, 64), train_ids=3, test_ids=2, seed=0, progress=False)
    assert not (out / "images_detected").exists()
    with pytest.raises(DataError, match="torchreid writes them"):
        open_dataset(tmp_path, "cuhk03")
    for labeled, layout in ((False, "cuhk03"), (True, "cuhk03-labeled")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = torchreid.data.datasets.CUHK03(root=str(tmp_path), verbose=False, cuhk03_labeled=labeled)
        ours = open_dataset(tmp_path, layout)
        assert ours.layout == "cuhk03" and theirs.num_train_pids == 3
        for split in ("train", "query", "gallery"):
            assert as_set(getattr(theirs, split)) == {(str(it.path), it.pid, it.camid) for it in ours.splits[split]}
        assert {it.camid for it in ours.query} == {0, 1}  # one query per view of each test identity
        poses = read_annotations(out / ANNOTATIONS["gallery"], (160, 64))
        assert set(poses) == {it.filename for it in ours.gallery}
        assert Image.open(ours.train[0].path).size == (64, 160)
    classic = torchreid.data.datasets.CUHK03(root=str(tmp_path), verbose=False, cuhk03_classic_split=True, split_id=19)
    assert len(classic.train) + len(classic.query) == len(ours.train) + len(ours.query) + len(ours.gallery)


def test_filter_model_trains_on_another_layout(drawn_layouts, tmp_path):
    """`generate --filter-model train` on a DukeMTMC-reID folder: torchreid trains on the layout reader's lists."""
    import torch
    from reid.filter_model import train_filter_model

    duke = open_dataset(drawn_layouts, "dukemtmcreid")
    split = save_split(tmp_path / "split.json", make_split(duke.train, 0.5, 0))
    ckpt = train_filter_model(duke.root, tmp_path / "filter.pth", split=split, epochs=1, size=(64, 32),
                              batch_size=8)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state["classifier.weight"].shape[0] == 4  # the four training identities of the subset


def test_reid_experiment_with_its_controls_on_msmt17(drawn_layouts, tmp_path):
    """reid-experiment on torchreid's own msmt17 (192x80 crops): the subset is drawn from torchreid's training
    list, the views of the subset's images join it, and the controls replay the augmented run's steps."""
    from reid import experiment

    gen = fake_views(tmp_path / "gen", open_dataset(drawn_layouts, "msmt17"), per_source=2)
    cfg = {"root": str(drawn_layouts), "dataset": "msmt17", "generated_dir": str(gen), "fractions": [0.5],
           "seeds": [0], "variants": ["baseline", "augmented", "baseline_steps", "duplicated"], "epochs": 1,
           "batch_size": 8, "height": 32, "width": 16, "out_dir": str(tmp_path / "out")}
    df = experiment.run_experiment(cfg, progress=False).set_index("variant")
    subset = len(load(tmp_path / "out" / "splits" / "split_f0.5_s0.json"))
    assert df.loc["baseline", "num_train_real"] == subset and df.loc["augmented", "num_train_generated"] == 2 * subset
    assert df.loc["duplicated", "num_train_images"] == df.loc["augmented", "num_train_images"]
    assert df.loc["baseline_steps", "steps"] == df.loc["duplicated", "steps"] == df.loc["augmented", "steps"]
    assert (df["num_train_ids"] == 4).all() and df["mAP"].between(0, 100).all()
