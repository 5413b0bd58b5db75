"""The experiment's outputs: results.csv (one row per run), results.md (mean ± std over seeds), two PNG plots."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pcdms_aug.utils.io import atomic_path, atomic_write_text

VARIANTS = ("baseline", "augmented", "filtered", "baseline_steps", "duplicated")
CONTROLS = ("baseline", "baseline_steps", "duplicated")  # real images only
GAINS = ("augmented", "filtered")  # with generated views: compared with the strongest control
METRICS = (("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"))
CSV_COLUMNS = ["fraction", "seed", "variant", "protocol", "mAP", "rank1", "rank5", "rank10", "steps", "best_step",
               "lr_milestones", "val_mAP", "num_train_real", "num_train_generated", "num_train_repeated",
               "num_train_images", "num_train_ids", "num_val", "num_query", "num_gallery", "epochs", "sec_per_step",
               "wall_s", "model", "loss", "dataset", "device"]


def results_frame(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {k: r.get(k) for k in CSV_COLUMNS}
        row["lr_milestones"] = " ".join(str(m) for m in r.get("lr_milestones") or [])
        rows.append(row)
    df = pd.DataFrame(rows, columns=CSV_COLUMNS)
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


def _spread(d: pd.Series) -> str:
    if d.empty:
        return "n/a"
    return f"{d.mean():+.1f}" + (f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else "")


def _diff(df: pd.DataFrame, fraction, variant: str, other: str, metric: str) -> pd.Series:
    """Per-seed (variant - other) on the same seed (same subset, same initial weights)."""
    a = df[(df.fraction == fraction) & (df.variant == variant)].set_index("seed")[metric]
    b = df[(df.fraction == fraction) & (df.variant == other)].set_index("seed")[metric]
    return (a - b).dropna()


def strongest_control(df: pd.DataFrame, fraction, metric: str = "mAP") -> pd.DataFrame:
    """Per seed: the best control run's value and name (the controls present for that seed)."""
    c = df[(df.fraction == fraction) & df.variant.isin(CONTROLS)].dropna(subset=[metric])
    if c.empty:
        return pd.DataFrame(columns=["value", "control"])
    best = c.loc[c.groupby("seed")[metric].idxmax()].set_index("seed")
    return pd.DataFrame({"value": best[metric], "control": best["variant"]})


def gain_over_control(df: pd.DataFrame, fraction, variant: str, metric: str = "mAP") -> pd.Series:
    a = df[(df.fraction == fraction) & (df.variant == variant)].set_index("seed")[metric]
    return (a - strongest_control(df, fraction, metric)["value"]).dropna()


def verdict(df: pd.DataFrame, fraction, variant: str) -> str | None:
    """One sentence: did the views beat the strongest control on every seed (mAP)?"""
    d = gain_over_control(df, fraction, variant)
    if d.empty:
        return None
    best = strongest_control(df, fraction)
    controls = sorted(set(df[(df.fraction == fraction) & df.variant.isin(CONTROLS)].variant))
    per_seed = ", ".join(f"seed {s}: {d[s]:+.1f} vs {best.control[s]}" for s in d.index)
    pos = int((d > 0).sum())
    if pos == len(d) and len(d) > 1:
        word = "helped beyond the controls"
    elif d.mean() <= 0 or pos == 0:
        word = "did not help beyond the controls"
    elif len(d) == 1:
        word = "helped beyond the controls on the one seed run (one seed cannot show that it holds)"
    else:
        word = "did not help consistently beyond the controls (not positive on every seed)"
    lacking = [c for c in CONTROLS if c not in controls]
    return (f"{fraction * 100:g}% of the real images, {variant}: the generated views {word}: "
            f"{_spread(d)} mAP over the strongest control ({per_seed}; positive on {pos} of {len(d)} seeds)"
            + (f"; controls run: {', '.join(controls)} (not run: {', '.join(lacking)})" if lacking else ""))


