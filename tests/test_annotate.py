"""`pcdms-aug annotate` with a random-weight ViTPose folder in the downloaded layout, the COCO-17 -> OpenPose-18
mapping, and `pcdms-aug pose-agreement` on the real Market-1501 annotation files."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data.annotate import annotate, list_images, partial_path
from pcdms_aug.data.pose import JOINTS, MISSING, Pose, read_annotation_rows, read_annotations
from pcdms_aug.data.pose_agreement import agreement, compare_files, format_report, torso_length
from pcdms_aug.data.vitpose import COCO17, VitPoseEstimator, coco_to_openpose
from pcdms_aug.testing.vitpose_fixture import write_vitpose_folder
from pcdms_aug.utils.errors import DataError

from .conftest_data import REAL, real_or_skip


@pytest.fixture(scope="module")
def vitpose(tmp_path_factory):
    return write_vitpose_folder(tmp_path_factory.mktemp("vitpose") / "vitpose-base-simple")


@pytest.fixture(scope="module")
def estimator(vitpose):
    return VitPoseEstimator(vitpose, "cpu")


# ------------------------------------------------------------------------------------------- mapping
def _coco(names_xy: dict) -> tuple[np.ndarray, np.ndarray]:
    xy = np.zeros((17, 2), np.float32)
    scores = np.zeros(17, np.float32)
    for name, (x, y) in names_xy.items():
        xy[COCO17.index(name)] = (x, y)
        scores[COCO17.index(name)] = 0.9
    return xy, scores


def test_coco_joints_land_on_their_openpose_names():
    # Every COCO joint at its own place: x = index, y = 100 + index; each must come out under the OpenPose
    # name that means the same body part.
    xy = np.stack([np.arange(17), 100 + np.arange(17)], axis=1).astype(np.float32)
    pose = coco_to_openpose(xy, np.ones(17), (128, 64), threshold=0.3)
    same = {"nose": "nose", "Rsho": "right_shoulder", "Relb": "right_elbow", "Rwri": "right_wrist",
            "Lsho": "left_shoulder", "Lelb": "left_elbow", "Lwri": "left_wrist", "Rhip": "right_hip",
            "Rkne": "right_knee", "Rank": "right_ankle", "Lhip": "left_hip", "Lkne": "left_knee",
            "Lank": "left_ankle", "Reye": "right_eye", "Leye": "left_eye", "Rear": "right_ear", "Lear": "left_ear"}
    for op, coco in same.items():
        c = COCO17.index(coco)
        assert tuple(pose.xy[JOINTS.index(op)]) == (c, 100 + c), op
    neck = pose.xy[JOINTS.index("neck")]
    assert tuple(neck) == (np.rint(5.5), np.rint(105.5))  # the shoulders' midpoint (5 and 6), rounded
    assert pose.visible.all() and pose.size == (128, 64)


def test_mapping_commutes_with_a_mirror():
    """Mirroring the COCO keypoints (left <-> right names, x -> W-1-x) and mapping equals mapping and then
    Pose.flipped(): the left/right correspondence agrees with the annotations' flip permutation."""
    rng = np.random.default_rng(0)
    xy = np.stack([rng.integers(0, 64, 17), rng.integers(0, 128, 17)], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 17)
    swap = [COCO17.index(n.replace("left", "#").replace("right", "left").replace("#", "right")) for n in COCO17]
    mirrored = xy[swap].copy()
    mirrored[:, 0] = 63 - mirrored[:, 0]
    a = coco_to_openpose(mirrored, scores[swap], (128, 64), 0.4)
    b = coco_to_openpose(xy, scores, (128, 64), 0.4).flipped()
    assert np.array_equal(a.visible, b.visible) and np.array_equal(a.xy, b.xy)


def test_threshold_and_image_bounds_make_joints_missing():
    xy, scores = _coco({"nose": (30, 10), "left_shoulder": (40, 30), "right_shoulder": (20, 30),
                        "left_hip": (38, 70), "right_hip": (70, 70), "left_ankle": (35, 127.4)})
    scores[COCO17.index("left_hip")] = 0.29
    pose = coco_to_openpose(xy, scores, (128, 64), threshold=0.3)
    vis = dict(zip(JOINTS, pose.visible))
    assert vis["nose"] and vis["Lsho"] and vis["Rsho"] and vis["neck"]
    assert not vis["Lhip"]  # below the threshold
    assert not vis["Rhip"]  # x = 70 is outside a 64-wide image
    assert vis["Lank"] and pose.xy[JOINTS.index("Lank"), 1] == 127  # rounds into the image
    assert not vis["Relb"] and tuple(pose.xy[JOINTS.index("Relb")]) == (MISSING, MISSING)
    scores[COCO17.index("right_shoulder")] = 0.1
    lost = coco_to_openpose(xy, scores, (128, 64), threshold=0.3)
    assert not lost.visible[JOINTS.index("neck")]  # the neck needs both shoulders


