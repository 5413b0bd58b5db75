"""`pcdms-aug bench`: images per second of the three-stage generation, where the time goes, peak memory.

    pcdms-aug bench --config tiny/pipeline.yaml --pairs 32 --steps 20 --json      # batched (ours)
    pcdms-aug bench --config tiny/pipeline.yaml --pairs 32 --steps 20 --naive     # upstream's pattern
    pcdms-aug bench --weights tiny --compare                                       # both, and the speed-up

The workload is augmentation's: ``--pairs`` (source, target pose) pairs, ``--views`` target poses per source.
Batched: every source encoded once, pairs in batches of ``--batch``. Naive (``--naive``, upstream's test
scripts): one pair per call, its source encoded again for every pair, no batching. Both run the same models,
steps, scheduler, guidance and per-pair seeds, so they generate the same images.

Reported: images per second; milliseconds per image of each part (source encoding, prior, inpaint, refine,
and the rest: pose rendering, resizing, output conversion); the share of the wall time spent inside the
denoisers' forward passes (the prior transformer and the two UNets, timed by forward hooks); peak memory (the
process's peak RSS on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from functools import partial

import numpy as np

from pcdms_aug.utils.errors import DataError, shown

MAX_PAIRS = 100_000
PARTS = ("encode", "prior", "inpaint", "refine")


# ------------------------------------------------------------------------------------------------ inputs
def make_inputs(pairs: int, views: int, size: tuple[int, int], seed: int = 0) -> dict:
    """``pairs`` pairs over ceil(pairs / views) sources: noise images (the content does not change the work)
    and poses of the synthetic pedestrian model."""
    from pcdms_aug.data import posegen as pg

    rng = np.random.default_rng(seed)
    n_src = -(-pairs // max(1, views))

    def pose():
        body = pg.sample_body(rng)
        view = pg.sample_view(rng, body, pg.sample_track_yaw(rng), 1.0, rng.uniform(0, 2 * np.pi))
        p = pg.annotate(pg.Skeleton(body, view), rng)
        return p if p.size == tuple(size) else p.scaled(tuple(size))

    h, w = size
    return {"sources": [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_src)],
            "source_poses": [pose() for _ in range(n_src)],
            "target_poses": [pose() for _ in range(pairs)],
            "source_of": [i // max(1, views) for i in range(pairs)]}


# ------------------------------------------------------------------------------------------------ timing
class DenoiserClock:
    """Seconds inside the forward passes of each stage's denoiser (forward pre/post hooks)."""

    def __init__(self, pipe):
        import torch

        self.seconds = {n: 0.0 for n in pipe.stages}
        self.calls = {n: 0 for n in pipe.stages}
        self._handles = []
        self._sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
        for name, stage in pipe.stages.items():
            module = getattr(stage, "prior", None) if name == "prior" else getattr(stage, "unet", None)
            if module is not None:
                self._hook(name, module)

    def _hook(self, name, module):
        start = {}

        def pre(m, args):
            self._sync()
            start["t"] = time.perf_counter()

        def post(m, args, out):
            self._sync()
            self.seconds[name] += time.perf_counter() - start.pop("t")
            self.calls[name] += 1

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def reset(self):
        self.seconds = {n: 0.0 for n in self.seconds}
        self.calls = {n: 0 for n in self.calls}

    def close(self):
        for h in self._handles:
            h.remove()


def peak_memory_mb(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "peak_rss"


@contextmanager
def _timed(acc: dict, key: str, sync):
    sync()
    t0 = time.perf_counter()
    yield
    sync()
    acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ the runs
def run_batched(pipe, inputs, steps, scheduler, batch, seed, stages, output_type="np", guidance=None, **refine):
    """Ours: each source encoded once, pairs in batches. Returns (images, {part: seconds})."""
    import torch

    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(inputs["target_poses"]))]
    times: dict = {}
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    with _timed(times, "encode", sync):
        enc = pipe.encode_sources(inputs["sources"], stages).select(inputs["source_of"])
    out = pipe(None, [inputs["source_poses"][s] for s in inputs["source_of"]], inputs["target_poses"],
               source_encoding=enc,
               num_inference_steps=steps, guidance_scale=guidance, generator=gens, scheduler=scheduler,
               stages=stages, output_type=output_type, batch_size=batch,
               target_embeds=_embeds(pipe, stages, len(gens)), **refine)
    for k in PARTS:
        times[k] = times.get(k, 0.0) + out.timings.get(k, 0.0)
    return out.images, times


