"""torchreid datasets with generated views: registration, labels, splits, filters, and torchreid's own loaders."""
import csv
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from pcdms_aug.data.splits import make_split, save_split
from pcdms_aug.utils.errors import DataError
from reid import datasets as reid_datasets
import torchreid  # after reid.datasets, which imports it with its Cython warning silenced
from tests.reid_fixtures import build_fake_generated

REAL, SYNTH = reid_datasets.REAL, reid_datasets.SYNTHETIC


@pytest.fixture(scope="module")
def data(synth_market, tmp_path_factory):
    """(torchreid root, the synthetic Market folder <root>/market1501, a generated folder of 2 views per image)."""
    gen = build_fake_generated(tmp_path_factory.mktemp("reid_ds") / "gen", synth_market, views_per_source=2)
    return synth_market.parent, synth_market, gen


def train_names(base):
    return sorted(p.name for p in (base / "bounding_box_train").glob("*.jpg"))


def reference(root):
    """torchreid's own Market1501 reader on the same folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that the folder is not nested in Market-1501-v15.09.15
        return torchreid.data.datasets.Market1501(root=str(root), verbose=False)


def build(name, root, **bind):
    bound = reid_datasets.with_generated_views(name, **bind)
    return torchreid.data.datasets.init_image_dataset(bound, root=str(root), mode="train", verbose=False,
                                                      split_id=0, market1501_500k=False)


def orig_pid(path):
    return int(Path(path).name.split("_")[0])


def manifest_rows(gen):
    with open(gen / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_each_binding_has_its_own_name(data):
    root, base, gen = data
    plain = reid_datasets.with_generated_views(SYNTH)
    augmented = reid_datasets.with_generated_views("synthetic", gen)
    assert plain != augmented and augmented == reid_datasets.with_generated_views(SYNTH, str(gen))
    # a later binding changes nothing about an earlier name: both live side by side
    for name, views in ((augmented, 2 * len(train_names(base))), (plain, 0), (augmented, 2 * len(train_names(base)))):
        ds = torchreid.data.datasets.init_image_dataset(name, root=str(root), mode="train", verbose=False)
        assert ds.num_generated == views
    with pytest.raises(DataError, match="unknown dataset"):
        reid_datasets.dataset_name("duke")
    assert reid_datasets.dataset_name("msmt17") == "msmt17"  # torchreid's own names are taken as they are
    assert reid_datasets.dataset_name("synthetic") == SYNTH and reid_datasets.dataset_name("real") == REAL


def test_generated_views_share_the_real_labels(data):
    root, base, gen = data
    ds = build(SYNTH, root, generated_dir=gen)
    label_of = defaultdict(set)
    for path, label, camid, _ in ds.train:
        label_of[orig_pid(path)].add(label)
    assert all(len(labels) == 1 for labels in label_of.values())  # one label per identity, real or generated
    assert ds.num_train_pids == 8 == len(label_of)
    n = len(train_names(base))
    gen_items = [t for t in ds.train if t[0] in ds.generated_paths]
    assert len(gen_items) == 2 * n and ds.num_real_train == n and len(ds.train) == 3 * n
    rows = {r["file"]: r for r in manifest_rows(gen)}
    real = {Path(p).name: (label, camid) for p, label, camid, _ in ds.train if p not in ds.generated_paths}
    for path, label, camid, _ in gen_items:
        row = rows[Path(path).name]
        # the label and the camera of the image it was made from
        assert (label, camid) == real[row["source"]] and label_of[int(row["pid"])] == {label}


def test_generated_only_in_train_and_test_lists_match_torchreid_market1501(data):
    root, _, gen = data
    ds = build(SYNTH, root, generated_dir=gen)
    ref = reference(root)

    def as_set(items):
        return {(Path(p).name, pid, cam) for p, pid, cam, *_ in items}

    assert as_set(ds.query) == as_set(ref.query)
    assert as_set(ds.gallery) == as_set(ref.gallery)  # junk dropped, 0000 distractors kept, as torchreid does
    assert any(pid == 0 for _, pid, _, _ in ds.gallery) and all(pid != -1 for _, pid, _, _ in ds.gallery)
    assert not ({p for p, *_ in ds.query + ds.gallery} & ds.generated_paths)
    # the real training images are torchreid's, with the same grouping into identities
    real = [t for t in ds.train if t[0] not in ds.generated_paths]
    assert {(Path(p).name, c) for p, _, c, _ in real} == {(Path(p).name, c) for p, _, c, *_ in ref.train}
    ours = {Path(p).name: label for p, label, *_ in real}
    theirs = {Path(p).name: label for p, label, *_ in ref.train}
    assert len({(ours[n], theirs[n]) for n in ours}) == 8  # a bijection between the two labelings


def test_split_file_keeps_only_its_images_and_their_views(data, tmp_path):
    root, base, gen = data
    split = make_split(train_names(base), 0.4, seed=1)
    path = save_split(tmp_path / "split.json", split)
    ds = build(SYNTH, root, generated_dir=gen, split_file=path)
    real = sorted(Path(p).name for p, *_ in ds.train if p not in ds.generated_paths)
    assert real == list(split.files) and ds.num_train_pids == 8
    sources = {r["file"]: r["source"] for r in manifest_rows(gen)}
    assert ds.num_generated == 2 * len(split)
    assert all(sources[Path(p).name] in split.files for p in ds.generated_paths)


def test_kept_only_and_views_per_identity_follow_manifest_order(data):
    root, _, gen = data
    rows = manifest_rows(gen)
    kept = build(SYNTH, root, generated_dir=gen, kept_only=True)
    assert {Path(p).name for p in kept.generated_paths} == {r["file"] for r in rows if r["kept"] == "1"}
    capped = build(SYNTH, root, generated_dir=gen, views_per_identity=3)
    first3 = defaultdict(list)
    for r in rows:
        if len(first3[r["pid"]]) < 3:
            first3[r["pid"]].append(r["file"])
    assert {Path(p).name for p in capped.generated_paths} == {f for fs in first3.values() for f in fs}
    assert build(SYNTH, root, generated_dir=gen, views_per_identity=0).num_generated == 0


def test_bad_generated_folders_are_refused_with_file_and_line(data, tmp_path):
    root, _, gen = data
    bad = tmp_path / "bad"
    shutil.copytree(gen, bad)
    rows = manifest_rows(bad)
    fields = list(rows[0])

    def write(rows, fields=fields):
        with open(bad / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    write(rows, ["file", "pid"])
    with pytest.raises(DataError, match="lacks column.*camid") as e:
        build(REAL, root, generated_dir=bad)
    assert str(e.value).startswith(str(bad / "manifest.csv") + ":1:")
    write([rows[0], {**rows[1], "pid": "0007"}])
    with pytest.raises(DataError, match="must start with '0007_c") as e:
        build(REAL, root, generated_dir=bad)
    assert ":3:" in str(e.value)
    write([{**rows[0], "file": "nope/" + rows[0]["file"]}])
    with pytest.raises(DataError, match="not found"):
        build(REAL, root, generated_dir=bad)
    write(rows, [f for f in fields if f != "kept"])
    with pytest.raises(DataError, match="kept"):
        build(REAL, root, generated_dir=bad, kept_only=True)
    with pytest.raises(DataError, match="manifest.csv"):
        build(REAL, root, generated_dir=tmp_path / "absent")


def test_split_of_another_dataset_is_refused(data, tmp_path):
    root, _, _ = data
    other = save_split(tmp_path / "other.json", make_split(["0001_c1s1_000001_01.jpg", "0999_c2s1_000002_01.jpg"],
                                                           1.0, 0))
    with pytest.raises(DataError, match="not training images of"):
        build(REAL, root, split_file=other)


def test_synthetic_name_reads_its_own_folder_or_falls_back(data, tmp_path):
    root, base, _ = data
    assert build(SYNTH, root).data_dir == base  # only root/market1501 exists: the synthetic set is there
    own = tmp_path / "synthetic_market1501"
    shutil.copytree(base, own)
    first_pid = train_names(own)[0].split("_")[0]
    for p in list((own / "bounding_box_train").glob(f"{first_pid}_*")):
        p.unlink()
    (tmp_path / "market1501").symlink_to(base)  # a second set beside it: the synthetic name prefers its own
    ds = build(SYNTH, tmp_path)
    assert ds.data_dir == own and ds.num_train_pids == 7
    assert build(REAL, tmp_path).data_dir == tmp_path / "market1501"
    assert build(SYNTH, base).data_dir == base  # the Market folder itself as root
    with pytest.raises(DataError, match="no Market-1501-layout folder"):
        build(REAL, tmp_path / "empty")


def test_image_data_manager_loads_it(data):
    root, _, gen = data
    name = reid_datasets.with_generated_views(SYNTH, gen, kept_only=True)
    dm = torchreid.data.ImageDataManager(root=str(root), sources=name, height=32, width=16, batch_size_train=8,
                                         batch_size_test=16, workers=0, use_gpu=False,
                                         train_sampler="RandomIdentitySampler", num_instances=2)
    assert dm.num_train_pids == 8
    batch = next(iter(dm.train_loader))
    assert tuple(batch["img"].shape) == (8, 3, 32, 16)
    assert 0 <= int(batch["pid"].min()) and int(batch["pid"].max()) < 8
    q = dm.test_loader[name]["query"].dataset
    assert len(q) == len(reference(root).query) > 0 and q.mode == "query"