# ------------------------------------------------------------------------------------------- the folder
def test_fixture_has_the_downloaded_layout(vitpose):
    assert sorted(p.name for p in vitpose.iterdir()) == ["config.json", "model.safetensors",
                                                         "preprocessor_config.json"]
    config = json.loads((vitpose / "config.json").read_text())
    assert config["model_type"] == "vitpose" and len(config["id2label"]) == 17
    assert json.loads((vitpose / "preprocessor_config.json").read_text())["image_processor_type"] == \
        "VitPoseImageProcessor"


def test_folders_that_are_no_vitpose_checkpoint_are_refused_in_one_line(vitpose, synth_market, tmp_path, capsys):
    out = tmp_path / "a.csv"

    def refused(folder, words):
        assert main(["annotate", str(synth_market), "--estimator", str(folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(folder) in err and words in err, err

    refused(tmp_path / "nowhere", "not found")
    refused(synth_market, "not a ViTPose checkpoint folder")
    other = shutil.copytree(vitpose, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    refused(other, "model_type is 'vit'")
    (other / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b"}}))
    refused(other, "predicts 2 keypoints")
    (other / "model.safetensors").rename(other / "pytorch_model.bin")
    refused(other, "only safetensors")
    assert not out.exists()


# ------------------------------------------------------------------------------------------- annotate
def test_annotate_writes_a_row_per_image_that_every_command_reads(vitpose, estimator, synth_market, tmp_path,
                                                                 capsys):
    out = tmp_path / "poses.csv"
    assert main(["annotate", str(synth_market), "--estimator", str(vitpose), "--out", str(out), "--splits",
                 "train,query", "--batch", "7", "--device", "cpu"]) == 0
    assert "[annotate]" in capsys.readouterr().out
    kind, images = list_images(synth_market, ("train", "query"))
    poses = read_annotations(out)  # the reader of generate, inspect and training, at Market's 128x64
    assert list(poses) == [n for n, _ in images] and len(images) > 100
    # The rows are the estimator's poses of the images, whatever the batch
    first = [Image.open(p).convert("RGB") for _, p in images[:5]]
    assert all(poses[n] == pose for (n, _), pose in zip(images[:5], estimator(first)))
    assert not partial_path(out).exists()
    assert main(["inspect", str(synth_market), "--annotations", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cov = report["pose_coverage"]
    train = [n for n, _ in list_images(synth_market, ("train",))[1]]
    with_pose = sum(bool(poses[n].visible.any()) for n in train)
    assert cov["train"] == {"images": len(train), "with_pose": with_pose, "without_pose": len(train) - with_pose,
                            "with_torso": sum(poses[n].has_torso() for n in train)}
    assert cov["gallery"]["with_pose"] == 0 and cov["gallery"]["without_pose"] == report["gallery_images"]
    assert main(["annotate", str(synth_market), "--estimator", str(vitpose), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_annotate_reads_every_torchreid_layout(vitpose, estimator, drawn_layouts, tmp_path, capsys):
    """The drawn MSMT17 (192x80 crops) from torchreid's root, and DukeMTMC-reID (160x72) from its own folder:
    a row per image of the splits asked for, keypoints in the crop's own pixels."""
    from pcdms_aug.data.layouts import open_dataset
    from pcdms_aug.data.market import image_sizes

    out = tmp_path / "msmt17.csv"
    assert main(["annotate", str(drawn_layouts), "--layout", "msmt17", "--splits", "train", "--estimator",
                 str(vitpose), "--out", str(out), "--device", "cpu"]) == 0
    assert "msmt17 dataset (train)" in capsys.readouterr().out
    train = open_dataset(drawn_layouts, "msmt17").train
    poses = read_annotations(out, image_sizes(train))
    assert list(poses) == [it.filename for it in train] and {p.size for p in poses.values()} == {(192, 80)}
    duke = open_dataset(drawn_layouts / "dukemtmc-reid")
    counts = annotate(drawn_layouts / "dukemtmc-reid", tmp_path / "duke.csv", estimator, progress=False)
    assert counts["source"] == "dukemtmcreid dataset (train, query, gallery)"
    assert counts["images"] == len(list(duke.all_images()))
    sizes = image_sizes(duke.all_images())
    assert {p.size for p in read_annotations(tmp_path / "duke.csv", sizes).values()} == {(160, 72)}


@pytest.mark.parametrize("size", [(128, 64), (192, 80), (300, 150), (96, 52)])
def test_joints_land_where_the_person_is_in_a_crop_of_any_size(size, tmp_path_factory):
    """The posed fixture sees a standing person facing the camera in every crop: through the real preprocessing
    and heatmap decoding, each joint lands within one network patch of where that person has it, in the crop's
    own pixels, with the person's right shoulder on the image's left."""
    from pcdms_aug.testing.vitpose_fixture import STANDING

    folder = write_vitpose_folder(tmp_path_factory.getbasetemp() / "vitpose-posed", posed=True)
    pose = VitPoseEstimator(folder)([Image.new("RGB", (size[1], size[0]), (120, 110, 100))])[0]
    assert pose.size == size and pose.visible.all()
    h, w = size
    names = {"nose": "Nose", "Rsho": "R_Shoulder", "Lsho": "L_Shoulder", "Relb": "R_Elbow", "Lelb": "L_Elbow",
             "Rwri": "R_Wrist", "Lwri": "L_Wrist", "Rhip": "R_Hip", "Lhip": "L_Hip", "Rkne": "R_Knee",
             "Lkne": "L_Knee", "Rank": "R_Ankle", "Lank": "L_Ankle", "Reye": "R_Eye", "Leye": "L_Eye",
             "Rear": "R_Ear", "Lear": "L_Ear"}
    for op, coco in names.items():
        x, y = pose.xy[JOINTS.index(op)] / (w, h)
        want_x, want_y = STANDING[coco]
        # a patch of the 6x8 grid is a third of the crop's width and a sixth of its height
        assert abs(x - want_x) <= 0.34 and abs(y - want_y) <= 0.17, (op, x, y)
    xy = {op: pose.xy[JOINTS.index(op)] for op in JOINTS}
    assert xy["Rsho"][0] < xy["neck"][0] < xy["Lsho"][0] and xy["Rhip"][0] < xy["Lhip"][0]
    assert xy["nose"][1] < xy["neck"][1] < xy["Rhip"][1] < xy["Rkne"][1] < xy["Rank"][1]
    assert tuple(xy["neck"]) == tuple(np.rint((xy["Rsho"] + xy["Lsho"]) / 2))


class _Killed(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_file(estimator, synth_market, tmp_path):
    whole = tmp_path / "whole.csv"
    annotate(synth_market, whole, estimator, splits=("train",), batch=10, progress=False)
    out = tmp_path / "resumed.csv"
    calls = []

    class Dies:
        settings = estimator.settings

        def __call__(self, images):
            calls.append(len(images))
            if len(calls) == 4:
                raise _Killed
            return estimator(images)

    with pytest.raises(_Killed):
        annotate(synth_market, out, Dies(), splits=("train",), batch=10, progress=False)
    partial = partial_path(out)
    assert not out.exists() and len(partial.read_text().splitlines()) == 1 + 30
    with open(partial, "a") as f:
        f.write("0001_c1s1_0000")  # the torn last line of a killed write
    counts = annotate(synth_market, out, estimator, splits=("train",), batch=10, progress=False)
    assert counts["resumed"] == 30 and counts["annotated_now"] == counts["images"] - 30
    assert out.read_bytes() == whole.read_bytes() and not partial.exists()

    calls.clear()
    with pytest.raises(_Killed):
        annotate(synth_market, tmp_path / "b.csv", Dies(), splits=("train",), batch=10, progress=False)

    class Other:
        settings = {**estimator.settings, "threshold": 0.5}

    with pytest.raises(DataError, match=r"\(threshold differ"):
        annotate(synth_market, tmp_path / "b.csv", Other(), splits=("train",), batch=10, progress=False)


def test_a_plain_folder_of_crops_of_any_size(estimator, synth_market, tmp_path):
    folder = tmp_path / "crops"
    sizes = {}
    for i, p in enumerate(sorted((synth_market / "bounding_box_train").glob("*.jpg"))[:9]):
        h, w = [(128, 64), (200, 80), (96, 41)][i % 3]
        sub = folder / f"cam{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.open(p).resize((w, h)).save(sub / f"person{i}.png")
        sizes[f"person{i}.png"] = (h, w)
    out = tmp_path / "crops.csv"
    counts = annotate(folder, out, estimator, batch=4, progress=False)
    assert counts["source"] == "folder" and counts["images"] == 9
    poses = read_annotations(out, sizes)  # each row inside its own image
    assert {n: p.size for n, p in poses.items()} == sizes
    direct = estimator([Image.open(folder / "cam0" / "person0.png").convert("RGB")])[0]
    assert poses["person0.png"] == direct
    Image.new("RGB", (40, 80)).save(folder / "cam1" / "person0.png")
    with pytest.raises(DataError, match="two images are named person0.png"):
        list_images(folder)


# ------------------------------------------------------------------------------------------- agreement
def _rows(*poses):
    return {f"{i}.jpg": np.asarray(p, np.float32) for i, p in enumerate(poses)}


def test_pck_counts_by_hand():
    ref = np.full((18, 2), -1.0, np.float32)
    for name, xy in {"Rsho": (20, 30), "Lsho": (40, 30), "Rhip": (22, 70), "Lhip": (38, 70), "nose": (30, 10),
                     "Rank": (25, 120)}.items():
        ref[JOINTS.index(name)] = xy
    assert torso_length(ref) == 40.0  # (30, 30) to (30, 70)
    other = ref.copy()
    other[JOINTS.index("nose")] = (30, 30)  # 20 px away: found (half the torso is 20)
    other[JOINTS.index("Rank")] = (25, 141)  # 21 px away: missed
    other[JOINTS.index("Lsho")] = (-1, -1)  # left out
    other[JOINTS.index("Lwri")] = (50, 60)  # extra
    r = agreement(_rows(ref, ref), _rows(other, ref))
    j = r["joints"]
    assert (j["nose"]["found"], j["nose"]["reference_joints"], j["nose"]["pck"]) == (2, 2, 1.0)
    assert (j["Rank"]["found"], j["Rank"]["pck"]) == (1, 0.5)
    assert (j["Lsho"]["left_out"], j["Lsho"]["pck"]) == (1, 0.5)
    assert j["Lwri"]["extra"] == 1 and j["Lwri"]["pck"] is None
    assert r["pck"] == round(10 / 12, 4) and r["scored_images"] == 2  # 6 joints twice, 2 missed


@real_or_skip
def test_pose_agreement_on_the_real_market_annotations(tmp_path, capsys):
    real = REAL / "market-annotation-train.csv"
    assert main(["pose-agreement", str(real), str(real), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["pck"] == 1.0 and same["common_images"] == 12936
    assert all(j["pck"] == 1.0 and j["left_out"] == j["extra"] == 0 for j in same["joints"].values())

    # A copy with the right wrist dropped from every other image and the nose moved down by 20 px (found where
    # that is within half the torso).
    rows = read_annotation_rows(real)
    poses, expect_rwri, expect_nose = {}, [0, 0], [0, 0]
    rwri, nose = JOINTS.index("Rwri"), JOINTS.index("nose")
    for i, (name, (arr, _)) in enumerate(rows.items()):
        arr = arr.copy()
        torso = torso_length(arr)
        if torso and arr[rwri, 0] != MISSING:
            expect_rwri[1] += 1
            expect_rwri[0] += i % 2
        if torso and arr[nose, 0] != MISSING:
            expect_nose[1] += 1
            expect_nose[0] += 20 <= 0.5 * torso
        if i % 2 == 0:
            arr[rwri] = MISSING
        if arr[nose, 0] != MISSING:
            arr[nose, 1] += 20
        poses[name] = Pose.from_array(arr, (148, 64))
    from pcdms_aug.data.pose import write_annotations
    moved = tmp_path / "moved.csv"
    write_annotations(moved, poses)
    r = compare_files(real, moved)
    assert r["joints"]["Rwri"]["pck"] == round(expect_rwri[0] / expect_rwri[1], 4)
    assert r["joints"]["Rwri"]["left_out"] == expect_rwri[1] - expect_rwri[0]
    assert r["joints"]["nose"]["pck"] == round(expect_nose[0] / expect_nose[1], 4)
    assert 0.1 < r["joints"]["nose"]["pck"] < 0.9  # the move sits inside the range of torso lengths
    assert r["joints"]["neck"]["pck"] == 1.0
    table = format_report(r).splitlines()
    assert table[0].startswith(f"PCK@0.5 torso of moved.csv against {real.name}: {r['pck']:.4f} over 12116 images")
    assert table[1 + 1 + rwri].split()[:3] == ["Rwri", f"{r['joints']['Rwri']['pck']:.4f}", str(expect_rwri[1])]