def run_naive(pipe, inputs, steps, scheduler, seed, stages, output_type="np", guidance=None, **refine):
    """Upstream's pattern: one pair per call, its source encoded again each time, no batching."""
    import torch

    images, times = [], {k: 0.0 for k in PARTS}
    for i, tp in enumerate(inputs["target_poses"]):
        s = inputs["source_of"][i]
        out = pipe(inputs["sources"][s], [inputs["source_poses"][s]], [tp], num_inference_steps=steps,
                   guidance_scale=guidance, generator=[torch.Generator().manual_seed(seed + i)],
                   scheduler=scheduler, stages=stages, output_type=output_type, batch_size=1,
                   target_embeds=_embeds(pipe, stages, 1), **refine)
        images.extend(out.images)
        for k in PARTS:
            times[k] += out.timings.get(k, 0.0)
    return images, times


def _embeds(pipe, stages, n):
    """Without a prior stage the inpainting stage gets zero embeddings (a benchmark has no true targets)."""
    import torch

    if "prior" in stages:
        return None
    return torch.zeros(n, pipe.stages["inpaint"].clip.dim)


def bench(pipe, *, pairs: int = 16, views: int = 4, steps: int | None = None, scheduler: str | None = None,
          batch: int | None = None, naive: bool = False, seed: int = 0, warmup: bool = True,
          guidance: float | dict | None = None, stages=None, refine_strength: float | None = None,
          refine_noise: float | None = None, autocast=None) -> dict:
    """One timed generation of ``pairs`` images; the report :func:`run` prints. ``autocast``: a torch dtype
    to run the forward passes in under ``torch.autocast`` (weights stay as loaded)."""
    from pcdms_aug.pipelines.pipeline_config import ORDER
    from pcdms_aug.stages.diffusion import sampler_name

    check_args(pipe, pairs=pairs, views=views, steps=steps, batch=batch, guidance=guidance, stages=stages,
               refine_strength=refine_strength, refine_noise=refine_noise)
    stages = tuple(n for n in ORDER if n in (stages or pipe.stages))
    refine = {"refine_strength": refine_strength, "refine_noise": refine_noise}
    scheduler = scheduler or sampler_name(pipe.inpaint_scheduler)  # the pipeline's own otherwise
    batch = int(batch or pipe.config.get("batch_size", 16))
    inputs = make_inputs(pairs, views, pipe.image_size, seed)
    if warmup:  # first calls pay for lazy initialisation and allocator growth; not part of the rate
        small = {k: v[:1] for k, v in inputs.items()}
        small["source_of"] = [0]
        with _autocast(pipe, autocast):
            run_naive(pipe, small, 1, scheduler, seed, stages, **refine)
    if naive:
        run = partial(run_naive, pipe, inputs, steps, scheduler, seed, stages, guidance=guidance, **refine)
    else:
        run = partial(run_batched, pipe, inputs, steps, scheduler, batch, seed, stages, guidance=guidance, **refine)
    clock = DenoiserClock(pipe)
    try:
        with _autocast(pipe, autocast):
            images, parts, wall = _wall_time(pipe.device, run)
    finally:
        clock.close()
    report = {"mode": "naive" if naive else "batched", "pairs": pairs, "sources": len(inputs["sources"]),
              "batch": 1 if naive else batch}
    return _report(pipe, report, stages, steps, scheduler, guidance, autocast, images, parts, wall, clock)


