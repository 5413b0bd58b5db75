"""The experiment's outputs: results.csv (one row per run), paired.csv (each variant against each control, paired
over seeds, with 95 % intervals: reid.stats), results.md (led by those), two PNG plots."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pcdms_aug.utils.io import atomic_path, atomic_write_text

from . import stats
from .stats import CONTROLS

VARIANTS = ("baseline", "augmented", "filtered", "baseline_steps", "duplicated")
GAINS = ("augmented", "filtered")  # with generated views: compared with the controls
METRICS = (("mAP", "mAP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"))
CSV_COLUMNS = ["fraction", "seed", "variant", "protocol", "mAP", "rank1", "rank5", "rank10", "steps", "best_step",
               "step_cap", "lr_milestones", "val_mAP", "num_train_real", "num_train_generated", "num_train_repeated",
               "num_train_images", "num_train_ids", "num_val", "num_query", "num_gallery", "epochs", "sec_per_step",
               "wall_s", "model", "loss", "dataset", "device",
               # what the views' generator saw (reid.provenance), the same for every variant of a seed
               "generator_saw", "num_subset_ids", "gen_seen_subset_ids", "gen_seen_outside_images",
               "gen_seen_val_images", "generator_trained_on"]


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


def strongest_control(df: pd.DataFrame, fraction, metric: str = "mAP") -> pd.DataFrame:
    """Per seed: the best control run's value and name (the controls present for that seed). The maximum of
    noisy runs is biased upward: the report compares with the control of the highest mean instead."""
    c = df[(df.fraction == fraction) & df.variant.isin(CONTROLS)].dropna(subset=[metric])
    if c.empty:
        return pd.DataFrame(columns=["value", "control"])
    best = c.loc[c.groupby("seed")[metric].idxmax()].set_index("seed")
    return pd.DataFrame({"value": best[metric], "control": best["variant"]})


def verdict(df: pd.DataFrame, fraction, variant: str) -> str | None:
    """One sentence: the gain over the control with the highest mean, its 95 % interval, and what it calls."""
    best = stats.gain_over_best_mean(df, fraction, variant)
    if best is None:
        return None
    words = {"gain": "helped beyond the controls",
             "loss": "hurt: below the controls",
             "no difference": "no measurable gain (the 95 % interval includes 0)",
             "too few seeds": f"not called: {best.n} seed{'s' if best.n != 1 else ''} run, fewer than the "
                              f"{stats.MIN_SEEDS} needed to call a gain"}
    others = [f"{p.control} {p.text()}" for p in stats.paired_all(df, fraction, variant)
              if p.control != best.control]
    ran = stats.controls_run(df, fraction)
    lacking = [c for c in CONTROLS if c not in ran]
    pos = int((best.diffs > 0).sum())
    return (f"{fraction * 100:g}% of the real images, {variant}: {words[best.call]}: {best.text()} mAP over "
            f"{best.control}, the control with the highest mean (positive on {pos} of {best.n} seeds)"
            + (f"; over {'; '.join(others)}" if others else "")
            + (f"; controls not run: {', '.join(lacking)}" if lacking else ""))


def seed_table(df: pd.DataFrame, fraction, variant: str) -> list[str]:
    """Markdown rows, one per seed: every control's mAP, the variant's, and its difference from the control with
    the highest mean; then the means and the paired difference with its 95 % interval."""
    best = stats.gain_over_best_mean(df, fraction, variant)
    if best is None:
        return []
    sub = df[df.fraction == fraction].pivot_table(index="seed", columns="variant", values="mAP", aggfunc="first")
    controls = stats.controls_run(df, fraction)
    head = ["seed", *controls, variant, f"{variant} − {best.control}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(seed, col):
        v = sub.at[seed, col] if seed in sub.index and col in sub.columns else float("nan")
        return "" if math.isnan(v) else f"{v:.1f}"

    for seed in best.diffs.index:
        lines.append("| " + " | ".join([str(seed), *[cell(seed, c) for c in controls], cell(seed, variant),
                                        f"**{best.diffs[seed]:+.1f}**"]) + " |")
    seeds = list(best.diffs.index)
    lines.append("| mean ± std | " + " | ".join(_mean_std(sub.loc[seeds, c].dropna().tolist()) for c in
                                               [*controls, variant]) + f" | **{best.text()}** |")
    return lines


def paired_table(df: pd.DataFrame, fraction, variant: str) -> list[str]:
    """Markdown rows, one per control: the paired difference over the seeds with its 95 % interval."""
    rows = stats.paired_all(df, fraction, variant)
    if not rows:
        return []
    best = stats.best_mean_control(df, fraction, variant)
    lines = [f"| control | {variant} − control, mean | 95 % interval | seeds | positive | called |",
             "|---|---|---|---|---|---|"]
    for p in rows:
        ci = "n/a" if math.isnan(p.low) else f"[{p.low:+.1f}, {p.high:+.1f}]"
        name = f"**{p.control}** (highest mean)" if p.control == best else p.control
        lines.append(f"| {name} | {p.mean:+.1f} | {ci} | {p.n} | {int((p.diffs > 0).sum())} | {p.call} |")
    return lines


def verdicts(df: pd.DataFrame) -> list[str]:
    out = []
    for fraction in sorted(df.fraction.unique()):
        out += [v for v in (verdict(df, fraction, g) for g in GAINS) if v]
    return out


def cap_line(df: pd.DataFrame) -> str | None:
    """How many runs had their best validation step at the last step they were allowed, per variant."""
    capped = stats.at_cap(df)
    known = capped.notna()
    if not known.any():
        return None
    per = [f"{v} {int(capped[known & (df.variant == v)].sum())}/{int((known & (df.variant == v)).sum())}"
           for v in VARIANTS if (known & (df.variant == v)).any()]
    n, k = int(known.sum()), int(capped[known].sum())
    own = known & (df.protocol == "converged") if "protocol" in df else known & False
    own_k = int(capped[own].sum())
    return (f"best validation step at the last step the run was allowed (the cap for a run on its own schedule, "
            f"the replayed end for a control): {k} of {n} runs ({k / n:.0%}; {', '.join(per)})"
            + (f"; the cap, not a plateau, ended {own_k} run(s) on their own schedule: raise max_steps"
               if own_k else ""))


_SAW = {"paper": "the paper's protocol: it trained on images of the subset's identities outside the subset",
        "same people": "it saw some of the subset's identities, but none of their images outside the subset",
        "other identities": "none of the subset's identities: people the generator never saw",
        "unknown": "unknown whether it saw the subset's identities"}


def generator_lines(df: pd.DataFrame) -> list[str]:
    """What the generator of the views was trained on, per fraction, with the validation images it saw."""
    if "generator_saw" not in df or not df.generator_saw.notna().any():
        return []
    lines = []
    for fraction, g in df[df.generator_saw.notna()].groupby("fraction"):
        runs = g.drop_duplicates("seed")  # every variant of a seed shares its subset and validation images

        def total(key):
            return None if runs[key].isna().any() else int(runs[key].sum())

        text = f"{fraction * 100:g}%: " + "; ".join(_SAW.get(s, s) for s in sorted(set(runs.generator_saw)))
        ids, outside, val = total("gen_seen_subset_ids"), total("gen_seen_outside_images"), total(
            "gen_seen_val_images")
        if ids is not None:
            text += (f" ({ids} of {total('num_subset_ids')} subset identities, {outside} of their images outside "
                     f"the subsets, summed over {len(runs)} seed(s))")
        n_val = int(runs.num_val.fillna(0).sum())
        if n_val:
            text += ("; validation images it trained on: unknown" if val is None else
                     f"; validation images it trained on: {val} of {n_val}"
                     + (" (FLAGGED: the converged protocol stops on images the generator saw)" if val else ""))
        lines.append(text)
    what = "; ".join(sorted(set(df.generator_trained_on.dropna())))
    return [f"generator of the views trained on {what}: " + "; ".join(lines)]


def lead_lines(df: pd.DataFrame) -> list[str]:
    """The verdicts in words, the paired differences per control and the per-seed values; [] without a gain."""
    said = verdicts(df)
    if not said:
        return []
    lines = ["## Did the generated views help beyond the controls?", ""] + [f"- {v}" for v in said] + [""]
    for fraction in sorted(df.fraction.unique()):
        for g in GAINS:
            rows = seed_table(df, fraction, g)
            if rows:
                lines += [f"mAP, {fraction * 100:g}% of the real images, {g} against each control (paired over "
                          "seeds; a gain or loss is called with at least "
                          f"{stats.MIN_SEEDS} seeds and a 95 % interval that excludes 0):", "",
                          *paired_table(df, fraction, g), "", "Per seed:", "", *rows, ""]
    return lines


def markdown(df: pd.DataFrame, title: str, notes: list[str] = ()) -> str:
    lines = [f"# {title}", "", *lead_lines(df)]
    cap = cap_line(df)
    lines += [f"- {n}" for n in [*notes, *generator_lines(df), *([cap] if cap else [])]]
    lines += ["- values in percent, mean ± sample std over seeds; Δ = mean of the per-seed difference (same "
              "subset and initial weights) with its 95 % Student-t interval; Δ control = against the control "
              "with the highest mean", ""]
    head = ["fraction", "variant", "protocol", "seeds"] + [label for _, label in METRICS] + [
        "ΔmAP vs baseline", "ΔmAP vs best-mean control", "ΔRank-1 vs best-mean control", "steps", "best step",
        "train images (real + gen + repeated)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (fraction, variant), g in df.groupby(["fraction", "variant"], sort=False):
        gains = variant in GAINS
        row = [f"{fraction:g}", variant, "/".join(sorted(set(g.protocol.dropna().astype(str)))) or "n/a",
               str(g.seed.nunique())] + [_mean_std(g[m].tolist()) for m, _ in METRICS]
        vs_best = [stats.gain_over_best_mean(df, fraction, variant, m) if gains else None for m in ("mAP", "rank1")]
        row += ["" if variant == "baseline" else stats.paired(df, fraction, variant, "baseline").text(),
                *["" if p is None else f"{p.text()} vs {p.control}" for p in vs_best],
                f"{g.steps.mean():.0f}" if g.steps.notna().any() else "n/a",
                f"{g.best_step.mean():.0f}" if "best_step" in g and g.best_step.notna().any() else "n/a",
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
    """The verdicts in words above the plot: the gain over the best-mean control and its interval"""
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
    atomic_write_text(out_dir / "paired.csv", stats.paired_frame(df, GAINS).round(
        {"mean_diff": 3, "ci_low": 3, "ci_high": 3}).to_csv(index=False))
    atomic_write_text(out_dir / "results.md", markdown(df, title, notes))
    plot_cmc(results, df, out_dir / "cmc.png")
    plot_fraction(df, out_dir / "map_vs_fraction.png")
    return df
