"""The GPU path in one run, every figure in one JSON: `scripts/gpu_check.sh` (launched by torchrun).

    torchrun --nproc_per_node 1 -m pcdms_aug.perf.gpu_check --out runs/gpu_check --fixture          # random weights
    torchrun --nproc_per_node 1 -m pcdms_aug.perf.gpu_check --out runs/gpu_check --sd21 W/sd21 \\
        --clip W/clip --dinov2 W/dinov2 --kandinsky W/kandinsky                                 # real folders
    torchrun --nproc_per_node 1 -m pcdms_aug.perf.gpu_check --out runs/gpu_check --cpu --reduced   # CPU, gloo

In order: the process group (nccl on a GPU, gloo on a CPU; torchrun with one process takes the DDP path of
many); each stage trains ``--steps`` steps from the paper configs (bf16 autocast on a GPU; samples/s over the
steps after the first, peak memory); the inpaint stage resumes from its checkpoint and that checkpoint is
exported; stage 1+2 write stage 3's inputs (make-refine-inputs); the three stages are assembled; the bench
compares naive and batched generation at the pipeline's size (bf16 autocast on a GPU); synthesize-pairs
writes one image. ``--reduced`` runs the same steps on the reduced-depth fixture at 64x32 (minutes on a CPU).
No network: weights are local folders or the random-weight fixture; the data is the synthetic Market-1501 unless
``--dataset`` names a Market-1501 folder with its pose CSVs.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

from pcdms_aug.utils.errors import DataError

STAGES = ("prior", "inpaint", "refine")
RESUME_STAGE = "inpaint"  # the largest checkpoint: what a resume and an export really move


def configure(parser) -> None:
    parser.add_argument("--out", required=True, help="work folder; the report is OUT/gpu_check.json")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--fixture", action="store_true", help="random-weight folders in the downloaded layouts")
    src.add_argument("--sd21", help="stable-diffusion-2-1-base folder (unet/, vae/)")
    parser.add_argument("--clip", help="CLIP-ViT-H-14 folder (transformers CLIPVisionModelWithProjection)")
    parser.add_argument("--dinov2", help="dinov2-giant folder")
    parser.add_argument("--kandinsky", help="kandinsky-2-2-prior folder (prior/)")
    parser.add_argument("--dataset", help="Market-1501 folder with market-annotation-train.csv (default: "
                                          "a small synthetic one built under OUT)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo); training without autocast")
    parser.add_argument("--reduced", action="store_true", help="reduced-depth fixture at 64x32 (implies "
                                                               "--fixture)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per stage (default 20, "
                                                                "reduced 2)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: the paper configs', "
                                                                "reduced 2)")
    parser.add_argument("--bench-pairs", type=int, default=None, help="pairs per bench mode, 4 views each (default 4)")


# ------------------------------------------------------------------------------------------------ setup
def weight_overrides(args, work: Path, rt) -> dict[str, list[str]]:
    """Per stage, ``weights.*`` (and at reduced scale the small sizes) for the paper stage configs."""
    from pcdms_aug.utils.runtime import barrier
    from pcdms_aug.testing.paper_fixture import stage_overrides

    if args.fixture or args.reduced:
        import torch

        from pcdms_aug.testing.paper_fixture import write_folders

        scale = "reduced" if args.reduced else "paper"
        if rt.is_main:
            write_folders(work / "weights", scale, dtype=None if args.reduced else torch.float16)
        barrier()
        return {n: stage_overrides(work / "weights", scale, stage=n) for n in STAGES}
    given = {"sd21_base": args.sd21, "clip_vit_h": args.clip, "dinov2": args.dinov2,
             "kandinsky22_prior": args.kandinsky}
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise DataError(f"give --fixture, or all of --sd21 --clip --dinov2 --kandinsky ({', '.join(missing)} "
                        "missing)")
    for key, folder in given.items():
        if not Path(folder).is_dir():
            raise DataError(f"{key}: folder not found", folder)
    return {n: [f"weights.{k}={Path(v).resolve()}" for k, v in given.items()] for n in STAGES}


def dataset(args, work: Path, rt) -> Path:
    from pcdms_aug.utils.runtime import barrier

    if args.dataset:
        root = Path(args.dataset)
        if not (root / "market-annotation-train.csv").is_file():
            raise DataError("market-annotation-train.csv missing in --dataset", root)
        return root
    from pcdms_aug.data.synthetic import build_synthetic_market

    root = work / "market1501"
    if rt.is_main:
        build_synthetic_market(root, train_ids=8, test_ids=6, seed=0, progress=False)
    barrier()
    return root


# ------------------------------------------------------------------------------------------------ measures
class StepClock(logging.Handler):
    """Times of the training loop's ``step N`` log records: samples/s from the first logged step on (step 1
    pays for lazy initialisation, autotuning and allocator growth)."""

    PATTERN = re.compile(r"^step (\d+) loss")

    def __init__(self):
        super().__init__()
        self.steps: list[tuple[int, float]] = []

    def emit(self, record):
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.steps.append((int(m.group(1)), record.created))

    def rate(self, global_batch: int) -> float | None:
        if len(self.steps) < 2:
            return None
        (s0, t0), (s1, t1) = self.steps[0], self.steps[-1]
        return (s1 - s0) * global_batch / max(t1 - t0, 1e-9)


def reset_peak(device: str) -> None:
    """Start a stage's peak from what is still allocated, after the previous stage's objects are gone."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: str) -> tuple[float, str]:
    import torch

    from pcdms_aug.perf.bench import peak_memory_mb

    return peak_memory_mb(torch.device(device))


