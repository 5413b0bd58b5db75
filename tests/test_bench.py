"""pcdms-aug bench: the report's keys, the denoiser clock, and that naive and batched runs do the same work."""
import json

import pytest
import torch

from pcdms_aug.perf.bench import bench, make_inputs, run_batched, run_naive
from pcdms_aug.pipelines.pipeline import PCDMsPipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():
    return PCDMsPipeline.from_config("tiny/pipeline.yaml")


@pytest.mark.parametrize("naive", [False, True], ids=["batched", "naive"])
def test_report(pipe, naive):
    r = bench(pipe, pairs=2, views=2, steps=2, naive=naive)
    assert r["mode"] == ("naive" if naive else "batched") and r["images"] == 2 and r["sources"] == 1
    assert r["images_per_second"] > 0 and r["peak_memory_mb"] > 50
    assert set(r["ms_per_image"]) == {"encode", "prior", "inpaint", "refine", "other", "total"}
    assert r["ms_per_image"]["total"] == pytest.approx(1000 * r["seconds"] / 2)
    assert all(v > 0 for k, v in r["ms_per_image"].items() if k != "other")
    assert 0 < r["denoiser_fraction"] < 1
    # every step of every stage calls its denoiser once per batch: 2 steps, one batch of 2 or two of 1; stage 3
    # runs round(2 * refine_strength) of its steps (img2img from the coarse image; tiny config: 0.25 -> 1 step)
    batches = 1 if not naive else 2
    refine_steps = max(1, round(2 * pipe.config["sampling"].get("refine_strength", 1.0)))
    assert r["denoiser_calls"] == {"prior": 2 * batches, "inpaint": 2 * batches, "refine": refine_steps * batches}
    # the hooks are gone afterwards
    assert not pipe.stages["refine"].unet._forward_hooks and not pipe.stages["prior"].prior._forward_pre_hooks


def test_naive_and_batched_generate_the_same_images(pipe):
    inputs = make_inputs(3, 2, pipe.image_size, seed=1)
    assert inputs["source_of"] == [0, 0, 1] and len(inputs["sources"]) == 2
    stages = ("prior", "inpaint", "refine")
    a, ta = run_batched(pipe, inputs, 2, "unipc", 3, 0, stages, output_type="pt")
    b, tb = run_naive(pipe, inputs, 2, "unipc", 0, stages, output_type="pt")
    assert a.shape == (3, 3, 128, 64)
    torch.testing.assert_close(a, torch.stack(b), atol=5e-5, rtol=0)  # images in [0, 1]


def test_cli_json(capsys):
    from pcdms_aug.cli.main import main

    assert main(["bench", "--config", "tiny/pipeline.yaml", "--pairs", "2", "--steps", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("images_per_second", "ms_per_image", "denoiser_fraction", "peak_memory_mb"):
        assert key in r
    assert r["weights"].endswith("tiny/pipeline.yaml") and r["steps"] == {"prior": 1, "inpaint": 1, "refine": 1}
    assert main(["bench", "--config", "tiny/pipeline.yaml", "--pairs", "2", "--steps", "1", "--compare",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["naive"]["mode"] == "naive" and r["batched"]["mode"] == "batched" and r["speedup"] > 0
    assert main(["bench", "--config", "tiny/pipeline.yaml", "--pairs", "1", "--steps", "1", "--naive",
                 "--guidance", "inpaint=2,refine=3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["guidance"] == {"prior": 1.0, "inpaint": 2.0, "refine": 3.0}
    # guidance doubles the denoisers' batch, not their calls
    assert r["denoiser_calls"] == {"prior": 1, "inpaint": 1, "refine": 1}
    assert main(["bench", "--config", "tiny/pipeline.yaml", "--pairs", "0"]) == 2
    assert "--pairs" in capsys.readouterr().err


@pytest.mark.parametrize("args, named", [
    (["--batch", "-1"], "--batch"), (["--views", "0"], "--views"), (["--steps", "0"], "--steps"),
    (["--guidance", "bogus=3"], "--guidance"), (["--refine-strength", "0"], "--refine-strength"),
    (["--refine-noise", "2"], "--refine-noise"), (["--stages", "prior,bogus"], "--stages"),
    (["--pairs", "0"], "--pairs")])
def test_bad_arguments_are_one_line_errors_naming_them(args, named, capsys):
    from pcdms_aug.cli.main import main

    assert main(["bench", "--weights", "tiny", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


@pytest.mark.parametrize("weights", ["/nonexistent/weights", "/nonexistent/pipeline.yaml"])
def test_a_missing_weights_path_is_refused_before_torch_loads(weights, tmp_path):
    """Importing torch and diffusers takes seconds: a wrong --weights is refused without them."""
    import subprocess
    import sys

    code = ("import sys\nfrom pcdms_aug.cli.main import main\n"
            f"rc = main(['bench', '--weights', {weights!r}])\n"
            "print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.stdout.split() == ["2", "False", "False"], res.stdout + res.stderr
    assert weights in res.stderr and "not found" in res.stderr


def test_fp64_is_refused_by_the_parser(capsys):
    from pcdms_aug.cli.main import main

    with pytest.raises(SystemExit):
        main(["bench", "--weights", "tiny", "--dtype", "fp64"])
    assert "--dtype" in capsys.readouterr().err


def test_bf16_runs_under_autocast_with_fp32_weights(capsys):
    """Mixed precision as training: weights stay fp32, the report names the autocast type."""
    from pcdms_aug.cli.main import main

    assert main(["bench", "--weights", "tiny", "--device", "cpu", "--dtype", "bf16", "--pairs", "2", "--steps", "1",
                 "--stages", "prior,inpaint", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dtype"] == "float32" and r["autocast"] == "bfloat16" and r["images"] == 2
    assert set(r["steps"]) == {"prior", "inpaint"}


@pytest.mark.parametrize("command", ["generate", "synthesize-pairs", "make-refine-inputs", "bench"])
def test_every_generating_command_takes_dtype(command):
    import argparse
    import importlib

    from pcdms_aug.cli.main import COMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).configure(parser)
    option = next(a for a in parser._actions if "--dtype" in a.option_strings)
    assert {"fp32", "bf16"} <= set(option.choices or ("fp32", "bf16"))
