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


@pytest.mark.slow  # 25 s on 2 idle cores, 40-80 s on shared ones
def test_reduced_cpu_mode_runs_every_step_and_reports_every_key(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path), "--cpu",
                          "--reduced"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report) == {"environment", "train", "resume", "export", "make_refine_inputs", "assemble", "bench",
                           "image", "seconds", "ok"}
    env = report["environment"]
    assert env["backend"] == "gloo" and env["ddp"] and env["world_size"] == 1 and env["image_size"] == [64, 32]
    assert set(report["train"]) == {"prior", "inpaint", "refine"}
    for stage in report["train"].values():
        assert set(stage) == TRAIN_KEYS
        assert stage["steps"] == 2 and stage["samples_per_second"] > 0 and stage["peak_memory_mb"] > 0
    assert report["resume"]["ok"] and (report["resume"]["from_step"], report["resume"]["to_step"]) == (2, 3)
    assert report["resume"]["checkpoint_gb"] > 0 and report["export"]["ok"] and report["assemble"]["ok"]
    bench = report["bench"]
    for mode in ("naive", "batched"):
        assert BENCH_KEYS <= set(bench[mode]) and bench[mode]["images_per_second"] > 0
    # naive: one denoiser call per pair and step; batched: the 4 pairs in one batch
    assert bench["naive"]["denoiser_calls"] == {"prior": 8, "inpaint": 8, "refine": 8}
    assert bench["batched"]["denoiser_calls"] == {"prior": 2, "inpaint": 2, "refine": 2}
    assert bench["image_size"] == [64, 32] and bench["speedup"] > 0
    assert report["image"]["ok"] and Path(report["image"]["files"][0]).is_file() and report["ok"]


def test_without_a_gpu_the_gpu_mode_is_refused_in_one_line(tmp_path, capsys):
    from pcdms_aug.gpu_check import main

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["--out", str(tmp_path), "--fixture"]) == 2
    assert "no GPU visible to torch: run with --cpu --reduced" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--cpu", "--reduced", "--steps", "0"]) == 2
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
