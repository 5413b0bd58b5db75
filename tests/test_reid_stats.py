"""Statistics that fit the noise: paired differences per control with 95 % t-intervals, the control with the
highest mean, no gain called on too few seeds, and the runs whose best step was their cap."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reid import report, stats


def frame(aug, dup=None, base=10.0, fraction=0.2):
    """baseline flat, duplicated 12 + seed (or given), augmented as given; one row per (seed, variant)."""
    rows = []
    for seed, a in enumerate(aug):
        d = 12.0 + seed if dup is None else dup[seed]
        rows += [{"fraction": fraction, "seed": seed, "variant": "baseline", "mAP": base, "rank1": base},
                 {"fraction": fraction, "seed": seed, "variant": "duplicated", "mAP": d, "rank1": d},
                 {"fraction": fraction, "seed": seed, "variant": "augmented", "mAP": a, "rank1": a}]
    return pd.DataFrame(rows)


def test_t_interval_is_students():
    values = [1.0, 3.0, 2.0, 6.0, 4.0]
    mean, low, high = stats.t_interval(values)
    half = sps.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert mean == pytest.approx(3.2) and (low, high) == pytest.approx((3.2 - half, 3.2 + half))
    assert math.isnan(stats.t_interval([2.0])[1]) and stats.t_interval([2.0])[0] == 2.0
    assert stats.t_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_paired_against_each_control_and_the_best_mean_one():
    df = frame([16.0, 17.0, 15.0, 18.0, 17.0])  # duplicated: 12..16, mean 14 > baseline 10
    assert stats.best_mean_control(df, 0.2, "augmented") == "duplicated"
    best = stats.gain_over_best_mean(df, 0.2, "augmented")
    assert best.diffs.tolist() == [4.0, 4.0, 1.0, 3.0, 1.0] and best.n == 5
    assert best.mean == pytest.approx(2.6) and best.low > 0 and best.call == "gain"
    by = {p.control: p for p in stats.paired_all(df, 0.2, "augmented")}
    assert set(by) == {"baseline", "duplicated"} and by["baseline"].mean == pytest.approx(6.6)
    # The best-mean control, not the per-seed maximum: baseline wins seed 0 here, duplicated on average.
    df2 = frame([16.0] * 5, dup=[5.0, 15.0, 15.0, 15.0, 15.0])
    assert stats.best_mean_control(df2, 0.2, "augmented") == "duplicated"
    assert stats.gain_over_best_mean(df2, 0.2, "augmented").diffs.tolist() == [11.0, 1.0, 1.0, 1.0, 1.0]


def test_calls_need_five_seeds_and_an_interval_excluding_zero():
    assert stats.gain_over_best_mean(frame([20.0, 21.0, 22.0]), 0.2, "augmented").call == "too few seeds"
    assert stats.gain_over_best_mean(frame([17.0, 12.0, 19.0, 13.0, 18.0]), 0.2, "augmented").call == \
        "no difference"
    assert stats.gain_over_best_mean(frame([8.0, 9.0, 10.0, 11.0, 12.0]), 0.2, "augmented").call == "loss"


def test_verdict_and_tables_say_what_was_measured():
    gain = report.verdict(frame([16.0, 17.0, 15.0, 18.0, 17.0]), 0.2, "augmented")
    assert gain.startswith("20% of the real images, augmented: helped beyond the controls: +2.6 (95 % CI [")
    assert "over duplicated, the control with the highest mean (positive on 5 of 5 seeds)" in gain
    assert "over baseline +6.6 (95 % CI" in gain and "controls not run: baseline_steps" in gain
    few = report.verdict(frame([20.0, 21.0, 22.0]), 0.2, "augmented")
    assert "not called: 3 seeds run, fewer than the 5 needed to call a gain" in few and "helped" not in few
    assert "no measurable gain" in report.verdict(frame([17.0, 12.0, 19.0, 13.0, 18.0]), 0.2, "augmented")
    one = report.verdict(frame([16.0]), 0.2, "augmented")
    assert "no interval (one seed)" in one and "not called: 1 seed run" in one
    rows = report.seed_table(frame([16.0, 11.0, 18.0]), 0.2, "augmented")
    assert rows[0] == "| seed | baseline | duplicated | augmented | augmented − duplicated |"
    assert "| 1 | 10.0 | 13.0 | 11.0 | **-2.0** |" in rows
    assert rows[-1].startswith("| mean ± std | 10.0 ± 0.0 | 13.0 ± 1.0 | 15.0 ± 3.6 | **+2.0 (95 % CI [")
    table = report.paired_table(frame([16.0, 17.0, 15.0, 18.0, 17.0]), 0.2, "augmented")
    assert table[2].startswith("| baseline | +6.6 | [") and table[2].endswith("| 5 | 5 | gain |")
    assert table[3].startswith("| **duplicated** (highest mean) | +2.6 |")
    md = report.markdown(frame([16.0, 11.0, 18.0]).assign(
        protocol="epochs", steps=1, num_train_real=1, num_train_generated=0, num_train_repeated=0, rank5=0.0,
        rank10=0.0), "t")
    assert "| **-2.0** |" in md and "vs duplicated" in md


def test_paired_frame_and_runs_at_their_cap():
    df = frame([16.0, 17.0, 15.0, 18.0, 17.0])
    pf = stats.paired_frame(df)
    assert list(pf.control) == ["baseline", "duplicated"] and list(pf.best_mean_control) == [False, True]
    assert pf.per_seed[1] == "0:+4.00 1:+4.00 2:+1.00 3:+3.00 4:+1.00" and set(pf.call) == {"gain"}
    df = df.assign(best_step=[1000, 500, 900] * 5, step_cap=[1000, 1000, 900] * 5, val_mAP=1.0)
    capped = stats.at_cap(df)
    assert capped.tolist() == [True, False, True] * 5
    line = report.cap_line(df)
    assert "10 of 15 runs (67%; baseline 5/5, augmented 5/5, duplicated 0/5)" in line and "raise" not in line
    own = df.assign(protocol=["converged", "equal_steps:converged", "converged"] * 5)
    assert "the cap, not a plateau, ended 10 run(s) on their own schedule: raise max_steps" in report.cap_line(own)
    assert report.cap_line(df.drop(columns="step_cap")) is None


def test_curve_draws_one_series_per_world(tmp_path, capsys):
    """experiments/reid_curve.py: LABEL=CSV,CSV pools a world's folders into one series; each series gets its
    table rows (gain over that world's best-mean control per fraction) and the picture is written."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "reid_curve.py"
    spec = importlib.util.spec_from_file_location("reid_curve", script)
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    frame([16.0, 17.0, 15.0, 18.0, 17.0], fraction=0.1).to_csv(tmp_path / "a10.csv", index=False)
    frame([11.0, 9.0, 12.0, 10.0, 13.0], fraction=0.2).to_csv(tmp_path / "a20.csv", index=False)
    frame([20.0, 21.0, 22.0], fraction=0.1).to_csv(tmp_path / "b10.csv", index=False)
    assert curve.parse_series([f"world 7={tmp_path}/a10.csv,{tmp_path}/a20.csv", f"world 11={tmp_path}/b10.csv"]) \
        == {"world 7": [f"{tmp_path}/a10.csv", f"{tmp_path}/a20.csv"], "world 11": [f"{tmp_path}/b10.csv"]}
    assert curve.parse_series([f"{tmp_path}/a10.csv"]) == {"": [f"{tmp_path}/a10.csv"]}
    out = tmp_path / "curve.png"
    assert curve.main([str(out), "two worlds", f"world 7={tmp_path}/a10.csv,{tmp_path}/a20.csv",
                       f"world 11={tmp_path}/b10.csv"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| world")]
    assert rows == ["| world 7 | 10% | duplicated | 14.0 | 5 | +2.6 | [+0.7, +4.5] | gain |",
                    "| world 7 | 20% | duplicated | 14.0 | 5 | -3.0 | [-5.0, -1.0] | loss |",
                    "| world 11 | 10% | duplicated | 13.0 | 3 | +8.0 | [+8.0, +8.0] | too few seeds |"]
    assert out.stat().st_size > 10_000
