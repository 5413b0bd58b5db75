"""Contact sheet of stage-3 sampling variants on the first pairs of a pairs CSV (docs/stage3_refine_noise.jpg).

    python scripts/stage3_sheet.py PAIRS DATASET OUT.jpg LABEL=DIR [LABEL=DIR ...]

Each DIR holds ``<from>_to_<to>.png`` written by ``pcdms-aug synthesize-pairs``; columns: source, target pose,
truth, then one per DIR.
"""
import sys

from PIL import Image

from pcdms_aug.data.market import MarketDataset, load_image
from pcdms_aug.pose import read_annotations, read_pairs
from pcdms_aug.metrics.evaluate import generated_name
from pcdms_aug.viz import contact_sheet, pose_tile


def main(pairs_csv, dataset, out, *columns, n=8):
    ds = MarketDataset(dataset)
    poses = {}
    for split in ("train", "test", "query"):
        poses.update(read_annotations(ds.root / f"market-annotation-{split}.csv"))
    cols = [c.split("=", 1) for c in columns]
    rows = [[load_image(ds.path_of(f)), pose_tile(poses[t]), load_image(ds.path_of(t))] +
            [Image.open(f"{d}/{generated_name(f, t)}") for _, d in cols] for f, t in read_pairs(pairs_csv)[:n]]
    sheet = contact_sheet(rows, col_labels=["source", "pose", "truth"] + [label for label, _ in cols])
    sheet.convert("RGB").save(out, quality=90)


if __name__ == "__main__":
    main(*sys.argv[1:])
