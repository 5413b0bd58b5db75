import numpy as np
import pytest

from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import (FLIP_PERMUTATION, JOINTS, NUM_JOINTS, VECTOR_DIM, Pose, PoseBank, format_annotation_row,
                            read_annotations, read_pairs, render_pose, write_annotations, write_pairs)

from .conftest_data import REAL, real_or_skip


def _pose(seed=0, size=(128, 64), missing=(14, 15)):
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.integers(0, size[1], NUM_JOINTS), rng.integers(0, size[0], NUM_JOINTS)], 1).astype(float)
    xy[list(missing)] = -1
    return Pose.from_array(xy, size)


def test_flip_permutation_swaps_left_right():
    for i, j in enumerate(FLIP_PERMUTATION):
        a, b = JOINTS[i], JOINTS[j]
        assert (a == b) if a[0] not in "RL" else (a[1:] == b[1:] and a[0] != b[0])


def test_flip_twice_is_identity_and_mirrors_x():
    p = _pose()
    f = p.flipped()
    assert f.flipped() == p
    r, l = JOINTS.index("Rsho"), JOINTS.index("Lsho")
    assert f.xy[l, 0] == pytest.approx(63 - p.xy[r, 0])
    assert f.visible.sum() == p.visible.sum()


def test_vector_sentinel_and_flags():
    p = _pose(missing=(0, 17))
    v = p.vector()
    assert v.shape == (VECTOR_DIM,)
    coords, flags = v[:36].reshape(18, 2), v[36:]
    assert (coords[[0, 17]] == -2.0).all() and flags[0] == 0 and flags[1] == 1
    assert ((coords[flags == 1] >= 0) & (coords[flags == 1] < 1)).all()


def test_from_array_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(18, 2\)"):
        Pose.from_array(np.zeros((17, 2)), (128, 64))


def test_scaled_keeps_relative_position():
    p = _pose()
    s = p.scaled((512, 256))
    assert np.allclose(s.xy[p.visible], p.xy[p.visible] * 4)
    assert (s.xy[~p.visible] == -1).all()


def test_render_deterministic_any_size_and_missing_left_out():
    p = _pose(missing=())
    a, b = render_pose(p, (256, 128)), render_pose(p, (256, 128))
    assert a.shape == (256, 128, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert render_pose(p, (37, 19)).shape == (37, 19, 3)
    empty = Pose.from_array(np.full((18, 2), -1.0), (128, 64))
    assert render_pose(empty).sum() == 0
    one_missing = Pose(p.xy, np.r_[[False], np.ones(17, bool)], p.size)
    assert not np.array_equal(render_pose(one_missing), render_pose(p))


def test_annotation_round_trip(tmp_path):
    poses = {f"000{i}_c1s1_000001_0{i}.jpg": _pose(i) for i in range(1, 4)}
    path = tmp_path / "a.csv"
    write_annotations(path, poses)
    back = read_annotations(path)
    assert list(back) == list(poses)
    for n in poses:
        assert back[n] == poses[n]
    assert path.read_text().splitlines()[0] == "name:keypoints_y:keypoints_x"


@pytest.mark.parametrize("row,match", [
    ("0001_c1s1_000001_01.jpg: [1, 2]: [3, 4]", "has 2 keypoints, expected 18"),
    ("0001_c1s1_000001_01.jpg: [1, 2, oops]: [3]", "cannot parse keypoints_y"),
    ("0001_c1s1_000001_01.jpg: [" + ", ".join(["5"] * 18) + "]", "3 ':'-separated fields"),
    ("0001_c1s1_000001_01.jpg: [" + ", ".join(["500"] * 18) + "]: [" + ", ".join(["5"] * 18) + "]",
     "outside the 128x64 image"),
    ("0001_c1s1_000001_01.jpg: [" + ", ".join(["-1"] + ["5"] * 17) + "]: [" + ", ".join(["5"] * 18) + "]",
     "missing in one list only"),
])
def test_broken_row_names_file_and_line(tmp_path, row, match):
    good = format_annotation_row("0002_c1s1_000001_01.jpg", _pose())
    path = tmp_path / "bad.csv"
    path.write_text("name:keypoints_y:keypoints_x\n" + good + "\n" + row + "\n")
    with pytest.raises(DataError, match=match) as e:
        read_annotations(path)
    assert str(e.value).startswith(f"{path}:3: ")


def test_bad_header(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("name,y,x\n")
    with pytest.raises(DataError, match=r":1: bad header"):
        read_annotations(path)


def test_pairs_round_trip_and_errors(tmp_path):
    pairs = [("0001_c1s1_000001_01.jpg", "0001_c2s1_000001_01.jpg")]
    write_pairs(tmp_path / "p.csv", pairs)
    assert read_pairs(tmp_path / "p.csv") == pairs
    (tmp_path / "bad.csv").write_text("from,to\na,b\nc\n")
    with pytest.raises(DataError, match=r"bad.csv:3: expected two"):
        read_pairs(tmp_path / "bad.csv")


def test_pose_bank_canonical_and_distances():
    poses = [_pose(i, missing=()) for i in range(40)]
    bank = PoseBank(poses)
    canon = bank.canonical(5, seed=0)
    assert len(canon) == 5 and all(any(c is p for p in poses) for c in canon)
    assert [id(c) for c in canon] == [id(c) for c in bank.canonical(5, seed=0)]
    d = bank.distances(poses[:3])
    assert d.shape == (3, 40) and np.allclose(np.diag(d[:, :3]), 0)
    assert len(bank.with_flips()) == 80


def test_pose_bank_drops_poses_without_torso():
    bank = PoseBank([_pose(0, missing=()), _pose(1, missing=(2,))])
    assert len(bank) == 1


@real_or_skip
def test_reads_real_annotations():
    train = read_annotations(REAL / "market-annotation-train.csv")
    test = read_annotations(REAL / "market-annotation-test.csv")
    assert len(train) == 12936 and len(test) == 19732
    vis = np.stack([p.visible for p in train.values()])
    assert 0.25 < 1 - vis.mean() < 0.45  # the README says about 34% of joints are missing
    assert len(read_pairs(REAL / "market-pairs-test.csv")) == 12000
