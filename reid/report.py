"""The experiment's outputs: results.csv (one row per run), results.md (mean ± std over seeds), two PNG plots."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pcdms_aug.io import atomic_path, atomic_write_text

VARIANTS = ("baseline", "augmented", "filtered")
METRICS = (("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"))
CSV_COLUMNS = ["fraction", "seed", "variant", "mAP", "rank1", "rank5", "rank10", "num_train_real",
               "num_train_generated", "num_train_images", "num_train_ids", "num_query", "num_gallery", "epochs",
               "sec_per_epoch", "wall_s", "model", "loss", "dataset", "device"]


def results_frame(results: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{k: r.get(k) for k in CSV_COLUMNS} for r in results], columns=CSV_COLUMNS)
    order = {v: i for i, v in enumerate(VARIANTS)}
    df["_v"] = df["variant"].map(lambda v: order.get(v, len(order)))
    return df.sort_values(["fraction", "_v", "seed"]).drop(columns="_v").reset_index(drop=True)


def _mean_std(values) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def _gain(df: pd.DataFrame, fraction, variant: str, metric: str) -> str:
    """Mean ± std over seeds of (variant - baseline) on the same seed (same subset, same initial weights)."""
    if variant == "baseline":
        return ""
    a = df[(df.fraction == fraction) & (df.variant == variant)].set_index("seed")[metric]
    b = df[(df.fraction == fraction) & (df.variant == "baseline")].set_index("seed")[metric]
    d = (a - b).dropna()
    if d.empty:
        return "n/a"
    s = f"{d.mean():+.1f}"
    return s + (f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else "")


def markdown(df: pd.DataFrame, title: str, notes: list[str] = ()) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["- values in percent, mean ± sample std over seeds; gain = mean ± std of the per-seed difference "
              "to the baseline (same subset and initial weights)", ""]
    head = ["fraction", "variant", "seeds"] + [label for _, label in METRICS] + ["ΔmAP", "ΔRank-1",
                                                                                "train images (real + gen)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (fraction, variant), g in df.groupby(["fraction", "variant"], sort=False):
        real, gen = g.num_train_real.mean(), g.num_train_generated.mean()
        row = [f"{fraction:g}", variant, str(g.seed.nunique())] + [_mean_std(g[m].tolist()) for m, _ in METRICS]
        row += [_gain(df, fraction, variant, "mAP"), _gain(df, fraction, variant, "rank1"),
                f"{real:.0f} + {gen:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def plot_cmc(results: list[dict], path: Path) -> None:
    """Mean CMC curve (shaded: ± std over seeds) per variant; one panel per fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted({r["fraction"] for r in results})
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.6 * len(fractions), 3.2), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        for variant in VARIANTS:
            curves = [r["cmc"] for r in results if r["fraction"] == fraction and r["variant"] == variant]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.asarray([c[:n] for c in curves])
            ranks = np.arange(1, n + 1)
            ax.plot(ranks, arr.mean(0), label=f"{variant} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(ranks, arr.mean(0) - arr.std(0), arr.mean(0) + arr.std(0), alpha=0.2)
        ax.set_title(f"{fraction * 100:g}% of the real training images", fontsize=10)
        ax.set_ylim(top=100.5)
        ax.set_xlabel("rank")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("matching rate (%)")
    axes[0][0].legend(fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def plot_fraction(df: pd.DataFrame, path: Path) -> None:
    """mAP and Rank-1 against the fraction of real training images, mean ± std over seeds per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (metric, label) in zip(axes, METRICS[:2]):
        for variant in VARIANTS:
            g = df[df.variant == variant].groupby("fraction")[metric]
            if g.ngroups == 0:
                continue
            mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
            ax.errorbar(mean.index * 100, mean.values, yerr=std.values, marker="o", capsize=3, label=variant)
        ax.set_xlabel("real training images (%)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_ylim(top=100.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def write_reports(results: list[dict], out_dir: Path, title: str, notes: list[str] = ()) -> pd.DataFrame:
    df = results_frame(results)
    rounded = df.round({"fraction": 4, "mAP": 3, "rank1": 3, "rank5": 3, "rank10": 3, "sec_per_epoch": 3,
                        "wall_s": 2})
    atomic_write_text(out_dir / "results.csv", rounded.to_csv(index=False))
    atomic_write_text(out_dir / "results.md", markdown(df, title, notes))
    plot_cmc(results, out_dir / "cmc.png")
    plot_fraction(df, out_dir / "map_vs_fraction.png")
    return df
