"""The gain of the views against the strength of the real-only model: one point per fraction of real images.

    python experiments/reid_curve.py OUT.png "TITLE" RESULTS.csv [RESULTS.csv ...]
    python experiments/reid_curve.py OUT.png "TITLE" "world 7=A.csv,B.csv" "world 11=C.csv"

Each RESULTS.csv is a `reid-experiment` results.csv (every control and `augmented`, paired by seed); their rows
are pooled (one folder per fraction, or one folder for all). LABEL=CSV[,CSV...] draws a series of its own (one
world, one generator): its points joined, its own colour, the table's first column. x: the mean mAP of the control with the highest
mean (the baseline's strength at that fraction); y: augmented minus that control, mean over seeds with its 95 %
Student-t interval (reid.stats). Prints the table in markdown.
"""
from __future__ import annotations

import math
import sys

import pandas as pd

from reid import stats


def curve_rows(df: pd.DataFrame, variant: str = "augmented") -> list[dict]:
    rows = []
    for fraction in sorted(df.fraction.unique()):
        best = stats.gain_over_best_mean(df, fraction, variant)
        if best is None:
            continue
        control = df[(df.fraction == fraction) & (df.variant == best.control) & df.seed.isin(best.diffs.index)]
        rows.append({"fraction": fraction, "control": best.control, "control_mAP": control.mAP.mean(),
                     "seeds": best.n, "gain": best.mean, "low": best.low, "high": best.high, "call": best.call})
    return rows


def parse_series(args: list[str]) -> dict[str, list[str]]:
    """{label: [csv, ...]}; plain CSV paths form one unlabelled series ("")."""
    series: dict[str, list[str]] = {}
    for arg in args:
        label, sep, paths = arg.rpartition("=") if "=" in arg else ("", "", arg)
        series.setdefault(label, []).extend(p for p in paths.split(",") if p)
    return series


def plot(series: dict[str, list[dict]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6 + (0.16 * len(series) if any(series) else 0)))
    for i, (label, rows) in enumerate(series.items()):
        colour = f"C{i}"
        x = [r["control_mAP"] for r in rows]
        y = [r["gain"] for r in rows]
        # A 2-seed t-interval is +-12.7 standard deviations: drawn, it flattens every other point (the table has it).
        bar = [not math.isnan(r["low"]) and r["seeds"] >= 3 for r in rows]
        lo = [r["gain"] - r["low"] if b else 0 for r, b in zip(rows, bar)]
        hi = [r["high"] - r["gain"] if b else 0 for r, b in zip(rows, bar)]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=4, color=colour, label=label or None,
                    ls="-" if len(series) > 1 else "none", lw=0.8)
        for r in rows:
            ax.annotate(f"{r['fraction'] * 100:g}% ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})",
                        (r["control_mAP"], r["gain"]), textcoords="offset points", xytext=(6, 6), fontsize=7,
                        color=colour)
    if any(series):
        # below the axes: with several series no corner of the plot is free of points
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.18), frameon=False)
    ax.axhline(0, color="grey", lw=0.8)
    ax.margins(y=0.25)
    ax.set_xlim(0, 100)  # the whole range of a real-only model's mAP, so curves of several runs compare
    ax.set_xlabel("real-only model: mAP of the control with the highest mean (%)")
    ax.set_ylabel("augmented − control (mAP; 95 % CI, 3+ seeds)")
    import textwrap

    ax.set_title(textwrap.fill(title, 70), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    out, title = argv[0], argv[1]
    series = {label: curve_rows(pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True))
              for label, csvs in parse_series(argv[2:]).items()}
    labelled = any(series)
    print(("| series " if labelled else "") + "| fraction | control with the highest mean | its mAP | seeds | "
          "augmented − it | 95 % interval | called |")
    print(("|---" if labelled else "") + "|---|---|---|---|---|---|---|")
    for label, rows in series.items():
        for r in rows:
            ci = "n/a" if math.isnan(r["low"]) else f"[{r['low']:+.1f}, {r['high']:+.1f}]"
            print((f"| {label} " if labelled else "") + f"| {r['fraction'] * 100:g}% | {r['control']} | "
                  f"{r['control_mAP']:.1f} | {r['seeds']} | {r['gain']:+.1f} | {ci} | {r['call']} |")
    plot(series, out, title)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
