"""Statistics over seeds that fit the noise of small re-ID runs.

Controls of a single seed differ by up to ~11 mAP, so a gain is read from paired differences: on each seed the
augmented run and a control share the subset and the initial weights, and ``augmented - control`` per seed
removes what the seed alone does. For every control the mean of those differences gets a 95 % Student-t
interval; the headline is the gain over the control with the highest mean (the hardest one on average, chosen
without looking at the augmented run). A gain, or a loss, is called only when at least :data:`MIN_SEEDS`
seeds were run and the interval excludes 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

CONTROLS = ("baseline", "baseline_steps", "duplicated")  # real images only
MIN_SEEDS = 5  # fewer seeds than this: differences are reported, no gain is called
LEVEL = 0.95


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of the mean's two-sided Student-t interval; low = high = nan below two values."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sem = stats.sem(values)
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


@dataclass(frozen=True)
class Paired:
    """``variant - control`` on the seeds both ran, with its t-interval."""

    variant: str
    control: str
    diffs: pd.Series  # per seed
    mean: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def call(self) -> str:
        """gain | loss | no difference | too few seeds (fewer than MIN_SEEDS: nothing is called)."""
        if self.n < MIN_SEEDS:
            return "too few seeds"
        if self.low > 0:
            return "gain"
        if self.high < 0:
            return "loss"
        return "no difference"

    def interval(self) -> str:
        if math.isnan(self.low):
            return "no interval (one seed)"
        return f"95 % CI [{self.low:+.1f}, {self.high:+.1f}]"

    def text(self) -> str:
        return f"{self.mean:+.1f} ({self.interval()}, {self.n} seed{'s' if self.n != 1 else ''})"


def _by_seed(df: pd.DataFrame, fraction, variant: str, metric: str) -> pd.Series:
    rows = df[(df.fraction == fraction) & (df.variant == variant)]
    return rows.set_index("seed")[metric].dropna()


def paired(df: pd.DataFrame, fraction, variant: str, control: str, metric: str = "mAP") -> Paired:
    diffs = (_by_seed(df, fraction, variant, metric) - _by_seed(df, fraction, control, metric)).dropna()
    mean, low, high = t_interval(diffs.tolist())
    return Paired(variant, control, diffs, mean, low, high)


def controls_run(df: pd.DataFrame, fraction) -> list[str]:
    present = set(df[df.fraction == fraction].variant)
    return [c for c in CONTROLS if c in present]


def best_mean_control(df: pd.DataFrame, fraction, variant: str, metric: str = "mAP") -> str | None:
    """The control with the highest mean over the seeds the variant ran (ties: the first in CONTROLS)."""
    seeds = set(_by_seed(df, fraction, variant, metric).index)
    means = {}
    for c in controls_run(df, fraction):
        values = _by_seed(df, fraction, c, metric)
        values = values[values.index.isin(seeds)]
        if not values.empty:
            means[c] = values.mean()
    return max(means, key=lambda c: (means[c], -CONTROLS.index(c))) if means else None


def paired_all(df: pd.DataFrame, fraction, variant: str, metric: str = "mAP") -> list[Paired]:
    """One Paired per control run, in CONTROLS order (empty when the variant or every control is missing)."""
    out = [paired(df, fraction, variant, c, metric) for c in controls_run(df, fraction)]
    return [p for p in out if p.n]


def gain_over_best_mean(df: pd.DataFrame, fraction, variant: str, metric: str = "mAP") -> Paired | None:
    control = best_mean_control(df, fraction, variant, metric)
    if control is None:
        return None
    p = paired(df, fraction, variant, control, metric)
    return p if p.n else None


def paired_frame(df: pd.DataFrame, variants=("augmented", "filtered"), metric: str = "mAP") -> pd.DataFrame:
    """Every (fraction, variant, control) paired difference as rows (written as paired.csv)."""
    rows = []
    for fraction in sorted(df.fraction.unique()):
        for variant in variants:
            best = best_mean_control(df, fraction, variant, metric)
            for p in paired_all(df, fraction, variant, metric):
                rows.append({"fraction": fraction, "variant": variant, "control": p.control,
                             "best_mean_control": p.control == best, "metric": metric, "seeds": p.n,
                             "mean_diff": p.mean, "ci_low": p.low, "ci_high": p.high, "call": p.call,
                             "per_seed": " ".join(f"{s}:{v:+.2f}" for s, v in p.diffs.items())})
    return pd.DataFrame(rows, columns=["fraction", "variant", "control", "best_mean_control", "metric", "seeds",
                                       "mean_diff", "ci_low", "ci_high", "call", "per_seed"])


def at_cap(df: pd.DataFrame) -> pd.Series:
    """Per run: was its best validation step the last step it was allowed (so a longer run might do better)?

    NaN where the run has no validation (not converged) or records no cap.
    """
    if "step_cap" not in df or "best_step" not in df:
        return pd.Series(math.nan, index=df.index)
    known = df.step_cap.notna() & df.best_step.notna() & df.val_mAP.notna()
    return (df.best_step >= df.step_cap).where(known)
