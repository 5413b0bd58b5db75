"""Training length and the controls: schedules in steps, replayed schedules, convergence, duplicated images, and
gains reported against the strongest control (real torchreid at a toy size)."""
import dataclasses

import pandas as pd
import pytest
import torch

from pcdms_aug.utils.errors import DataError
from reid import experiment, report, schedule, stats, training
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
    gain = stats.gain_over_best_mean(df, 0.5, "augmented")
    means = csv[csv.variant.isin(report.CONTROLS)].groupby("variant").mAP.mean()
    assert gain.control == means.idxmax()
    expect = (csv[csv.variant == "augmented"].set_index("seed").mAP
              - csv[csv.variant == gain.control].set_index("seed").mAP)
    assert gain.diffs.tolist() == pytest.approx(expect.tolist(), abs=0.002)  # the CSV keeps 3 decimals
    md = (tmp_path / "ep" / "results.md").read_text()
    assert md.index("beyond the controls?") < md.index("| fraction |")  # the verdict leads
    assert "the control with the highest mean" in md and "equal_steps:epochs" in md
    assert "not called: 2 seeds run, fewer than the 5 needed" in md
    paired = pd.read_csv(tmp_path / "ep" / "paired.csv")
    assert set(paired.control) == set(report.CONTROLS) and (paired.seeds == 2).all()
    assert paired.best_mean_control.sum() == 1 and set(paired.call) == {"too few seeds"}
    with pytest.raises(DataError, match="add augmented"):
        experiment.run_experiment(config(root, gen, tmp_path / "x", variants=["baseline_steps"]), progress=False)


def test_converged_protocol_validates_on_held_out_images(data, tmp_path):
    root, gen = data
    kw = dict(converge=True, max_steps=6, eval_every=2, patience=1, val_images=40, seeds=[0],
              variants=["baseline", "augmented", "baseline_steps"])
    # The stand-in views were made from this dataset's training images: the paper's protocol, stated.
    experiment.run_experiment(config(root, gen, tmp_path / "cv", generator_trained_on="this", **kw), progress=False)
    csv = pd.read_csv(tmp_path / "cv" / "results.csv").set_index("variant")
    assert set(csv.generator_saw) == {"paper"} and (csv.gen_seen_val_images == csv.num_val).all()
    md = (tmp_path / "cv" / "results.md").read_text()
    assert "the paper's protocol" in md and "validation images it trained on: 40 of 40 (FLAGGED" in md
    assert "best validation step at the last step the run was allowed" in md
    assert set(csv.protocol) == {"converged", "equal_steps:converged"}
    assert (csv.num_val > 0).all() and csv.num_val.nunique() == 1  # the same validation images for every run
    assert csv.steps["baseline_steps"] == csv.steps["augmented"] <= 6
    assert csv.val_mAP.between(0, 100).all() and (csv.best_step <= csv.steps).all()
    # The cap: max_steps for a run on its own schedule, the replayed steps for a control.
    assert csv.step_cap["baseline"] == csv.step_cap["augmented"] == 6
    assert csv.step_cap["baseline_steps"] == csv.steps["augmented"]
    with pytest.raises(DataError, match="outside the subset"):
        experiment.run_experiment(config(root, gen, tmp_path / "f1", **{**kw, "fractions": [1.0]}), progress=False)


def test_finish_on_real_goes_on_with_the_real_images(data, tmp_path):
    root, gen = data
    kw = dict(converge=True, max_steps=6, eval_every=2, patience=1, val_images=40, seeds=[0],
              variants=["baseline", "augmented", "baseline_steps"])
    experiment.run_experiment(config(root, gen, tmp_path / "fr", finish_on_real=True, **kw), progress=False)
    runs = {v: pd.read_json(tmp_path / "fr" / "runs" / f"f0.5_s0_{v}.json", typ="series") for v in kw["variants"]}
    aug = runs["augmented"]
    assert 0 < aug.finish_steps <= 6 and aug.steps == aug.schedule["total_steps"]
    first = aug.steps - aug.finish_steps
    assert [s for s, _ in aug.val_curve][-1] == aug.steps > first  # validated through the second phase
    assert (aug.best_step > first) == aug.finish_chosen
    assert aug.val_mAP == pytest.approx(max(v for _, v in aug.val_curve), abs=1e-3)  # the curve keeps 3 decimals
    assert "finish_steps" not in runs["baseline"]  # no views: nothing to finish
    assert "trained on the real images alone (finish_on_real)" in (tmp_path / "fr" / "results.md").read_text()
    assert runs["baseline_steps"].steps == aug.steps  # a control replays both phases' steps
    ecfg = experiment.make_config(config(root, gen, tmp_path / "x", finish_on_real=True, **kw))
    fp = {on: experiment.fingerprint(dataclasses.replace(ecfg, finish_on_real=on), root, gen, False)
          for on in (True, False)}
    assert fp[True] != fp[False] and "finish_on_real" not in fp[False]  # earlier runs with views stay valid
    assert experiment.fingerprint(ecfg, root, None, False) == experiment.fingerprint(
        dataclasses.replace(ecfg, finish_on_real=False), root, None, False)  # baselines are shared
    model = training.build_model(training.TrainConfig(**SMALL), 3, "cpu")
    with pytest.raises(DataError, match="identities"):
        training.finish_on_real(training.TrainConfig(**SMALL), model, root, SYNTHETIC, 0, "cpu", None, None,
                                {}, 3)
