"""scripts/gpu_check.sh in its reduced CPU mode: the same steps as on a GPU (torchrun, gloo, DDP), every key of
the report filled in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"steps", "batch", "global_batch", "mixed_precision", "seconds", "samples_per_second",
              "peak_memory_mb", "memory", "final"}
BENCH_KEYS = {"images_per_second", "ms_per_image", "denoiser_fraction", "denoiser_calls", "peak_memory_mb",
              "steps", "autocast"}


@pytest.mark.slow  # 8 min on 2 cores at load average 10 (--full: every phase)
def test_reduced_cpu_mode_runs_every_step_and_reports_every_key(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path), "--cpu",
                          "--reduced", "--full"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report) == {"environment", "bench", "train", "train_cached", "cache", "cache_speedup", "resume",
                           "export", "make_refine_inputs", "assemble", "image", "expected", "disk_gb", "seconds", "ok",
                           "phases", "complete"}
    # the figures never measured first: the bench, then each stage without and with its feature cache; --full: the
    # rest of the path
    assert report["complete"] and list(report["phases"]) == [
        "bench", "weights", "dataset", "train_prior", "train_prior_cached", "train_inpaint", "train_inpaint_cached",
        "train_refine", "train_refine_cached", "resume", "make_refine_inputs", "assemble", "image"]
    assert sorted(report["phases"].values()) == list(report["phases"].values())
    assert report["expected"] is None  # FLOPs of the paper architectures only
    env = report["environment"]
    assert env["backend"] == "gloo" and env["ddp"] and env["world_size"] == 1 and env["image_size"] == [64, 32]
    for part in ("train", "train_cached"):
        assert set(report[part]) == {"prior", "inpaint", "refine"}
        for stage in report[part].values():
            assert set(stage) == TRAIN_KEYS
            assert stage["steps"] == 2 and stage["samples_per_second"] > 0 and stage["peak_memory_mb"] > 0
    for name, cache in report["cache"].items():
        assert cache["pairs"] == 64 and cache["images"] > 0 and cache["gb"] > 0 and cache["items_per_second"] > 0
        assert report["cache_speedup"][name] > 0
    bench = report["bench"]
    for mode in ("naive", "batched"):
        assert BENCH_KEYS <= set(bench[mode]) and bench[mode]["images_per_second"] > 0
    # naive: one denoiser call per pair and step; batched: the 4 pairs in one batch
    assert bench["naive"]["denoiser_calls"] == {"prior": 8, "inpaint": 8, "refine": 8}
    assert bench["batched"]["denoiser_calls"] == {"prior": 2, "inpaint": 2, "refine": 2}
    assert bench["image_size"] == [64, 32] and bench["speedup"] > 0 and report["ok"]
    assert report["resume"]["ok"] and (report["resume"]["from_step"], report["resume"]["to_step"]) == (2, 3)
    assert report["resume"]["checkpoint_gb"] > 0 and report["export"]["ok"] and report["assemble"]["ok"]
    assert report["image"]["ok"] and Path(report["image"]["files"][0]).is_file()


@pytest.mark.slow  # about a minute: stopped after the bench and its first training stage
def test_a_run_stopped_by_a_time_limit_leaves_the_figures_it_reached(tmp_path):
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path), "--cpu",
                             "--reduced"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=tmp_path, start_new_session=True)
    path, report, deadline = tmp_path / "gpu_check.json", {}, time.time() + 300
    try:
        while "train_prior" not in report.get("phases", {}) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            report = json.loads(path.read_text()) if path.is_file() else {}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "train_prior" in report.get("phases", {}), "no partial report within 300 s"
    report = json.loads(path.read_text())  # as the killed run left it: whole JSON, not complete
    assert report["complete"] is False and "ok" not in report
    assert set(report["train"]["prior"]) == TRAIN_KEYS and report["train"]["prior"]["steps"] == 2


def test_without_a_gpu_the_gpu_mode_is_refused_in_one_line(tmp_path, capsys):
    import torch

    from pcdms_aug.perf.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["--out", str(tmp_path), "--fixture"]) == 2
    assert "no GPU visible to torch: run with --cpu --reduced" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--cpu", "--reduced", "--steps", "0"])
    assert e.value.code == 2 and "argument --steps: 0 is out of range" in capsys.readouterr().err


def test_a_folder_of_the_users_or_an_input_is_refused_before_anything_runs(tmp_path, capsys):
    """The check deletes checkpoints and folders it made under --out, so --out must be new, empty or its own."""
    from pcdms_aug.perf.gpu_check import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["--out", str(mine), "--cpu", "--reduced"]) == 2
    assert "did not write (e.g. 'notes.txt')" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    data = tmp_path / "market"
    data.mkdir()
    assert main(["--out", str(data / "check"), "--cpu", "--dataset", str(data), "--reduced"]) == 2
    assert "--out lies inside --dataset" in capsys.readouterr().err and not (data / "check").exists()


def test_memory_arithmetic_and_saved_tensor_count():
    """20 bytes per trainable parameter (fp32 weight, gradient, two AdamW moments, EMA), 4 per frozen one; a
    saved weight is not counted again as an activation, and one activation saved twice is held once."""
    import torch

    from pcdms_aug.training.memory import GB, SavedCounter, memory_estimate

    m = memory_estimate(10**9, 10**9, 1.5)
    assert (m["trainable_weights"], m["gradients"], m["adamw_moments"], m["ema"]) == (4.0, 4.0, 8.0, 4.0)
    assert m["frozen_weights"] == 4.0 and m["total"] == 4 + 4 + 8 + 4 + 4 + 1.5 and GB == 1e9
    layer = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh())
    pack = SavedCounter(layer)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
        (y * y).sum()  # y saved twice by the multiplication, and by tanh
    # x (4x8) for the weight's gradient, tanh's output (4x16) once; the weight itself not
    assert pack.total == (4 * 8 + 4 * 16) * 4


@pytest.mark.slow  # 20 s alone on 2 cores (every paper stage built on the meta device)
def test_paper_estimate_counts_the_published_architectures_and_fits_80_gb():
    from types import SimpleNamespace

    from pcdms_aug.perf.gpu_check import Check

    check = Check(SimpleNamespace(out="unused", reduced=False, steps=None, batch=None), SimpleNamespace(
        device="cpu"))
    check.report = {"bench": {"batched": {"images_per_second": 2.0}},
                    "train": {"inpaint": {"samples_per_second": 10.0}, "prior": {"samples_per_second": None}}}
    check.expected()
    e = check.report["expected"]
    assert e["denoiser_evaluations_per_image"] == {"prior": 20, "inpaint": 20, "refine": 20}
    assert e["bench_batched_tflops"] == pytest.approx(2.0 * e["flops_per_image"] / 1e12)
    flops = e["training_flops_per_sample"]
    assert e["train_tflops"] == {"inpaint": pytest.approx(10.0 * flops["inpaint"]["before"]["total"] / 1e12)}
    assert all(20 < gb["before"] < 80 and gb["after"] < 72 for gb in e["training_memory_gb"].values())
    # the feature cache's targets (issue 29): at most half of stage 2's and 3's step, a fifth of the prior's
    assert flops["inpaint"]["after"]["total"] <= 3.2e12 and flops["refine"]["after"]["total"] <= 1.6e12
    assert flops["prior"]["after"]["total"] <= 0.15e12
    # SD-2.1-base's UNet at 64x64 latents: about 0.8 TFLOPs a sample, doubled under guidance
    from pcdms_aug.perf.gpu_estimate import build_meta, parameter_counts

    counts = parameter_counts(build_meta("inpaint"))["components"]
    assert counts["unet"] == 868_876_804 and counts["clip"] == 632_076_800