def folder_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e9


# ------------------------------------------------------------------------------------------------ the steps
class Check:
    """One run of the check: its settings, the runtime, and the report it fills in."""

    def __init__(self, args, rt):
        self.args, self.rt = args, rt
        self.work = Path(args.out)
        self.gpu = rt.device.startswith("cuda")
        self.steps = args.steps or (2 if args.reduced else 20)
        self.batch = args.batch or (2 if args.reduced else None)
        self.size = [64, 32] if args.reduced else [512, 256]
        self.report: dict = {}
        self.report_path = self.work / "gpu_check.json"
        self.t0 = time.perf_counter()

    def data_overrides(self, root: Path) -> list[str]:
        return [f"data.root={root}", f"data.annotations={root / 'market-annotation-train.csv'}",
                f"data.image_size={json.dumps(self.size)}", "data.max_pairs=64",
                f"data.num_workers={0 if self.args.reduced else 2}"]

    def train_stage(self, stage: str, model: dict, data: list[str], extra=(), steps=None, record=True) -> None:
        from pcdms_aug.training.loop import load_run_config, train

        steps = steps or self.steps
        keep = ["train.checkpoint_every=" + str(self.steps if stage == RESUME_STAGE else 0), "train.keep_checkpoints=1"]
        over = [*data, *model[stage], *keep, f"train.out={self.work / 'runs' / stage}", f"train.max_steps={steps}",
                "train.sample_every=0", "train.log_every=1", "train.warmup_steps=1",
                f"train.device={self.rt.device}", f"train.mixed_precision={'bf16' if self.gpu else 'no'}",
                *([f"train.batch_size={self.batch}"] if self.batch else []), *extra]
        cfg = load_run_config(f"paper/train_{stage}.yaml", over)
        clock = StepClock()
        logger = logging.getLogger("pcdms_aug.training.loop")
        logger.addHandler(clock)
        reset_peak(self.rt.device)
        t0 = time.perf_counter()
        try:
            final = train(cfg, self.rt, progress=False)
        finally:
            logger.removeHandler(clock)
        mem, kind = peak_mb(self.rt.device)
        global_batch = cfg.train.batch_size * cfg.train.grad_accum * self.rt.world_size
        if not record:
            return
        self.report.setdefault("train", {})[stage] = {
            "steps": len(clock.steps), "batch": cfg.train.batch_size, "global_batch": global_batch,
            "mixed_precision": cfg.train.mixed_precision, "seconds": time.perf_counter() - t0,
            "samples_per_second": clock.rate(global_batch), "peak_memory_mb": mem, "memory": kind,
            "final": str(final)}

    def resume_and_export(self, model, data) -> None:
        """The resume stage again, one step further: it must resume from its checkpoint; then the export."""
        from pcdms_aug.training.loop import export_checkpoint
        from pcdms_aug.training.checkpoints import list_checkpoints

        out = self.work / "runs" / RESUME_STAGE
        step, ckpt = list_checkpoints(out)[-1]
        size = folder_gb(ckpt)
        t0 = time.perf_counter()
        self.train_stage(RESUME_STAGE, model, data, steps=self.steps + 1, record=False)
        done = json.loads((out / "final" / "training.json").read_text())["steps"]
        self.report["resume"] = {"stage": RESUME_STAGE, "from_step": step, "to_step": done,
                                 "ok": step == self.steps and done == self.steps + 1,
                                 "checkpoint_gb": size, "seconds": time.perf_counter() - t0}
        newest = list_checkpoints(out)[-1][1]
        target = self.work / "exported" / RESUME_STAGE
        t0 = time.perf_counter()
        export_checkpoint(newest, target)
        self.report["export"] = {"checkpoint": str(newest), "out": str(target),
                                 "ok": (target / "config.json").is_file(), "seconds": time.perf_counter() - t0}
        # 14 GB each at paper scale, of no further use here: the device's disk holds the rest of the run
        for _, path in list_checkpoints(out):
            shutil.rmtree(path)

    def cli(self, *argv) -> None:
        from pcdms_aug.cli.main import main

        rc = main([str(a) for a in argv])
        if rc != 0:
            raise RuntimeError(f"pcdms-aug {argv[0]} exited with {rc}")

    def refine_inputs(self, root: Path, dtype: str) -> Path:
        runs = self.work / "runs"
        coarse, inputs = self.work / "pipeline_12", self.work / "refine_inputs"
        if not coarse.is_dir():
            self.cli("assemble", "--prior", runs / "prior" / "final", "--inpaint", runs / "inpaint" / "final",
                     "--out", coarse)
        t0 = time.perf_counter()
        self.cli("make-refine-inputs", "--dataset", root, "--annotations", root / "market-annotation-train.csv",
                 "--weights", coarse, "--out", inputs, "--max-pairs", 8, "--steps", 2, "--batch", 8,
                 "--device", self.rt.device, "--dtype", dtype)
        self.report["make_refine_inputs"] = {"pairs": 8, "steps": 2, "seconds": time.perf_counter() - t0}
        shutil.rmtree(coarse)  # a second copy of stages 1 and 2 (7.5 GB at paper scale)
        return inputs

    def assemble(self) -> Path:
        runs, pipe = self.work / "runs", self.work / "pipeline"
        t0 = time.perf_counter()
        if not pipe.is_dir():
            self.cli("assemble", "--prior", runs / "prior" / "final",
                     "--inpaint", self.work / "exported" / RESUME_STAGE, "--refine", runs / "refine" / "final",
                     "--out", pipe)
        self.report["assemble"] = {"out": str(pipe), "ok": pipe.is_dir(), "seconds": time.perf_counter() - t0}
        return pipe

    def bench(self, pipe_dir: Path) -> None:
        """Naive then batched generation of the same pairs, fp32 weights under bf16 autocast on a GPU."""
        import torch

        from pcdms_aug.perf.bench import bench
        from pcdms_aug.pipelines.pipeline import PCDMsPipeline

        pipe = PCDMsPipeline.load(str(pipe_dir), self.rt.device, "fp32")
        autocast = torch.bfloat16 if self.gpu else None
        pairs = self.args.bench_pairs or 4
        kw = dict(pairs=pairs, views=4, autocast=autocast, steps=2 if self.args.reduced else None)
        naive = bench(pipe, naive=True, **kw)
        batched = bench(pipe, naive=False, warmup=False, **kw)
        self.report["bench"] = {"naive": naive, "batched": batched, "image_size": list(pipe.image_size),
                                "speedup": batched["images_per_second"] / naive["images_per_second"]}
        del pipe

    def one_image(self, root: Path, pipe: Path, dtype: str) -> None:
        pairs_csv, out = root / "market-pairs-test.csv", self.work / "one_image"
        first = self.work / "one_pair.csv"
        lines = pairs_csv.read_text().splitlines(keepends=True)
        first.write_text("".join(lines[:2]))  # header and one pair
        t0 = time.perf_counter()
        self.cli("synthesize-pairs", "--pairs", first, "--dataset", root, "--weights", pipe, "--out", out,
                 "--batch", 1, "--device", self.rt.device, "--dtype", dtype,
                 *(["--steps", 2] if self.args.reduced else []))
        images = sorted(out.glob("*.png"))
        self.report["image"] = {"files": [str(p) for p in images], "ok": len(images) == 1,
                                "seconds": time.perf_counter() - t0}

    def expected(self) -> None:
        """The paper architectures' FLOPs (pcdms_aug.perf.gpu_estimate) against the measured rates: the TFLOP/s the
        bench and the training reached. None at reduced scale (other architectures)."""
        if self.args.reduced:
            self.report["expected"] = None
            return
        from pcdms_aug.perf.gpu_estimate import estimate

        est = estimate()
        batched = self.report["bench"]["batched"]["images_per_second"]
        train = {n: t["samples_per_second"] * est["stages"][n]["training_flops_per_sample"] / 1e12
                 for n, t in self.report["train"].items() if t["samples_per_second"]}
        self.report["expected"] = {
            "flops_per_image": est["flops_per_image"],
            "denoiser_evaluations_per_image": est["denoiser_evaluations_per_image"],
            "training_flops_per_sample": {n: s["training_flops_per_sample"] for n, s in est["stages"].items()},
            "training_memory_gb": {n: s["training_memory_gb"]["total"] for n, s in est["stages"].items()},
            "bench_batched_tflops": batched * est["flops_per_image"] / 1e12, "train_tflops": train}

    def phase(self, name: str, fn, *args):
        """One step of the check; the report on disk is rewritten after it, so a run cut short by a time limit
        still leaves every figure it reached (``complete: false``, ``phases``: seconds from the start)."""
        result = fn(*args)
        self.report.setdefault("phases", {})[name] = round(time.perf_counter() - self.t0, 1)
        self.save()
        return result

    def save(self) -> None:
        from pcdms_aug.utils.io import atomic_write_text

        self.report.setdefault("complete", False)
        self.report["seconds"] = time.perf_counter() - self.t0
        if self.rt.is_main:
            atomic_write_text(self.report_path, json.dumps(self.report, indent=2))

    def run(self) -> dict:
        import torch
        import torch.distributed as dist

        self.t0 = time.perf_counter()
        self.report["environment"] = {
            "device": self.rt.device, "gpu": torch.cuda.get_device_name(self.rt.device) if self.gpu else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "world_size": self.rt.world_size,
            "backend": dist.get_backend() if dist.is_initialized() else None, "ddp": self.rt.distributed,
            "scale": "reduced" if self.args.reduced else "paper", "image_size": self.size}
        self.save()
        over = self.phase("weights", weight_overrides, self.args, self.work, self.rt)
        model = {n: ["model." + o for o in sets] for n, sets in over.items()}
        root = self.phase("dataset", dataset, self.args, self.work, self.rt)
        data = self.data_overrides(root)
        dtype = "bf16" if self.gpu else "fp32"
        for stage in ("prior", "inpaint"):
            self.phase("train_" + stage, self.train_stage, stage, model, data)
        self.phase("resume", self.resume_and_export, model, data)
        inputs = self.phase("make_refine_inputs", self.refine_inputs, root, dtype)
        self.phase("train_refine", self.train_stage, "refine", model, data, [f"data.refine_inputs={inputs}"])
        pipe = self.phase("assemble", self.assemble)
        self.phase("bench", self.bench, pipe)
        self.phase("image", self.one_image, root, pipe, dtype)
        self.expected()
        self.report["disk_gb"] = folder_gb(self.work)
        self.report["ok"] = all(self.report[k]["ok"] for k in ("resume", "export", "assemble", "image"))
        self.report["complete"] = True
        self.save()
        return self.report


def run(args) -> int:
    from pcdms_aug.utils.runtime import init_runtime

    if args.reduced and (args.sd21 or args.fixture):
        raise DataError("--reduced uses the reduced fixture: leave out --fixture and the weight folders")
    for name in ("steps", "batch", "bench_pairs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise DataError("no GPU visible to torch: run with --cpu --reduced, or install the CUDA build of torch")
    rt = init_runtime("cpu" if args.cpu else "cuda", "fp32", seed=0)
    if rt.world_size != 1:
        raise DataError(f"the check runs one process (torchrun --nproc_per_node 1), got {rt.world_size}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(args, rt)
    report = check.run()
    print(f"[gpu-check] {'ok' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s -> {check.report_path}",
          flush=True)
    return 0 if report["ok"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcdms_aug.perf.gpu_check", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DataError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
