"""Low-data splits: fraction, one image per identity at least, seeded, saved and read back."""
import json
from collections import Counter

import pytest

from pcdms_aug.data.market import MarketDataset
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.splits import Split, load_split, make_split, save_split, split_filename, split_names


def names(ids=10, per_id=None):
    """Training names with uneven image counts per identity (1..7)."""
    out = []
    for pid in range(1, ids + 1):
        for k in range(per_id or 1 + pid % 7):
            out.append(f"{pid:04d}_c{1 + k % 6}s1_{pid * 100 + k:06d}_01.jpg")
    return out


def pid(name):
    return name.split("_")[0]


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6, 0.8, 1.0])
def test_fraction_and_one_per_identity(fraction):
    items = names(40)
    split = make_split(items, fraction, seed=3)
    assert len(split) == max(40, round(fraction * len(items)))
    assert set(split.files) <= set(items)
    assert {pid(n) for n in split.files} == {pid(n) for n in items}
    assert split.total == len(items) and split.num_ids == 40
    assert list(split.files) == sorted(split.files)
    if fraction == 1.0:
        assert set(split.files) == set(items)


def test_tiny_fraction_keeps_exactly_one_per_identity():
    split = make_split(names(12), 0.01, seed=0)
    assert len(split) == 12
    assert set(Counter(pid(n) for n in split.files).values()) == {1}


def test_same_seed_same_subset_other_seed_other_subset():
    items = names(30)
    a, b = make_split(items, 0.4, 7), make_split(list(reversed(items)), 0.4, 7)
    assert a == b  # input order does not matter
    c = make_split(items, 0.4, 8)
    assert a.files != c.files and len(a) == len(c)


def test_inputs_market_images_and_torchreid_tuples(tmp_path):
    d = tmp_path / "m"
    for s in ("bounding_box_train", "query", "bounding_box_test"):
        (d / s).mkdir(parents=True)
    for n in names(5):
        (d / "bounding_box_train" / n).write_bytes(b"")
    train = MarketDataset(d).train
    by_image = make_split(train, 0.5, 1)
    by_tuple = make_split([(str(it.path), it.name.pid, it.name.camid - 1) for it in train], 0.5, 1)
    by_name = make_split([it.filename for it in train], 0.5, 1)
    assert by_image == by_tuple == by_name


def test_junk_never_kept_and_bad_input_is_refused():
    items = names(4) + ["-1_c1s1_000001_01.jpg"]
    assert all(not n.startswith("-1") for n in make_split(items, 1.0, 0).files)
    for bad in (0, 1.5, -0.2, "x"):
        with pytest.raises(DataError, match="fraction"):
            make_split(items, bad, 0)
    with pytest.raises(DataError, match="twice"):
        make_split(items + items[:1], 0.5, 0)
    with pytest.raises(DataError, match="Market-1501"):
        make_split(["person.jpg"], 0.5, 0)


def test_save_load_round_trip(tmp_path):
    split = make_split(names(20), 0.6, 5)
    path = save_split(tmp_path / "s" / split_filename(0.6, 5), split)
    assert path.name == "split_f0.6_s5.json"
    back = load_split(path)
    assert back == split and isinstance(back, Split)
    assert split_names(path) == list(split.files)
    data = json.loads(path.read_text())
    assert data["fraction"] == 0.6 and data["seed"] == 5 and data["num_images"] == len(split)
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_split(tmp_path / "missing.json")
    assert "missing.json" in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(DataError, match="corrupt split file"):
        load_split(bad)
    bad.write_text(json.dumps({"files": ["a.jpg"]}))
    with pytest.raises(DataError, match="not a split file"):
        load_split(bad)
    bad.write_text(json.dumps({"format": "pcdms-aug reid split v1", "fraction": 0.2, "seed": 0,
                               "total_images": 3, "num_ids": 1, "files": ["a.jpg", "a.jpg"]}))
    with pytest.raises(DataError, match="twice"):
        load_split(bad)
