import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data.doctor import inspect_dataset
from pcdms_aug.data.pose import read_annotations

from .conftest_data import REAL, real_or_skip


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (64, 128), (90, 80, 70)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory):
    """A Market-1501-layout folder whose file names are those of the real annotation CSVs (no real pixels)."""
    if not (REAL / "market-annotation-train.csv").is_file():
        pytest.skip(f"real annotations not found at {REAL}")
    root = tmp_path_factory.mktemp("market") / "market1501" / "Market-1501-v15.09.15"
    data = _jpeg_bytes()
    train = read_annotations(REAL / "market-annotation-train.csv")
    test = read_annotations(REAL / "market-annotation-test.csv")
    for folder, names in (("bounding_box_train", train), ("bounding_box_test", test)):
        (root / folder).mkdir(parents=True)
        for n in names:
            (root / folder / n).write_bytes(data)
    # Queries are in neither CSV: one per test identity, with a frame number the gallery does not use.
    (root / "query").mkdir()
    pids = sorted({n[:4] for n in test if n[:4] not in ("-1_c", "0000")})
    for i, pid in enumerate(pids):
        (root / "query" / f"{pid}_c1s1_9{i:05d}_00.jpg").write_bytes(data)
    return root, train, test, len(pids)


@real_or_skip
def test_inspect_real_annotations_counts(real_layout, capsys):
    root, train, test, nq = real_layout
    rc = main(["inspect", str(root.parent.parent), "--json", "--no-image-check", "--annotations",
               str(REAL / "market-annotation-train.csv"), str(REAL / "market-annotation-test.csv")])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["train_images"], r["train_ids"]) == (12936, 751)
    assert (r["gallery_images"], r["gallery_ids"]) == (19732, 750)
    assert (r["query_images"], r["query_ids"]) == (nq, 750)
    assert (r["junk_images"], r["distractor_images"]) == (3819, 2798)
    assert r["cameras"] == [1, 2, 3, 4, 5, 6]
    assert r["annotated_images"] == 12936 + 19732 and r["unannotated_images"] == nq
    assert r["orphan_annotations"] == 0
    vis = np.concatenate([np.stack([p.visible for p in d.values()]) for d in (train, test)])
    assert r["missing_joint_fraction"] == pytest.approx(1 - vis.mean(), abs=1e-4)
    assert isinstance(r["problems"], list)


def _small(tmp_path):
    root = tmp_path / "ds"
    names = {"bounding_box_train": ["0001_c1s1_000001_01.jpg", "0001_c2s1_000002_01.jpg"],
             "query": ["0002_c1s1_000001_01.jpg"], "bounding_box_test": ["0002_c2s1_000001_01.jpg"]}
    for folder, ns in names.items():
        (root / folder).mkdir(parents=True)
        for n in ns:
            Image.new("RGB", (64, 128)).save(root / folder / n)
    return root


def test_inspect_finds_problems(tmp_path):
    root = _small(tmp_path)
    (root / "bounding_box_test" / "0002_c3s1_000009_01.jpg").write_bytes(b"broken")
    ann = tmp_path / "a.csv"
    row = "[" + ", ".join(["10"] * 18) + "]"
    ann.write_text(f"name:keypoints_y:keypoints_x\n0001_c1s1_000001_01.jpg: {row}: {row}\n"
                   f"0009_c1s1_000001_01.jpg: {row}: {row}\n")
    r = inspect_dataset(root, [ann])
    assert r["annotated_images"] == 1 and r["orphan_annotations"] == 1 and r["unannotated_images"] == 4
    text = "\n".join(r["problems"])
    assert "unreadable image" in text and "0002_c3s1_000009_01.jpg" in text
    assert "1 annotation rows name images not in the dataset" in text
    assert "1 training images have no annotation row" in text


def test_inspect_cli_errors_name_the_fault(tmp_path, capsys):
    root = _small(tmp_path)
    ann = tmp_path / "bad.csv"
    ann.write_text("name:keypoints_y:keypoints_x\n0001_c1s1_000001_01.jpg: [1, 2]: [3, 4]\n")
    assert main(["inspect", str(root), "--annotations", str(ann)]) == 2
    assert f"{ann}:2: " in capsys.readouterr().err
    shutil.rmtree(root / "query")
    assert main(["inspect", str(root)]) == 2
    assert "missing split folder(s) query" in capsys.readouterr().err
    Image.new("RGB", (64, 128)).save(root / "bounding_box_train" / "badname.jpg")
    (root / "query").mkdir()
    assert main(["inspect", str(root)]) == 2
    assert "badname.jpg" in capsys.readouterr().err


def test_inspect_readable_summary(tmp_path, capsys):
    root = _small(tmp_path)
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "2 images" in out and "problems:" in out
