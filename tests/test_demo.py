"""The one-command demo, end to end at a toy size: every part runs and the report says what it measured."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute of CPU: generation, four re-ID variants, synthesis metrics
def test_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pcdms_aug", "demo", "--out", str(out), "--train-ids", "12", "--test-ids", "8", "--fraction", "0.5",
           "--seeds", "0", "--epochs", "1", "--metric-pairs", "6", "--steps", "2"]
    env = {"OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "DDIM" in report and "baseline" in report and "augmented" in report
    assert "(stages prior, inpaint)" in report  # the views are stage 2's by default
    settings = json.loads(next(out.glob("generated/*/generate.json")).read_text())["settings"]
    assert settings["stages"] == ["prior", "inpaint"]
    # The report leads with the gain over the strongest control, per seed, and says in words what it shows.
    lead = report.index("## Did the generated views help beyond the controls?")
    assert report.count("## Did the generated views help beyond the controls?") == 1  # not again in the re-ID part
    assert lead < report.index("## Downstream re-ID") < report.index("## Synthesis")
    assert "the control with the highest mean" in report[lead:] and "| mean ± std |" in report
    assert "not called: 1 seed run, fewer than the 5 needed" in report  # one seed calls no gain
    # What the generator saw: the world of seed 0 holds people the shipped weights trained on, or not (by chance:
    # this small world draws its own identity numbers), said either way.
    saw = report[report.index("What the generator saw: generator of the views trained on the shipped tiny "
                              "weights: the synthetic world of seed 0"):lead]
    assert "50%: " in saw and ("the paper's protocol" in saw or "never saw" in saw or "some of the subset's" in saw)
    assert "help" in report[lead:report.index("## Downstream re-ID")]
    rows = (out / "results.csv").read_text().splitlines()
    variants = {r.split(",")[2] for r in rows[1:]}
    assert variants == {"baseline", "augmented", "baseline_steps", "duplicated"}
    steps = {r.split(",")[2]: int(r.split(",")[8]) for r in rows[1:]}
    assert rows[0].split(",")[8] == "steps"
    assert steps["baseline_steps"] == steps["duplicated"] == steps["augmented"] > steps["baseline"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"final", "coarse"}
    for row in metrics.values():
        assert 0 < row["generated"]["ssim"] <= 1 and row["n_pairs"] == 6
    assert any(out.glob("generated/*/*")), "no generated views"
    again = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
