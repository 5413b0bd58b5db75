"""Several `reid-experiment` folders as one report: seeds run on other machines, at other times or under other
paths, pooled so that the paired statistics see every seed.

    python experiments/reid_merge.py OUT DIR [DIR ...]

Each DIR holds `results.csv` and `runs/<run>.json` (for the CMC curves). Writes OUT/results.csv, paired.csv,
results.md and the two plots, as `reid-experiment` does. Refused: a run (fraction, seed, variant) in two folders,
and runs of one variant whose settings differ beyond where their data lie (the fingerprint without paths and
replayed schedules) or whose views came from another generator.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.paths import check_out_dir
from reid.report import write_reports
from reid.experiment import run_id

# where things lie, and what a control replays of its own seed's augmented run: not how the runs were made
NOT_SETTINGS = ("root", "data_dir", "generated_dir", "out_dir", "replays", "repeat_to")


def read_folder(folder: Path) -> list[dict]:
    csv = folder / "results.csv"
    if not csv.is_file():
        raise DataError("no results.csv: not a reid-experiment folder", folder)
    rows = []
    frame = pd.read_csv(csv)
    for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        path = folder / "runs" / f"{run_id(row['fraction'], int(row['seed']), row['variant'])}.json"
        if not path.is_file():
            raise DataError("a run of results.csv has no run file", path)
        run = json.loads(path.read_text())
        settings = {k: v for k, v in run["fingerprint"].items() if k not in NOT_SETTINGS}
        # the run file holds the run; results.csv adds what the generator saw (computed by the experiment)
        added = {k: v for k, v in row.items() if k not in run}
        rows.append({**run, **added, "_settings": settings, "_from": str(path)})
    return rows


def merge(folders: list[Path]) -> list[dict]:
    runs, first = {}, {}
    for folder in folders:
        for r in read_folder(folder):
            key = (r["fraction"], r["seed"], r["variant"])
            if key in runs:
                raise DataError(f"run {run_id(*key)} is in two folders ({runs[key]['_from']})", r["_from"])
            ref = first.setdefault(r["variant"], r)
            diff = sorted(k for k in set(ref["_settings"]) | set(r["_settings"])
                          if ref["_settings"].get(k) != r["_settings"].get(k))
            if diff:
                what = ", ".join(f"{k}: {ref['_settings'].get(k)!r} -> {r['_settings'].get(k)!r}" for k in diff[:4])
                raise DataError(f"settings differ from {ref['_from']} ({what})", r["_from"])
            if r.get("generator_trained_on") != ref.get("generator_trained_on"):
                raise DataError(f"views from another generator than {ref['_from']}'s", r["_from"])
            runs[key] = r
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs.values()]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, folders = Path(argv[0]), [Path(a) for a in argv[1:]]
    try:
        out = check_out_dir(out, "OUT", inputs=[("DIR", f) for f in folders])
        results = merge(folders)
        out.mkdir(parents=True, exist_ok=True)
        notes = ["merged from " + ", ".join(str(f) for f in folders) + " (experiments/reid_merge.py)"]
        write_reports(results, out, "Re-ID: generated views against the controls (merged)", notes)
    except DataError as e:
        print(f"reid_merge: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(results)} runs -> {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
