"""The GPU path in one run, every figure in one JSON: `scripts/gpu_check.sh` (launched by torchrun).

    torchrun --nproc_per_node 1 -m pcdms_aug.perf.gpu_check --out runs/gpu_check --fixture          # random weights
    torchrun --nproc_per_node 1 -m pcdms_aug.perf.gpu_check --out runs/gpu_check --sd21 W/sd21 \\
        --clip W/clip --dinov2 W/dinov2 --kandinsky W/kandinsky                                 # real folders
    torchrun --nproc_per_node 1 -m pcdms_aug.perf.gpu_check --out runs/gpu_check --cpu --reduced   # CPU, gloo

Ordered to fit one short lease, the figures never measured first: the process group (nccl on a GPU, gloo on a
CPU; torchrun with one process takes the DDP path of many); the bench, naive against batched generation at the
pipeline's size (bf16 autocast on a GPU; with ``--fixture`` the paper architectures at random weights built on
the device, so no weights are written first); the weight folders and the data; then for each stage its
feature cache (built, timed) and ``--steps`` training steps from the paper configs without the cache and with
it (samples/s over the steps after the first, peak memory). ``--full`` adds the rest of the path: the inpaint
stage resumes from its checkpoint and exports it, stages 1+2 write stage 3's inputs, the three stages are
assembled and synthesize-pairs writes one image. ``--reduced`` runs the same steps on the reduced-depth
fixture at 64x32 (minutes on a CPU). No network: weights are local folders or the random-weight fixture; the
data is the synthetic Market-1501 unless ``--dataset`` names a Market-1501 folder with its pose CSVs. The
report is rewritten after every phase.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from pcdms_aug.perf.measure import StepClock, folder_gb, peak_mb, reset_peak
from pcdms_aug.utils.errors import DataError

STAGES = ("prior", "inpaint", "refine")
RESUME_STAGE = "inpaint"  # the largest checkpoint: what a resume and an export really move


def configure(parser) -> None:
    from pcdms_aug.utils.argtypes import batch_int, int_in

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
    parser.add_argument("--steps", type=int_in(1, 1_000_000), default=None, help="training steps per stage (default 20, "
                                                                "reduced 2)")
    parser.add_argument("--batch", type=batch_int, default=None, help="training batch (default: the paper configs', "
                                                                "reduced 2)")
    parser.add_argument("--bench-pairs", type=int_in(1, 100_000), default=None, help="pairs per bench mode, 4 views each (default 4)")
    parser.add_argument("--full", action="store_true", help="also resume, export, make-refine-inputs, assemble "
                                                            "and one image")


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

    def train_stage(self, stage: str, model: dict, data: list[str], extra=(), steps=None, record=True,
                    cached: bool = False) -> None:
        """``--steps`` steps of ``stage`` (``cached``: from its feature cache, built first on first use);
        recorded under ``train`` or ``train_cached``, the cache build under ``cache``."""
        from pcdms_aug.training.config import load_run_config
        from pcdms_aug.training.feature_cache import read_manifest
        from pcdms_aug.training.loop import train

        steps = steps or self.steps
        name = stage + ("_cached" if cached else "")
        ckpt = self.steps if stage == RESUME_STAGE and not cached else 0
        features = self.work / "features" / stage
        over = [*data, *model[stage], f"train.checkpoint_every={ckpt}", "train.keep_checkpoints=1",
                f"train.out={self.work / 'runs' / name}", f"train.max_steps={steps}",
                "train.sample_every=0", "train.log_every=1", "train.warmup_steps=1",
                f"train.device={self.rt.device}", f"train.mixed_precision={'bf16' if self.gpu else 'no'}",
                *([f"train.batch_size={self.batch}"] if self.batch else []),
                *([f"train.feature_cache={features}"] if cached else []), *extra]
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
        self.report.setdefault("train_cached" if cached else "train", {})[stage] = {
            "steps": len(clock.steps), "batch": cfg.train.batch_size, "global_batch": global_batch,
            "mixed_precision": cfg.train.mixed_precision, "seconds": time.perf_counter() - t0,
            "samples_per_second": clock.rate(global_batch), "peak_memory_mb": mem, "memory": kind,
            "final": str(final)}
        if cached:
            m = read_manifest(features)
            self.report.setdefault("cache", {})[stage] = {
                "images": m["images"], "pairs": m["pairs"], "gb": m["bytes"] / 1e9, "seconds": m["build_seconds"],
                "items_per_second": (m["images"] + m["pairs"]) / max(m["build_seconds"], 1e-9)}
            plain = self.report.get("train", {}).get(stage, {}).get("samples_per_second")
            rate = clock.rate(global_batch)
            self.report.setdefault("cache_speedup", {})[stage] = rate / plain if rate and plain else None

    def resume_and_export(self, model, data) -> None:
        """The resume stage again, one step further: it must resume from its checkpoint; then the export."""
        from pcdms_aug.training.checkpoints import export_checkpoint, list_checkpoints

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

    def random_refine_inputs(self, data: list[str]) -> Path:
        """Stage 3's inputs in their folder format, random images (the speed does not depend on them)."""
        from pcdms_aug.perf.cache_speedup import write_refine_inputs
        from pcdms_aug.training.data import make_dataset
        from pcdms_aug.training.config import load_run_config

        folder = self.work / "refine_inputs_random"
        if self.rt.is_main and not (folder / "pairs.csv").is_file():
            write_refine_inputs(folder, make_dataset(load_run_config("paper/train_inpaint.yaml", data)), self.size)
        return folder

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

    def bench(self, model: dict | None) -> None:
        """Naive then batched generation of the same pairs, fp32 weights under bf16 autocast on a GPU. ``model``:
        the stages' overrides (weight folders); None: the paper architectures at random weights, built on the
        device (nothing written or read first)."""
        import torch

        from pcdms_aug.config.loading import load_config
        from pcdms_aug.perf.bench import bench
        from pcdms_aug.pipelines.pipeline import PCDMsPipeline
        from pcdms_aug.stages import stage_class

        cfg = load_config("paper/pipeline.yaml", [f"image_size={json.dumps(self.size)}"])
        cfg["stages"], shared = {n: n for n in STAGES}, {}
        with torch.device(self.rt.device):
            stages = {n: stage_class(n).from_config(load_config(f"paper/{n}.yaml", model[n] if model else
                                                                ["random_weights=true"]), seed=i, cache=shared)
                      for i, n in enumerate(STAGES)}
        pipe = PCDMsPipeline(stages, cfg).to(self.rt.device, torch.float32)
        autocast = torch.bfloat16 if self.gpu else None
        pairs = self.args.bench_pairs or 4
        kw = dict(pairs=pairs, views=4, autocast=autocast, steps=2 if self.args.reduced else None)
        naive = bench(pipe, naive=True, **kw)
        batched = bench(pipe, naive=False, warmup=False, **kw)
        self.report["bench"] = {"naive": naive, "batched": batched, "image_size": list(pipe.image_size),
                                "random_weights": model is None,
                                "speedup": batched["images_per_second"] / naive["images_per_second"]}
        del pipe, stages, shared

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
        flops = {n: s["training"]["flops_per_sample"] for n, s in est["stages"].items()}
        train = {n: t["samples_per_second"] * flops[n]["before"]["total"] / 1e12
                 for n, t in self.report.get("train", {}).items() if t["samples_per_second"]}
        cached = {n: t["samples_per_second"] * flops[n]["after"]["total"] / 1e12
                  for n, t in self.report.get("train_cached", {}).items() if t["samples_per_second"]}
        self.report["expected"] = {
            "flops_per_image": est["flops_per_image"],
            "denoiser_evaluations_per_image": est["denoiser_evaluations_per_image"],
            "training_flops_per_sample": flops,
            "training_memory_gb": {n: {k: v["total"] for k, v in s["training"]["memory_gb"].items()}
                                   for n, s in est["stages"].items()},
            "bench_batched_tflops": batched * est["flops_per_image"] / 1e12, "train_tflops": train,
            "train_cached_tflops": cached}

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
        reduced_folders = None
        if self.args.reduced or not self.args.fixture:  # the reduced fixture is small: written first
            reduced_folders = weight_overrides(self.args, self.work, self.rt)
        self.phase("bench", self.bench, reduced_folders)
        over = self.phase("weights", weight_overrides, self.args, self.work, self.rt)
        model = {n: ["model." + o for o in sets] for n, sets in over.items()}
        root = self.phase("dataset", dataset, self.args, self.work, self.rt)
        data = self.data_overrides(root)
        dtype = "bf16" if self.gpu else "fp32"
        for stage in STAGES:
            extra = [f"data.refine_inputs={self.random_refine_inputs(data)}"] if stage == "refine" else []
            self.phase("train_" + stage, self.train_stage, stage, model, data, extra)
            self.phase(f"train_{stage}_cached", self.train_stage, stage, model, data, extra, None, True, True)
        if self.args.full:
            self.phase("resume", self.resume_and_export, model, data)
            # made to check the path; stage 3 trained on random inputs of the same form above
            self.phase("make_refine_inputs", self.refine_inputs, root, dtype)
            pipe = self.phase("assemble", self.assemble)
            self.phase("image", self.one_image, root, pipe, dtype)
        self.expected()
        self.report["disk_gb"] = folder_gb(self.work)
        checks = ("resume", "export", "assemble", "image") if self.args.full else ()
        self.report["ok"] = all(self.report[k]["ok"] for k in checks) and all(
            t["samples_per_second"] for part in ("train", "train_cached") for t in self.report[part].values())
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
    from pcdms_aug.utils.paths import check_out_dir, claim_dir

    # the check deletes checkpoints and folders it made under --out: a folder of the user's is refused first
    inputs = [(f"--{k}", getattr(args, k)) for k in ("sd21", "clip", "dinov2", "kandinsky", "dataset")]
    out = check_out_dir(args.out, inputs=inputs, command="gpu-check",
                        own=lambda folder: (folder / "gpu_check.json").is_file())
    rt = init_runtime("cpu" if args.cpu else "cuda", "fp32", seed=0)
    if rt.world_size != 1:
        raise DataError(f"the check runs one process (torchrun --nproc_per_node 1), got {rt.world_size}")
    claim_dir(out, "gpu-check")
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
