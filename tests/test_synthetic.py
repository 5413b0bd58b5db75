import hashlib
import json
import math
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data import people as pp
from pcdms_aug.data import posegen as pg
from pcdms_aug.data.market import MarketDataset, make_pairs, pid_of, valid_for_pairs
from pcdms_aug.data.synthetic import ANNOTATIONS, META, PAIRS, build_synthetic_market, planned_poses
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import JOINTS, read_annotations, read_pairs

from .conftest import SYNTH_SETTINGS
from .conftest_data import REAL, real_or_skip


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_names_cameras_queries(synth_market):
    ds = MarketDataset(synth_market)  # parses every name strictly
    assert ds.root == synth_market
    meta = json.loads((synth_market / META).read_text())
    counts = meta["counts"]
    assert meta["complete"] and meta["settings"]["seed"] == SYNTH_SETTINGS["seed"]
    assert len(ds.train) == counts["train_images"] and len(ds.query) == counts["query_images"]
    assert len(ds.gallery) == counts["gallery_images"]
    assert all(1 <= it.name.camid <= 6 for it in ds.all_images())

    cams = defaultdict(lambda: defaultdict(set))
    for split in ("train", "query", "gallery"):
        for it in ds.splits[split]:
            cams[split][it.name.pid].add(it.name.camid)
    train_ids = set(cams["train"])
    test_ids = set(cams["query"])
    assert len(train_ids) == SYNTH_SETTINGS["train_ids"] and len(test_ids) == SYNTH_SETTINGS["test_ids"]
    assert not train_ids & test_ids and 0 not in train_ids | test_ids and -1 not in train_ids | test_ids
    assert all(len(c) >= 2 for c in cams["train"].values())
    # One query per camera a test identity appears in, and a true match in another camera for each.
    q_per = defaultdict(list)
    for it in ds.query:
        q_per[(it.name.pid, it.name.camid)].append(it)
    assert all(len(v) == 1 for v in q_per.values())
    for pid in test_ids:
        assert cams["query"][pid] == cams["gallery"][pid] and len(cams["gallery"][pid]) >= 2
    # Junk and distractors, in the gallery only, as in the real set.
    junk = [it for it in ds.gallery if it.name.is_junk]
    distractors = [it for it in ds.gallery if it.name.is_distractor]
    assert len(junk) == counts["junk_images"] > 0 and len(distractors) == counts["distractor_images"] > 0
    assert not any(it.name.pid <= 0 for it in ds.train + ds.query)
    names = [it.filename for it in ds.all_images()]
    assert len(names) == len(set(names))
    per_id = len(ds.train) / len(train_ids)
    assert 10 <= per_id <= 28
    for it in ds.train[:5] + junk[:3]:
        with Image.open(it.path) as im:
            assert im.format == "JPEG" and im.size == (64, 128) and im.mode == "RGB"


def test_annotations_and_pairs(synth_market):
    ds = MarketDataset(synth_market)
    for split, csv_name in ANNOTATIONS.items():
        poses = read_annotations(synth_market / csv_name)  # checks every keypoint lies inside 128x64
        assert sorted(poses) == sorted(it.filename for it in ds.splits[split])
    train = read_annotations(synth_market / ANNOTATIONS["train"])
    planned = planned_poses(split="train", **SYNTH_SETTINGS)
    assert sorted(planned) == sorted(train) and all(planned[n] == train[n] for n in train)
    vis = np.stack([p.visible for p in train.values()])
    assert 0.15 < 1 - vis.mean() < 0.4
    test = read_annotations(synth_market / ANNOTATIONS["gallery"])
    assert any(n.startswith("-1_") for n in test) and any(n.startswith("0000_") for n in test)
    pairs = read_pairs(synth_market / PAIRS)
    assert pairs and len(pairs) == len(set(pairs))
    for a, b in pairs:
        assert a != b and pid_of(a) == pid_of(b)
        assert valid_for_pairs(a, test[a]) and valid_for_pairs(b, test[b])
    assert pairs == make_pairs(test, max_pairs=16 * SYNTH_SETTINGS["test_ids"], seed=SYNTH_SETTINGS["seed"])


def test_torchreid_reads_it_unchanged(synth_market):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid
        data = torchreid.data.datasets.Market1501(root=str(synth_market.parent), verbose=False)
    ds = MarketDataset(synth_market)
    assert len(data.train) == len(ds.train)
    assert data.num_train_pids == SYNTH_SETTINGS["train_ids"] and data.num_train_cams <= 6
    assert len(data.query) == len(ds.query)
    # torchreid drops junk (-1) and keeps the 0000 distractors.
    assert len(data.gallery) == sum(not it.name.is_junk for it in ds.gallery)
    assert {row[1] for row in data.query} <= {row[1] for row in data.gallery}


def test_same_seed_same_bytes_other_seed_differs(synth_market, tmp_path):
    again = build_synthetic_market(tmp_path / "again", progress=False, **SYNTH_SETTINGS)
    assert _hashes(again) == _hashes(synth_market)
    other = build_synthetic_market(tmp_path / "other", train_ids=2, test_ids=1, seed=1, progress=False)
    small = build_synthetic_market(tmp_path / "small", train_ids=2, test_ids=1, seed=0, progress=False)
    h_other, h_small = _hashes(other), _hashes(small)
    assert set(h_other) != set(h_small)
    assert h_other["market-annotation-train.csv"] != h_small["market-annotation-train.csv"]