def _wall_time(dev, run) -> tuple:
    """``run()``'s (images, parts) and its wall time, the device synchronised around it (peak GPU memory
    counted from its start)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    images, parts = run()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return images, parts, time.perf_counter() - t0


def _report(pipe, report: dict, stages, steps, scheduler, guidance, autocast, images, parts, wall, clock) -> dict:
    """The bench report: ``report``'s workload keys, then the settings, rates, time split and memory."""
    import torch

    from pcdms_aug.pipelines.pipeline_config import DEFAULT_STEPS

    pairs, dev = report["pairs"], pipe.device
    samp = pipe.config.get("sampling") or {}
    mem, mem_kind = peak_memory_mb(dev)
    ms = {k: 1000 * parts.get(k, 0.0) / pairs for k in PARTS}
    ms["other"] = max(0.0, 1000 * wall / pairs - sum(ms.values()))
    ms["total"] = 1000 * wall / pairs
    steps_used = {n: int(steps) if steps else int((samp.get("steps") or {}).get(n, DEFAULT_STEPS)) for n in stages}
    return {
        **report,
        "steps": steps_used, "scheduler": scheduler,
        "guidance": _guidance(guidance, samp, stages),
        "device": str(dev), "dtype": str(pipe.dtype).replace("torch.", ""),
        "autocast": str(autocast).replace("torch.", "") if autocast is not None else None,
        "threads": torch.get_num_threads(),
        "seconds": wall,
        "images_per_second": pairs / wall,
        "ms_per_image": ms,
        "denoiser_fraction": sum(clock.seconds.values()) / wall,
        "denoiser_ms_per_image": {n: 1000 * s / pairs for n, s in clock.seconds.items()},
        "denoiser_calls": dict(clock.calls),
        "peak_memory_mb": mem, "memory": mem_kind,
        "images": len(images),
    }


