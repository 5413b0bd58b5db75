"""Contact sheet of stage-3 sampling variants on the first pairs of a pairs CSV (docs/stage3_refine_noise.jpg).

    python experiments/stage3_sheet.py PAIRS DATASET OUT.jpg LABEL=DIR [LABEL=DIR ...]

Each DIR holds ``<from>_to_<to>.png`` written by ``pcdms-aug synthesize-pairs``; columns: source, target pose,
one per DIR, truth.
"""
import sys

from pcdms_aug.data.market import MarketDataset
from pcdms_aug.data.pose import read_annotations, read_pairs
from pcdms_aug.data.viz import pair_sheet


def main(pairs_csv, dataset, out, *columns, n=8):
    ds = MarketDataset(dataset)
    poses = {}
    for split in ("train", "test", "query"):
        poses.update(read_annotations(ds.root / f"market-annotation-{split}.csv"))
    sheet = pair_sheet(read_pairs(pairs_csv)[:n], ds, poses, dict(c.split("=", 1) for c in columns))
    sheet.convert("RGB").save(out, quality=90)


if __name__ == "__main__":
    main(*sys.argv[1:])
