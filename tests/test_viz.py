import numpy as np
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data.pose import Pose, format_annotation_row
from pcdms_aug.data.viz import contact_sheet


def test_contact_sheet_layout():
    a = np.full((10, 5, 3), 255, np.uint8)
    sheet = contact_sheet([[a, None, a], [a]], col_labels=["x", "y", "z"], row_labels=["r1", "r2"])
    assert sheet.height > 2 * 10 and sheet.width > 3 * 5


def test_render_pose_cli(tmp_path):
    rng = np.random.default_rng(0)
    xy = np.stack([rng.integers(0, 64, 18), rng.integers(0, 128, 18)], 1).astype(float)
    names = [f"000{i}_c1s1_000001_01.jpg" for i in range(1, 4)]
    csv = tmp_path / "a.csv"
    csv.write_text("name:keypoints_y:keypoints_x\n" + "\n".join(
        format_annotation_row(n, Pose.from_array(xy, (128, 64))) for n in names) + "\n")
    out = tmp_path / "sheet.png"
    assert main(["render-pose", "--annotations", str(csv), "--out", str(out), "--size", "128x64"]) == 0
    im = Image.open(out)
    assert im.width >= 3 * 64 and np.asarray(im).max() > 0
    assert main(["render-pose", "--annotations", str(csv), "--names", "9999_c1s1_000001_01.jpg",
                 "--out", str(out)]) == 2
