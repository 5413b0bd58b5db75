"""Generator levers against one set of controls: each lever's augmented (or filtered) runs, per seed, minus the
strongest control of the run that trained the controls (same fraction, seed, subset and initial weights).

    python experiments/reid_levers.py CONTROLS/results.csv NAME=OTHER/results.csv [NAME=...]

CONTROLS holds baseline / baseline_steps / duplicated (and the default augmented run); each NAME=CSV adds a
lever whose augmented or filtered rows are compared with those controls. Prints one markdown row per lever.
"""
from __future__ import annotations

import sys

import pandas as pd

from reid.report import strongest_control


def lever_rows(controls: pd.DataFrame, levers: dict[str, pd.DataFrame]) -> list[str]:
    rows = ["| views | fraction | mAP | − strongest control, per seed | paired | positive seeds |", "|---|---|---|---|---|---|"]
    for name, df in {"default (4 random-pose views)": controls, **levers}.items():
        for fraction in sorted(df.fraction.unique()):
            best = strongest_control(controls, fraction)["value"]
            own = df[(df.fraction == fraction) & df.variant.isin(["augmented", "filtered"])].set_index("seed")["mAP"]
            gain = (own - best).dropna()
            if gain.empty:
                continue
            per_seed = " / ".join(f"{gain[s]:+.1f}" for s in gain.index)
            spread = f"{gain.mean():+.1f}" + (f" ± {gain.std(ddof=1):.1f}" if len(gain) > 1 else "")
            rows.append(f"| {name} | {fraction:g} | {own[gain.index].mean():.1f} | {per_seed} | {spread} | "
                        f"{int((gain > 0).sum())} of {len(gain)} |")
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    controls = pd.read_csv(argv[0])
    levers = {}
    for arg in argv[1:]:
        name, _, path = arg.partition("=")
        levers[name] = pd.read_csv(path)
    print("\n".join(lever_rows(controls, levers)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
