import numpy as np
import pytest
from PIL import Image

from pcdms_aug.data.market import (MarketDataset, MarketName, find_root, load_image, make_pairs, parse_name,
                                   valid_for_pairs)
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import Pose, read_annotations, read_pairs

from .conftest_data import REAL, real_or_skip


def test_parse_name():
    n = parse_name("0002_c1s1_000451_03.jpg")
    assert (n.pid, n.camid, n.sequence, n.frame, n.box) == (2, 1, 1, 451, 3)
    assert str(n) == "0002_c1s1_000451_03.jpg"
    assert parse_name("-1_c3s2_000100_00.jpg").is_junk
    assert parse_name("0000_c6s1_000001_01.jpg").is_distractor
    assert str(MarketName(-1, 3, 2, 100, 0)) == "-1_c3s2_000100_00.jpg"


@pytest.mark.parametrize("bad", ["002_c1s1_000451_03.jpg", "0002_c1_000451_03.jpg", "0002_c1s1_451_03.jpg",
                                 "foo.jpg", "0002_c0s1_000451_03.jpg"])
def test_parse_name_rejects(bad):
    with pytest.raises(DataError, match=bad.split(".")[0][:4]):
        parse_name(bad)


def _write_layout(root, names_by_split, size=(64, 128)):
    for folder, names in names_by_split.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for n in names:
            Image.new("RGB", size, (10, 20, 30)).save(root / folder / n)


def test_dataset_reads_both_nestings(tmp_path):
    split = {"bounding_box_train": ["0001_c1s1_000001_01.jpg", "0001_c2s1_000002_01.jpg"],
             "query": ["0003_c1s1_000001_01.jpg"],
             "bounding_box_test": ["0003_c2s1_000003_01.jpg", "-1_c1s1_000004_01.jpg", "0000_c3s1_000005_01.jpg"]}
    _write_layout(tmp_path / "plain", split)
    nested = tmp_path / "tr" / "market1501" / "Market-1501-v15.09.15"
    _write_layout(nested, split)
    for root in (tmp_path / "plain", tmp_path / "tr"):
        ds = MarketDataset(root)
        assert len(ds.train) == 2 and len(ds.query) == 1 and len(ds.gallery) == 3
        assert ds.path_of("0003_c1s1_000001_01.jpg").parent.name == "query"
    assert find_root(tmp_path / "tr") == nested


def test_missing_split_and_bad_name(tmp_path):
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(DataError, match="missing split folder.*query.*bounding_box_test"):
        MarketDataset(tmp_path)
    _write_layout(tmp_path, {"query": [], "bounding_box_test": [], "bounding_box_train": ["person1.jpg"]})
    with pytest.raises(DataError, match="person1.jpg"):
        MarketDataset(tmp_path)


def test_load_image_errors(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_01.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="unreadable image") as e:
        load_image(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(DataError, match="image not found"):
        load_image(tmp_path / "nope.jpg")
    good = tmp_path / "g.png"
    Image.new("RGB", (64, 128)).save(good)
    assert load_image(good, (256, 128)).size == (128, 256)


def _torso_pose():
    xy = np.full((18, 2), -1.0)
    xy[[2, 5, 8, 11]] = [[20, 30], [44, 30], [24, 70], [40, 70]]
    return Pose.from_array(xy, (128, 64))


def test_make_pairs_rule():
    p = _torso_pose()
    no_torso = Pose.from_array(np.full((18, 2), -1.0), (128, 64))
    poses = {"0001_c1s1_000001_01.jpg": p, "0001_c2s1_000001_01.jpg": p, "0001_c3s1_000001_01.jpg": no_torso,
             "0002_c1s1_000001_01.jpg": p, "0000_c1s1_000001_01.jpg": p, "0000_c2s1_000001_01.jpg": p,
             "-1_c1s1_000001_01.jpg": p, "-1_c2s1_000001_01.jpg": p}
    pairs = make_pairs(poses)
    assert sorted(pairs) == [("0001_c1s1_000001_01.jpg", "0001_c2s1_000001_01.jpg"),
                             ("0001_c2s1_000001_01.jpg", "0001_c1s1_000001_01.jpg")]
    assert not valid_for_pairs("0000_c1s1_000001_01.jpg", p)


@real_or_skip
def test_real_test_pairs_follow_the_rule():
    poses = read_annotations(REAL / "market-annotation-test.csv")
    pairs = read_pairs(REAL / "market-pairs-test.csv")
    allowed = set(make_pairs(poses))
    # The published pairs are a sample of the rule's pairs; the rule must contain every one of them.
    assert all(p in allowed for p in pairs)
    sample = make_pairs(poses, max_pairs=12000, seed=1)
    assert len(sample) == 12000 and sample == make_pairs(poses, max_pairs=12000, seed=1)


def test_parse_name_doubled_extension_of_real_market():
    n = parse_name("1488_c5s3_071737_01.jpg.jpg")
    assert n.pid == 1488 and str(n) == "1488_c5s3_071737_01.jpg.jpg"