def test_idempotent_resumable_and_refusing(synth_market, tmp_path):
    stamp = {p: p.stat().st_mtime_ns for p in synth_market.rglob("*") if p.is_file()}
    assert build_synthetic_market(synth_market, progress=False, **SYNTH_SETTINGS) == synth_market
    assert stamp == {p: p.stat().st_mtime_ns for p in synth_market.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="other settings"):
        build_synthetic_market(synth_market, train_ids=8, test_ids=6, seed=5, progress=False)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_synthetic_market(foreign, train_ids=2, test_ids=1, progress=False)

    # An interrupted build (marker not complete, an image missing) is finished with the same bytes.
    out = build_synthetic_market(tmp_path / "tiny", train_ids=2, test_ids=1, seed=3, progress=False)
    reference = _hashes(out)
    victim = sorted((out / "bounding_box_train").glob("*.jpg"))[0]
    victim.unlink()
    meta = json.loads((out / META).read_text())
    meta["complete"] = False
    (out / META).write_text(json.dumps(meta))
    build_synthetic_market(out, train_ids=2, test_ids=1, seed=3, progress=False)
    assert _hashes(out) == reference


def test_cli_builds_and_reports_bad_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth-market", str(out), "--train-ids", "2", "--test-ids", "1", "--quiet"]) == 0
    assert "train images of 2 ids" in capsys.readouterr().out
    assert main(["synth-market", str(out), "--train-ids", "2", "--test-ids", "1", "--seed", "4", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and META in err and "other settings" in err
    with pytest.raises(SystemExit) as refused:  # by argparse: --train-ids is a count in 1..9999
        main(["synth-market", str(tmp_path / "x"), "--train-ids", "0", "--quiet"])
    assert refused.value.code == 2 and "--train-ids" in capsys.readouterr().err


def _draw(look, yaw, body=None):
    body = body or pg.sample_body(np.random.default_rng(0))
    view = pg.View(yaw=yaw, head_yaw=0.0, phase=0.0, stride=0.3, arm_swing=0.2, arm_r=(0.35, 0.3, 0.2),
                   arm_l=(0.35, 0.3, 0.2), head_roll=0.0, stance=(1.0, 0.85), scale=1.0, cx=32.0, neck_y=25.0)
    skel = pg.Skeleton(body, view)
    canvas = np.zeros((pg.H * pp.SS, pg.W * pp.SS, 3), np.uint8)
    pp.draw_person(canvas, skel, look, (0.0, 1.0))
    return skel, canvas


def _at(canvas, x, y):
    return canvas[int(round(y * pp.SS + pp.SS / 2)), int(round(x * pp.SS + pp.SS / 2))].astype(float)


def _nearest(pixel, colours):
    return int(np.argmin([np.abs(pixel / max(pixel.max(), 1) - np.array(c) / max(c)).sum() for c in colours]))


def test_appearance_depends_on_view():
    look = replace(pp.sample_look(np.random.default_rng(1)), top=(20, 20, 220), top_pattern="plain",
                   logo="square", logo_colour=(230, 20, 20), back_print=False, bag="none",
                   skin=(235, 190, 150), hair=(15, 60, 15), hair_style="short", sleeves="long")
    red, blue, green = (230, 20, 20), (20, 20, 220), (15, 200, 15)
    front_skel, front = _draw(look, 0.0)
    _, back = _draw(look, math.pi)
    b = front_skel.body
    chest = (32.0, 25.0 + 0.33 * (b.torso + 5.0) - 1.5)
    assert _nearest(_at(front, *chest), [red, blue]) == 0  # the print shows from the front
    assert _nearest(_at(back, *chest), [red, blue]) == 1  # not from behind
    head = front_skel.project(np.array([0.0, -15.6 * b.head, 0.0]))[0]
    skin, hair = (235, 190, 150), (15, 60, 15)
    assert _nearest(_at(front, *head), [skin, hair]) == 0 and _nearest(_at(back, *head), [skin, hair]) == 1
    packed = replace(look, bag="backpack", bag_colour=green)
    assert _nearest(_at(_draw(packed, math.pi)[1], *chest), [green, blue, red]) == 0  # the backpack from behind
    assert _nearest(_at(_draw(packed, 0.0)[1], *chest), [green, blue, red]) == 2
    # A side view is narrower than a front view.
    row = int(chest[1] * pp.SS)
    width = lambda canvas: int(canvas[row].any(axis=1).sum())  # noqa: E731
    assert width(_draw(look, math.pi / 2)[1]) < 0.75 * width(front)
    # The annotated keypoints lie on the drawn body.
    for k in range(14):
        assert _at(front, *front_skel.pixel_joints()[k]).any(), JOINTS[k]


@real_or_skip
def test_pose_statistics_close_to_real():
    syn = pg.pose_statistics(planned_poses(200, 1, 0).values())
    real = pg.pose_statistics(read_annotations(REAL / "market-annotation-train.csv").values())
    assert abs(syn["missing"] - real["missing"]) < 0.04
    assert abs(syn["no_keypoint"] - real["no_keypoint"]) < 0.015
    for k, (s, r) in enumerate(zip(syn["joints"], real["joints"])):
        assert abs(s["visible"] - r["visible"]) < 0.1, k
        assert abs(s["x_mean"] - r["x_mean"]) < 3.5 and abs(s["y_mean"] - r["y_mean"]) < 3.0, k
        assert 0.5 < s["y_std"] / r["y_std"] < 1.5, k
    for view in ("front", "back"):
        assert abs(syn["views"][view] - real["views"][view]) < 0.06, view