def _autocast(pipe, dtype):
    """Mixed precision as training runs it: weights as loaded, matmuls and convolutions in ``dtype``."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(pipe.device.type, dtype=dtype)


def check_args(pipe, *, pairs=1, views=1, steps=None, batch=None, guidance=None, stages=None,
               refine_strength=None, refine_noise=None, seed=0) -> None:
    """Every argument checked before anything runs: a one-line DataError naming the argument."""
    from pcdms_aug.generation.names import MAX_VIEWS_PER_SOURCE
    from pcdms_aug.pipelines.pipeline_config import ORDER
    from pcdms_aug.utils.argtypes import MAX_BATCH, MAX_SEED, MAX_STEPS

    for name, value, lo, hi in (("--pairs", pairs, 1, MAX_PAIRS), ("--views", views, 1, MAX_VIEWS_PER_SOURCE),
                                ("--steps", steps, 1, MAX_STEPS), ("--batch", batch, 1, MAX_BATCH),
                                ("--seed", seed, 0, MAX_SEED)):
        if value is not None and (not isinstance(value, int) or not lo <= value <= hi):
            raise DataError(f"{name} must be an integer in {lo}..{hi}, got {shown(value)}")
    if stages is not None:
        bad = [s for s in stages if s not in ORDER]
        if bad or not stages:
            raise DataError(f"--stages: unknown stage(s) {', '.join(bad) or '(none given)'}; use a comma list of "
                            f"{', '.join(ORDER)}")
        if "inpaint" not in stages:
            raise DataError("--stages must include inpaint (the stage that draws the image)")
        missing = [s for s in stages if pipe is not None and s not in pipe.stages]
        if missing:
            raise DataError(f"--stages: {', '.join(missing)} not in these weights (they hold "
                            f"{', '.join(pipe.stages)})")
    if isinstance(guidance, dict):
        bad = [k for k in guidance if k not in ORDER]
        if bad:
            raise DataError(f"--guidance: unknown stage {bad[0]!r}; use {', '.join(ORDER)}")
    values = guidance.values() if isinstance(guidance, dict) else ([] if guidance is None else [guidance])
    if any(v < 0 for v in values):
        raise DataError(f"--guidance must not be negative, got {guidance}")
    if refine_strength is not None and not 0.0 < refine_strength <= 1.0:
        raise DataError(f"--refine-strength must be in (0, 1], got {refine_strength}")
    if refine_noise is not None and not 0.0 <= refine_noise <= 1.0:
        raise DataError(f"--refine-noise must be in [0, 1], got {refine_noise}")


def _guidance(guidance, samp: dict, stages) -> dict:
    """The guidance each stage ran at, as the pipeline resolves it."""
    from pcdms_aug.pipelines.pipeline_config import DEFAULT_GUIDANCE

    base = {n: float((samp.get("guidance") or {}).get(n, DEFAULT_GUIDANCE[n])) for n in stages}
    if isinstance(guidance, dict):
        return {n: float(guidance.get(n, base[n])) for n in stages}
    return {n: float(guidance) for n in stages} if guidance is not None else base


# ------------------------------------------------------------------------------------------------ CLI
def _parse_guidance(text: str):
    import argparse

    try:
        if "=" not in text:
            return float(text)
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or stage=number,...; got {text!r}") from None

def configure(parser) -> None:
    from pcdms_aug.config.schema import SAMPLERS
    from pcdms_aug.utils.runtime import DEFAULT_DTYPE, DTYPE_CHOICES

    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", help="pipeline YAML: random weights (default tiny/pipeline.yaml)")
    src.add_argument("--weights", help="'tiny' (shipped) or a folder written by PCDMsPipeline.save_pretrained")
    parser.add_argument("--pairs", type=int, default=16, help="images to generate (default 16)")
    parser.add_argument("--views", type=int, default=4, help="target poses per source (default 4)")
    parser.add_argument("--steps", type=int, help="sampling steps of every stage (default: the pipeline's)")
    parser.add_argument("--scheduler", choices=SAMPLERS)
    parser.add_argument("--batch", type=int, help="pairs per forward pass (default: the pipeline's batch_size)")
    parser.add_argument("--guidance", type=_parse_guidance, help="guidance of every stage (2.0), or per stage "
                                                                 "(inpaint=2,refine=2; default: the pipeline's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--naive", action="store_true", help="upstream's pattern: one pair at a time, source "
                                                           "re-encoded per pair (the baseline)")
    mode.add_argument("--compare", action="store_true", help="run naive, then batched, and report the speed-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--stages", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                        help="comma list among prior,inpaint,refine (default: every stage of the weights)")
    parser.add_argument("--refine-strength", type=float, help="stage 3 img2img strength in (0, 1]")
    parser.add_argument("--refine-noise", type=float, help="stage 3 start-noise scale in [0, 1]")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=DEFAULT_DTYPE,
                        help="compute type (default auto: fp32 on a CPU, bf16 on a GPU that has it, else fp16); "
                             "fp16 and bf16 run under torch.autocast with the weights kept in fp32")
    parser.add_argument("--cast", action="store_true",
                        help="cast the weights to --dtype instead of autocast (half the weight memory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _line(r: dict) -> str:
    ms = r["ms_per_image"]
    return (f"{r['mode']:>7}: {r['images_per_second']:.3f} images/s ({r['pairs']} pairs, batch {r['batch']}, "
            f"{r['threads']} threads, {r['device']}) | ms/image encode {ms['encode']:.1f} prior {ms['prior']:.1f} "
            f"inpaint {ms['inpaint']:.1f} refine {ms['refine']:.1f} other {ms['other']:.1f} | denoisers "
            f"{100 * r['denoiser_fraction']:.1f}% | peak {r['peak_memory_mb']:.0f} MB ({r['memory']})")


def run(args) -> int:
    from pcdms_aug.pipelines.weights_path import check_weights_spec

    weights = args.weights or args.config or "tiny/pipeline.yaml"
    if args.config:
        from pcdms_aug.config.loading import resolve_config_path

        weights = str(resolve_config_path(args.config))
    check_weights_spec(weights)  # before torch and diffusers load (seconds)
    import torch

    from pcdms_aug.utils.runtime import pick_device, pick_dtype
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    dev = pick_device(args.device)
    checked = dict(pairs=args.pairs, views=args.views, steps=args.steps, batch=args.batch, guidance=args.guidance,
                   stages=args.stages, refine_strength=args.refine_strength, refine_noise=args.refine_noise,
                   seed=args.seed)
    check_args(None, **checked)  # before the (paper scale: minutes of) loading
    compute = pick_dtype(args.dtype, dev)
    autocast = None if compute == torch.float32 or args.cast else compute
    pipe = PCDMsPipeline.load(weights, dev, "fp32" if autocast is not None else str(compute).replace("torch.", ""))
    kw = dict(pairs=args.pairs, views=args.views, steps=args.steps, scheduler=args.scheduler, batch=args.batch,
              seed=args.seed, guidance=args.guidance, stages=args.stages, refine_strength=args.refine_strength,
              refine_noise=args.refine_noise, autocast=autocast)
    if args.compare:
        naive = bench(pipe, naive=True, **kw)
        fast = bench(pipe, naive=False, warmup=False, **kw)
        report = {"weights": weights, "naive": naive, "batched": fast,
                  "speedup": fast["images_per_second"] / naive["images_per_second"]}
        if args.json:
            print(json.dumps(report))
        else:
            print(_line(naive))
            print(_line(fast))
            print(f"speed-up {report['speedup']:.2f}x")
        return 0
    report = {"weights": weights, **bench(pipe, naive=args.naive, **kw)}
    print(json.dumps(report) if args.json else _line(report))
    return 0
