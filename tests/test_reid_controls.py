"""Training length and the controls: schedules in steps, replayed schedules, convergence, duplicated images, and
gains reported against the strongest control (real torchreid at a toy size)."""
import math

import pandas as pd
import pytest
import torch

from pcdms_aug.utils.errors import DataError
from reid import experiment, report, schedule, training
from reid.datasets import SYNTHETIC, repeat_items
from tests.reid_fixtures import build_fake_generated

SMALL = dict(epochs=1, batch_size=8, height=32, width=16, batch_size_test=32)


@pytest.fixture(scope="module")
def data(synth_market, tmp_path_factory):
    return synth_market.parent, build_fake_generated(tmp_path_factory.mktemp("reid_ctl") / "gen", synth_market)


def test_schedules_in_steps():
    cfg = training.TrainConfig(epochs=8, stepsize=3)
    s = schedule.own_schedule(cfg, 10)
    assert s.total_steps == 80 and s.milestones == [30, 60]  # torchreid's StepLR: a drop every 3 epochs
    s = schedule.own_schedule(training.TrainConfig(epochs=8, scheduler="multi_step", stepsize=[2, 5]), 10)
    assert s.milestones == [20, 50]
    s = schedule.own_schedule(training.TrainConfig(max_steps=100, lr_steps=[70, 30]), 10)
    assert (s.total_steps, s.milestones) == (100, [30, 70])  # the same for every run, whatever its size
    s = schedule.own_schedule(training.TrainConfig(max_steps=100, lr_steps=[70], converge=True), 10)
    assert s.milestones == []  # converge: drops come from plateaus
    f = schedule._lr_factor(schedule.Schedule(10, [3, 6]), 0.1)
    assert [f(i) for i in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(DataError, match="lr_steps needs max_steps"):
        training.TrainConfig(lr_steps=[3]).check()
    with pytest.raises(DataError, match="eval_every"):
        training.TrainConfig(eval_every=0).check()


def test_repeat_items_fills_evenly():
    items = list(range(10))
    out = repeat_items(items, 25)
    assert len(out) == 25 and out[:20] == items * 2
    assert sorted(out[20:]) == [0, 2, 4, 6, 8]  # the remainder spread over the list, not its start
    assert repeat_items(items, 5) == items and repeat_items(items, None) == items


def _engine(root, gen, **kw):
    cfg = training.TrainConfig(**{**SMALL, **kw})
    dm = training.build_datamanager(cfg, root, training.with_generated_views(SYNTHETIC, gen), use_gpu=False)
    torch.manual_seed(0)
    model = training.build_model(cfg, dm.num_train_pids, "cpu")
    return cfg, training.build_engine(cfg, dm, model, "cpu")


def test_replayed_schedule_runs_its_steps_and_drops(data):
    root, gen = data
    cfg, engine = _engine(root, gen, lr=0.01, gamma=0.5)
    batches = len(engine.train_loader)
    total = batches + 2  # crosses an epoch boundary
    out = schedule.train_steps(engine, cfg, schedule.Schedule(total, [3]))
    assert out["steps"] == total and out["epochs_run"] == 2 and out["lr_milestones"] == [3]
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert out["val_mAP"] is None and out["best_step"] == total


def test_convergence_drops_the_lr_at_a_plateau_then_stops_and_restores_the_best(data):
    root, gen = data
    cfg, engine = _engine(root, gen, lr=0.01, gamma=0.1, eval_every=1, patience=2, plateau_drops=1)
    seen = {}

    def validate(model):  # a best at step 2, then flat: plateau at step 4 (lr drop), stop at step 6
        step = len(seen) + 1
        seen[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return 10.0 if step == 2 else 1.0

    sched = schedule.Schedule(1000, [])
    out = schedule.train_steps(engine, cfg, sched, validate, early_stop=True)
    assert out["steps"] == 6 and out["lr_milestones"] == [4] and out["best_step"] == 2
    assert out["val_mAP"] == 10.0 and [s for s, _ in out["val_curve"]] == [1, 2, 3, 4, 5, 6]
    assert sched.total_steps == 6 and sched.milestones == [4]  # what a control replays
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    now = engine.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in seen[2].items())  # the best step's weights are tested
    assert not all(torch.equal(now[k], v) for k, v in seen[6].items())


def config(root, gen, out, **kw):
    cfg = {"root": str(root), "dataset": "synthetic", "generated_dir": str(gen), "fractions": [0.5],
           "seeds": [0, 1], "variants": ["duplicated", "baseline_steps", "augmented", "baseline"],
           "out_dir": str(out), **SMALL}
    cfg.update(kw)
    return cfg


def test_controls_replay_the_augmented_runs(data, tmp_path):
    root, gen = data
    df = experiment.run_experiment(config(root, gen, tmp_path / "ep", epochs=2), progress=False)
    assert df.attrs["executed"][:2] == ["f0.5_s0_baseline", "f0.5_s1_baseline"]  # each run after what it replays
    csv = pd.read_csv(tmp_path / "ep" / "results.csv")
    for seed, g in csv.groupby("seed"):
        r = g.set_index("variant")
        assert r.steps["baseline_steps"] == r.steps["augmented"] == r.steps["duplicated"] > r.steps["baseline"]
        assert r.num_train_images["duplicated"] == r.num_train_images["augmented"]
        assert r.num_train_repeated["duplicated"] == r.num_train_generated["augmented"] > 0
        assert r.num_train_generated["duplicated"] == 0 == r.num_train_generated["baseline_steps"]
        assert r.protocol["augmented"] == "epochs" and r.protocol["duplicated"] == "equal_steps:epochs"
    gain = report.gain_over_control(df, 0.5, "augmented")
    controls = csv[csv.variant.isin(report.CONTROLS)].groupby("seed").mAP.max()
    expect = csv[csv.variant == "augmented"].set_index("seed").mAP - controls
    assert gain.tolist() == pytest.approx(expect.tolist(), abs=0.002)  # the CSV keeps 3 decimals
    md = (tmp_path / "ep" / "results.md").read_text()
    assert md.index("beyond the controls?") < md.index("| fraction |")  # the verdict leads
    assert "over the strongest control" in md and "equal_steps:epochs" in md
    with pytest.raises(DataError, match="add augmented"):
        experiment.run_experiment(config(root, gen, tmp_path / "x", variants=["baseline_steps"]), progress=False)


def test_converged_protocol_validates_on_held_out_images(data, tmp_path):
    root, gen = data
    kw = dict(converge=True, max_steps=6, eval_every=2, patience=1, val_images=40, seeds=[0],
              variants=["baseline", "augmented", "baseline_steps"])
    experiment.run_experiment(config(root, gen, tmp_path / "cv", **kw), progress=False)
    csv = pd.read_csv(tmp_path / "cv" / "results.csv").set_index("variant")
    assert set(csv.protocol) == {"converged", "equal_steps:converged"}
    assert (csv.num_val > 0).all() and csv.num_val.nunique() == 1  # the same validation images for every run
    assert csv.steps["baseline_steps"] == csv.steps["augmented"] <= 6
    assert csv.val_mAP.between(0, 100).all() and (csv.best_step <= csv.steps).all()
    with pytest.raises(DataError, match="outside the subset"):
        experiment.run_experiment(config(root, gen, tmp_path / "f1", **{**kw, "fractions": [1.0]}), progress=False)


def test_verdict_words_follow_the_per_seed_gains():
    def frame(aug):
        rows = []
        for seed, a in enumerate(aug):
            rows += [{"fraction": 0.2, "seed": seed, "variant": "baseline", "mAP": 10.0},
                     {"fraction": 0.2, "seed": seed, "variant": "duplicated", "mAP": 12.0 + seed},
                     {"fraction": 0.2, "seed": seed, "variant": "augmented", "mAP": a}]
        return pd.DataFrame(rows)

    text = report.verdict(frame([16.0, 17.0, 18.0]), 0.2, "augmented")
    assert "helped beyond the controls" in text and "+4.0 ± 0.0" in text and "3 of 3" in text
    assert "vs duplicated" in text and "not run: baseline_steps" in text
    assert "did not help consistently" in report.verdict(frame([16.0, 11.0, 18.0]), 0.2, "augmented")
    assert "did not help beyond" in report.verdict(frame([11.0, 11.0, 13.0]), 0.2, "augmented")
    one = report.verdict(frame([16.0]), 0.2, "augmented")
    assert "on the one seed run (one seed cannot show that it holds)" in one and "consistently" not in one
    gains = report.gain_over_control(frame([16.0, 11.0, 18.0]), 0.2, "augmented")
    assert list(gains) == [4.0, -2.0, 4.0] and math.isclose(gains.mean(), 2.0)
    rows = report.seed_table(frame([16.0, 11.0, 18.0]), 0.2, "augmented")
    assert rows[0].split(" | ")[1:3] == ["baseline", "duplicated"]  # only the controls that ran
    assert "| 1 | 10.0 | 13.0 | 11.0 | duplicated | **-2.0** |" in rows
    assert rows[-1].endswith("| **+2.0 ± 3.5** |")  # the paired spread of the per-seed gains
    assert "| **-2.0** |" in report.markdown(frame([16.0, 11.0, 18.0]).assign(
        protocol="epochs", steps=1, num_train_real=1, num_train_generated=0, num_train_repeated=0, rank1=0.0,
        rank5=0.0, rank10=0.0), "t")