def seed_table(df: pd.DataFrame, fraction, variant: str) -> list[str]:
    """Markdown rows, one per seed: every control's mAP, the variant's, and its gain over the strongest control."""
    gain = gain_over_control(df, fraction, variant)
    if gain.empty:
        return []
    sub = df[df.fraction == fraction].pivot_table(index="seed", columns="variant", values="mAP", aggfunc="first")
    controls = [c for c in CONTROLS if c in sub.columns]
    best = strongest_control(df, fraction)
    head = ["seed", *controls, variant, "strongest control", f"{variant} − strongest control"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed in gain.index:
        lines.append("| " + " | ".join([str(seed), *[f"{sub.at[seed, c]:.1f}" for c in controls],
                                        f"{sub.at[seed, variant]:.1f}", best.control[seed],
                                        f"**{gain[seed]:+.1f}**"]) + " |")
    lines.append("| paired mean ± std | " + " | ".join(_mean_std(sub[c].dropna().tolist()) for c in
                                                      [*controls, variant]) + f" | | **{_spread(gain)}** |")
    return lines


def verdicts(df: pd.DataFrame) -> list[str]:
    out = []
    for fraction in sorted(df.fraction.unique()):
        out += [v for v in (verdict(df, fraction, g) for g in GAINS) if v]
    return out


def lead_lines(df: pd.DataFrame) -> list[str]:
    """The verdicts in words and the per-seed gains over the strongest control; [] without a gain to report."""
    said = verdicts(df)
    if not said:
        return []
    lines = ["## Did the generated views help beyond the controls?", ""] + [f"- {v}" for v in said] + [""]
    for fraction in sorted(df.fraction.unique()):
        for g in GAINS:
            rows = seed_table(df, fraction, g)
            if rows:
                lines += [f"mAP per seed, {fraction * 100:g}% of the real images, {g}:", "", *rows, ""]
    return lines


def markdown(df: pd.DataFrame, title: str, notes: list[str] = ()) -> str:
    lines = [f"# {title}", "", *lead_lines(df)]
    lines += [f"- {n}" for n in notes]
    lines += ["- values in percent, mean ± sample std over seeds; Δ = mean ± std of the per-seed difference (same "
              "subset and initial weights); Δ control = against the strongest control of each seed (the best of "
              "baseline, baseline_steps, duplicated present)", ""]
    head = ["fraction", "variant", "protocol", "seeds"] + [label for _, label in METRICS] + [
        "ΔmAP vs baseline", "ΔmAP vs strongest control", "ΔRank-1 vs strongest control", "steps",
        "train images (real + gen + repeated)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (fraction, variant), g in df.groupby(["fraction", "variant"], sort=False):
        gains = variant in GAINS
        row = [f"{fraction:g}", variant, "/".join(sorted(set(g.protocol.dropna().astype(str)))) or "n/a",
               str(g.seed.nunique())] + [_mean_std(g[m].tolist()) for m, _ in METRICS]
        row += ["" if variant == "baseline" else _spread(_diff(df, fraction, variant, "baseline", "mAP")),
                _spread(gain_over_control(df, fraction, variant)) if gains else "",
                _spread(gain_over_control(df, fraction, variant, "rank1")) if gains else "",
                f"{g.steps.mean():.0f}" if g.steps.notna().any() else "n/a",
                f"{g.num_train_real.mean():.0f} + {g.num_train_generated.mean():.0f} + "
                f"{g.num_train_repeated.fillna(0).mean():.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _verdict_title(fig, df: pd.DataFrame) -> None:
    """The verdicts in words above the plot: did the views beat the strongest control on every seed?"""
    import textwrap

    said = verdicts(df)
    if said:
        fig.suptitle("\n".join(textwrap.fill(v, 110) for v in said), fontsize=7, y=1.0, va="bottom")


def plot_cmc(results: list[dict], df: pd.DataFrame, path: Path) -> None:
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
    _verdict_title(fig, df)
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
    _verdict_title(fig, df)
    _save_fig(fig, path)
    plt.close(fig)


def write_reports(results: list[dict], out_dir: Path, title: str, notes: list[str] = ()) -> pd.DataFrame:
    df = results_frame(results)
    rounded = df.round({"fraction": 4, "mAP": 3, "rank1": 3, "rank5": 3, "rank10": 3, "val_mAP": 3, "epochs": 3,
                        "sec_per_step": 4, "wall_s": 2})
    atomic_write_text(out_dir / "results.csv", rounded.to_csv(index=False))
    atomic_write_text(out_dir / "results.md", markdown(df, title, notes))
    plot_cmc(results, df, out_dir / "cmc.png")
    plot_fraction(df, out_dir / "map_vs_fraction.png")
    return df
