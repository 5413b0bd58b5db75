"""The training loop: warm-up, checkpoints and resume, and two gloo processes equal to one."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pcdms_aug.cli.main import main
from pcdms_aug.training.checkpoints import list_checkpoints, read_state
from pcdms_aug.training.config import load_run_config
from pcdms_aug.training.loop import train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, synth_market, stage="prior", *extra):
    return load_run_config(f"tiny/train_{stage}.yaml", [
        f"data.root={synth_market}", f"data.annotations={synth_market}/market-annotation-train.csv",
        f"train.out={tmp_path}", "train.batch_size=2", "train.warmup_steps=3", "train.max_steps=4",
        "train.checkpoint_every=2", "train.sample_every=0", "train.log_every=1", "data.max_pairs=16", *extra])


def _weights(path):
    return load_file(str(path / "trainable.safetensors"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, synth_market, capsys):
    torch.set_num_threads(1)
    straight = tmp_path / "a"
    train(_cfg(straight, synth_market), progress=False)
    part = tmp_path / "b"
    train(_cfg(part, synth_market, "prior", "train.max_steps=4"), progress=False)
    # Simulate a run killed after step 2: drop what came later, then run the same command again.
    import shutil
    shutil.rmtree(part / "checkpoint-4")
    shutil.rmtree(part / "final")
    train(_cfg(part, synth_market), progress=False)
    assert "resuming from" in capsys.readouterr().out
    a, b = _weights(straight / "checkpoint-4"), _weights(part / "checkpoint-4")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [s for s, _ in list_checkpoints(straight)] == [2, 4]
    assert (straight / "final" / "prior.safetensors").is_file()
    assert list((straight / "tb").iterdir())


def test_each_run_logs_into_its_own_train_log_only(tmp_path, synth_market):
    # Found on the GPU check: every later stage of one process was also written into the earlier stages' logs.
    train(_cfg(tmp_path / "a", synth_market, "prior", "train.max_steps=1"), progress=False)
    train(_cfg(tmp_path / "b", synth_market, "prior", "train.max_steps=2"), progress=False)
    a, b = (tmp_path / "a" / "train.log").read_text(), (tmp_path / "b" / "train.log").read_text()
    assert "step 1 " in a and "step 2 " not in a and a.count("INFO stage prior") == 1
    assert "step 2 " in b and b.count("INFO stage prior") == 1


def test_warmup_takes_effect(tmp_path, synth_market):
    cfg = _cfg(tmp_path, synth_market, "prior", "train.max_steps=2", "train.warmup_steps=100")
    train(cfg, progress=False)
    state = read_state(tmp_path / "checkpoint-2")
    lr = state["optimizer"]["param_groups"][0]["lr"]
    assert 0 < lr <= cfg.train.lr * 2 / 100 + 1e-12


def test_export_checkpoint_gives_the_ema_weights_final_has(tmp_path, synth_market, capsys):
    final = train(_cfg(tmp_path / "run", synth_market, "prior", "train.max_steps=2"), progress=False)
    assert main(["export-checkpoint", str(tmp_path / "run" / "checkpoint-2"), "--out", str(tmp_path / "x")]) == 0
    a, b = load_file(str(final / "prior.safetensors")), load_file(str(tmp_path / "x" / "prior.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # EMA, not the raw weights of the step
    raw = _weights(tmp_path / "run" / "checkpoint-2")
    assert any(not torch.equal(raw[k], b[k.split(".", 1)[1]]) for k in raw if k.split(".", 1)[1] in b)
    assert main(["export-checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "y")]) == 2
    assert "no trainable.safetensors" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["export-checkpoint", str(tmp_path / "run" / "checkpoint-2"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_inpaint_trains_and_writes_a_preview(tmp_path, synth_market):
    torch.set_num_threads(1)
    cfg = _cfg(tmp_path, synth_market, "inpaint", "train.max_steps=2", "train.sample_every=2",
               "train.sample_steps=2")
    final = train(cfg, progress=False)
    assert (final / "unet.safetensors").is_file() and list((tmp_path / "samples").glob("*.png"))


def test_bad_config_key_is_named(tmp_path, capsys):
    assert main(["train", "tiny/train_prior.yaml", "train.lrr=1"]) == 2
    assert "lrr" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path, synth_market):
    common = [f"data.root={synth_market}", f"data.annotations={synth_market}/market-annotation-train.csv",
              "train.batch_size=2", "train.max_steps=3", "train.checkpoint_every=3", "train.sample_every=0",
              "train.warmup_steps=1", "data.max_pairs=24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "pcdms_aug", "train", "tiny/train_prior.yaml", *common,
                    f"train.out={one}", "train.grad_accum=2", "--no-progress"], check=True, env=env, cwd=ROOT)
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                    "-m", "pcdms_aug", "train", "tiny/train_prior.yaml", *common, f"train.out={two}",
                    "train.grad_accum=1", "--no-progress"], check=True, env=env, cwd=ROOT)
    a, b = _weights(one / "checkpoint-3"), _weights(two / "checkpoint-3")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    from pcdms_aug.stages import build_stage
    init = build_stage("prior", load_run_config("tiny/train_prior.yaml").model, seed=0).state_dict()
    assert any(not torch.allclose(a[k], init[k]) for k in a if k.startswith("prior."))  # it did train


@pytest.mark.parametrize("scale", ["tiny", "paper"])
@pytest.mark.parametrize("stage", ["prior", "inpaint", "refine"])
def test_shipped_training_configs_resolve(scale, stage):
    cfg = load_run_config(f"{scale}/train_{stage}.yaml")
    assert cfg.stage == stage and isinstance(cfg.model, dict) and cfg.model.get("scheduler")


def test_init_from_warm_starts_from_a_saved_stage_and_refuses_another_architecture(tmp_path, synth_market):
    torch.set_num_threads(1)
    first = train(_cfg(tmp_path / "a", synth_market, "prior", "train.max_steps=2"), progress=False)
    # lr 0: the warm-started weights come through the step unchanged, so they must equal the saved ones.
    warm = train(_cfg(tmp_path / "b", synth_market, "prior", "train.max_steps=1", "train.lr=0",
                      f"train.init_from={first}"), progress=False)
    a, b = load_file(str(first / "prior.safetensors")), load_file(str(warm / "prior.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cold = train(_cfg(tmp_path / "c", synth_market, "prior", "train.max_steps=1", "train.lr=0"), progress=False)
    c = load_file(str(cold / "prior.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    from pcdms_aug.utils.errors import DataError
    other = tmp_path / "prior_1layer.yaml"
    other.write_text(f"_base_: {ROOT / 'configs/tiny/prior.yaml'}\nprior: {{layers: 1}}\n")
    with pytest.raises(DataError, match="does not match this config"):
        train(_cfg(tmp_path / "d", synth_market, "prior", "train.max_steps=1", f"model={other}",
                   f"train.init_from={first}"), progress=False)


def test_overrides_reach_the_model_config_named_by_path():
    cfg = load_run_config("tiny/train_refine.yaml", ["model.train_timesteps=[0, 300]", "model.drop.joint=0.2",
                                                     "train.lr=1e-5"])
    assert cfg.model["train_timesteps"] == [0, 300] and cfg.model["drop"]["joint"] == 0.2
    assert cfg.model["drop"]["source_features"] == 0.1 and cfg.model["scheduler"]  # the rest of the file stays
    assert cfg.train.lr == 1e-5


def test_refiner_with_source_image_input_warm_starts_from_the_shipped_one_with_zero_new_channels():
    """The widened conv_in starts at zero on the source channels, so the warm-started refiner samples exactly
    what the shipped one does; trained, the source channels matter (and guidance on them runs)."""
    from pcdms_aug.config.loading import load_config
    from pcdms_aug.pipelines.loading import stage_folder
    from pcdms_aug.stages import build_stage, stage_class
    from pcdms_aug.training.checkpoints import warm_start

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs/tiny/refine.yaml")
    cfg["source_image_input"] = True
    stage = build_stage("refine", cfg, seed=0)
    assert warm_start(stage, "refine", "tiny") == (["unet.conv_in.weight"], [])
    shipped = stage_class("refine").from_pretrained(stage_folder("tiny", "refine"))
    g = torch.Generator().manual_seed(0)
    src, coarse = torch.rand(2, 3, 128, 64, generator=g) * 2 - 1, torch.rand(2, 3, 64, 32, generator=g) * 2 - 1
    outs = [s.sample(s.encode_source(src), coarse, torch.Generator().manual_seed(1), 2, 2.0, "ddim", 0.5)
            for s in (stage, shipped)]
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    with torch.no_grad():
        stage.unet.conv_in.weight[:, -stage.codec.channels:].normal_(0, 0.1, generator=g)
    moved = stage.sample(stage.encode_source(src), coarse, torch.Generator().manual_seed(1), 2, 2.0, "ddim", 0.5)
    assert not torch.allclose(moved, outs[1], atol=1e-3)
    loss = stage.training_loss({"source_image": src, "target_image": src, "coarse_image": coarse},
                               torch.Generator().manual_seed(2))
    loss.backward()
    assert torch.isfinite(loss) and stage.unet.conv_in.weight.grad[:, -stage.codec.channels:].abs().sum() > 0


def test_a_checkpoint_holds_only_trainable_state_and_plain_data(tmp_path, synth_market):
    train(_cfg(tmp_path, synth_market, "inpaint", "train.max_steps=2"), progress=False)
    ckpt = tmp_path / "checkpoint-2"
    comps = {k.split(".", 1)[0] for k in _weights(ckpt)}
    assert comps and not comps & {"clip", "dino", "codec"}
    assert set(load_file(str(ckpt / "ema.safetensors"))) <= set(_weights(ckpt))
    state = torch.load(ckpt / "state.pt", weights_only=True)  # plain data: loads without any allowed global
    assert state["step"] == 2 and state["ema"]["optimization_step"] == 2


def test_a_checkpoint_whose_state_runs_code_is_refused_and_runs_nothing(tmp_path, synth_market, capsys):
    train(_cfg(tmp_path / "run", synth_market, "prior", "train.max_steps=2"), progress=False)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(tmp_path / "run" / "checkpoint-2" / "state.pt", weights_only=True)
    torch.save({**state, "x": Payload()}, tmp_path / "run" / "checkpoint-2" / "state.pt")
    assert main(["export-checkpoint", str(tmp_path / "run" / "checkpoint-2"), "--out", str(tmp_path / "x")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    # resuming reads the same file: refused too, nothing runs, the run's files stay
    cfg = _cfg(tmp_path / "run", synth_market, "prior", "train.max_steps=4")
    with pytest.raises(Exception, match="refused"):
        train(cfg, progress=False)
    assert not marker.exists() and (tmp_path / "run" / "checkpoint-2" / "state.pt").is_file()
