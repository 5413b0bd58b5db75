"""Paper-scale figures computed without weights or a GPU: parameters, training FLOPs and memory, FLOPs per image.

    python -m pcdms_aug.perf.gpu_estimate            # one JSON object (3 minutes on 2 shared CPU cores)

Every stage is built from the paper configs on the ``meta`` device (shapes only, no memory), so the parameter
counts are the published architectures' own. FLOPs are counted by ``torch.utils.flop_counter`` on meta tensors
(matmuls, convolutions, attention; elementwise work is not counted): one training step of each stage (forward
and backward) before the feature cache (the frozen networks in the step, gradient checkpointing) and after it
(``training``), with the memory of both and the largest batch that fits 80 GB; one generated image with the
paper sampling settings (``sampling``); the GPU-hours of the Market-1501 recipe from those counts (``bill``).
A denoising loop on meta tensors cannot run (the schedulers read timestep values), so the stages' sampling loop
is replaced, while counting, by one denoiser evaluation at the loop's batch, multiplied by the number of
evaluations the loop makes.
"""
from __future__ import annotations

import contextlib
import json
import sys

import torch

from pcdms_aug.training.memory import HEADROOM, largest_batch, meta_batch, set_checkpointing, step_memory

BUDGET_GB = 80.0  # an A100 / H100 80 GB
ORDER = ("prior", "inpaint", "refine")


def build_meta(name: str, overrides=()):
    """Stage ``name`` of the paper configs on the meta device (``overrides``: ``key=value`` of its config)."""
    from pcdms_aug.config.loading import load_config
    from pcdms_aug.stages import build_stage

    cfg = load_config(f"paper/{name}.yaml", ["random_weights=true", *overrides])
    with torch.device("meta"):
        return build_stage(name, cfg)


def parameter_counts(stage) -> dict:
    counts = {c: sum(p.numel() for p in m.parameters()) for c, m in stage.components().items()}
    trainable = sum(p.numel() for p in stage.trainable_parameters())
    return {"components": counts, "trainable": trainable, "frozen": sum(counts.values()) - trainable}


def training_flops(stage, batch: int = 1, device: str = "meta") -> dict:
    """FLOPs of one training step per ``batch`` samples, split: ``frozen``, the frozen networks' forward
    (``Stage.frozen_inputs``: what a feature cache computes once); ``trainable``, the loss from those
    features, forward and backward (blocks recomputed under gradient checkpointing counted again, and what
    the loss runs of frozen parts, e.g. stage 3's decoder under its SSIM term). ``device``: where the stage
    is (a real one computes the step once while counting)."""
    from torch.utils.flop_counter import FlopCounterMode

    stage.train()
    b = meta_batch(stage, batch, device)
    with FlopCounterMode(display=False) as counter:
        frozen = stage.frozen_inputs(b)
    frozen_flops = int(counter.get_total_flops())
    poses = {k: v for k, v in b.items() if not k.endswith("_image") or k.endswith("pose_image")}
    with FlopCounterMode(display=False) as counter:
        loss = stage.training_loss({**poses, "frozen": frozen}, generator=None)
        loss.backward()
    stage.zero_grad(set_to_none=True)
    trainable = int(counter.get_total_flops())
    return {"frozen": frozen_flops, "trainable": trainable, "total": frozen_flops + trainable}


def cache_flops(stage) -> dict:
    """FLOPs of building a feature cache: per image file and per pair (``Stage.image_features`` of every
    feature a role needs, ``Stage.pair_features``)."""
    from torch.utils.flop_counter import FlopCounterMode

    needs = stage.frozen_needs()
    names = tuple(sorted({n for r in ("source", "target") for n in needs.get(r, ())}))
    b = meta_batch(stage, 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        stage.image_features(b["source_image"], names)
    image = int(counter.get_total_flops())
    pair = 0
    if needs.get("pair"):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            stage.pair_features(b, needs["pair"])
        pair = int(counter.get_total_flops())
    return {"per_image": image, "per_pair": pair}


@contextlib.contextmanager
def one_evaluation_loop(record: dict):
    """Within: the stages' sampling loop makes one denoiser evaluation (the loop's own batch and guidance) and
    records its FLOPs and how many evaluations the real loop makes (``steps * strength`` of them)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pcdms_aug.stages import inpaint, prior, refine

    def loop(model_fn, scheduler, shape, generator, device, steps, guidance, dtype=torch.float32, init=None,
             strength=1.0, init_noise=1.0, latents=None, step_end=None):
        doubled = guidance is not None and guidance != 1.0
        x = torch.zeros(shape, device=device, dtype=dtype)
        t = torch.tensor(500, device=device)
        with FlopCounterMode(display=False) as counter:
            model_fn(torch.cat([x, x]) if doubled else x, t, doubled)
        keep = max(1, min(steps, round(steps * strength))) if strength < 1.0 else steps
        record.update(eval_flops=int(counter.get_total_flops()), evaluations=keep,
                      batch_per_evaluation=shape[0] * (2 if doubled else 1))
        return x

    modules = (prior, inpaint, refine)
    saved = [m.denoise for m in modules]
    for m in modules:
        m.denoise = loop
    try:
        yield
    finally:
        for m, fn in zip(modules, saved):
            m.denoise = fn


def sampling_flops(name: str, stage, steps: int, guidance: float, strength: float = 1.0) -> dict:
    """FLOPs of one image through this stage: encoders and decoders once, the denoiser ``evaluations`` times."""
    from torch.utils.flop_counter import FlopCounterMode

    stage.eval()
    b = meta_batch(stage, 1)
    kw = dict(num_inference_steps=steps, guidance_scale=guidance)
    record: dict = {}
    with torch.no_grad(), one_evaluation_loop(record), FlopCounterMode(display=False) as counter:
        src = stage.encode_source(b["source_image"])
        if name == "prior":
            stage.sample(src, b["source_pose"], b["target_pose"], **kw)
        elif name == "inpaint":
            embed = torch.zeros(1, stage.clip.dim, device="meta")
            stage.sample(src, b["source_pose_image"], b["target_pose_image"], embed, **kw)
        else:
            stage.sample(src, b["coarse_image"], strength=strength, **kw)
    once = int(counter.get_total_flops())  # encoders, decoders and one evaluation (counted by both counters)
    total = once + (record["evaluations"] - 1) * record["eval_flops"]
    return {"flops": total, "denoiser_flops": record["evaluations"] * record["eval_flops"],
            "denoiser_evaluations": record["evaluations"],
            "denoiser_batch_per_evaluation": record["batch_per_evaluation"],
            "flops_per_evaluation": record["eval_flops"]}


def paper_sampling() -> dict:
    from pcdms_aug.config.loading import load_config

    samp = load_config("paper/pipeline.yaml")["sampling"]
    return {"steps": samp["steps"], "guidance": samp["guidance"],
            "refine_strength": float(samp.get("refine_strength", 1.0)), "scheduler": samp["scheduler"]}


def config_batch(name: str) -> int:
    from pcdms_aug.config.loading import load_config

    return int(load_config(f"paper/train_{name}.yaml")["train"]["batch_size"])


def training_plan(stage, batch: int, budget_gb: float = BUDGET_GB) -> dict:
    """One stage's training step before (the frozen networks run in every step, gradient checkpointing on:
    the paper configs until the cache) and after (features from a feature cache; checkpointing only when the
    batch does not fit ``budget_gb`` without, as ``gradient_checkpointing: auto`` decides), at ``batch``:
    FLOPs per sample split into frozen and trainable work, memory, and the largest batch that fits."""
    usable = HEADROOM * budget_gb
    set_checkpointing(stage, True)
    before = training_flops(stage)
    mem_before = step_memory(stage, batch, True, cached=False)
    plain = step_memory(stage, batch, False, cached=True)
    ckpt = plain["total"] > usable
    set_checkpointing(stage, ckpt)
    flops = training_flops(stage)
    after = {"frozen": 0, "trainable": flops["trainable"], "total": flops["trainable"]}
    return {
        "batch": batch, "budget_gb": budget_gb, "usable_gb": usable,
        "flops_per_sample": {"before": {**before, "checkpointing": True, "cached": False},
                             "after": {**after, "checkpointing": ckpt, "cached": True}},
        "memory_gb": {"before": mem_before, "after": plain if not ckpt else step_memory(stage, batch, True, True)},
        "largest_batch": {"before": largest_batch(stage, usable, True, False),
                          "after_no_checkpointing": largest_batch(stage, usable, False, True),
                          "after_checkpointing": largest_batch(stage, usable, True, True)},
        "cache_build_flops": cache_flops(stage)}


def estimate() -> dict:
    """Every paper stage: parameters, the training plan before and after the feature cache, sampling FLOPs."""
    samp = paper_sampling()
    report = {"sampling": samp, "stages": {}}
    for name in ORDER:
        stage = build_meta(name)
        entry = parameter_counts(stage)
        entry["training"] = training_plan(stage, config_batch(name))
        entry["sampling"] = sampling_flops(name, stage, samp["steps"][name], samp["guidance"][name],
                                           samp["refine_strength"])
        report["stages"][name] = entry
        del stage
    per_image = sum(s["sampling"]["flops"] for s in report["stages"].values())
    report["flops_per_image"] = per_image
    report["denoiser_evaluations_per_image"] = {n: s["sampling"]["denoiser_evaluations"]
                                                for n, s in report["stages"].items()}
    return report


# What one H200 reached per stage (docs/gpu.md, section 3: samples/s x the "before" FLOPs per sample, bf16,
# gradient checkpointing): the efficiency the bill assumes for every step, cached or not.
MEASURED_TFLOPS = {"prior": 71.0, "inpaint": 99.0, "refine": 54.0}
HBM_TB_S = 3.35  # H100 SXM memory bandwidth: the per-step AdamW and EMA updates are bound by it
UPDATE_BYTES = 40  # per trainable parameter and step: fused AdamW reads and writes 28, the EMA update 12
MARKET_TRAIN = {"images": 12_112, "pairs": 263_632}  # make_pairs over market-annotation-train.csv


def recipe_bill(report: dict, gpus: int = 8) -> dict:
    """GPU-hours of the Market-1501 recipe from the counts: each stage's ``max_steps`` at its config's batch on
    ``gpus`` GPUs, a step costing its FLOPs at the stage's measured TFLOP/s plus the optimizer and EMA updates
    at memory bandwidth; after, plus building the feature cache (its FLOPs at the same rate) once."""
    from pcdms_aug.config.loading import load_config

    out = {"gpus": gpus, "assumed_tflops": MEASURED_TFLOPS, "stages": {}}
    for name, entry in report["stages"].items():
        train = load_config(f"paper/train_{name}.yaml")["train"]
        plan, rate = entry["training"], MEASURED_TFLOPS[name] * 1e12
        samples = int(train["max_steps"]) * plan["batch"] * gpus
        update = UPDATE_BYTES * entry["trainable"] / (HBM_TB_S * 1e12)  # seconds per step and GPU
        row = {"steps": int(train["max_steps"]), "samples": samples}
        for when in ("before", "after"):
            per_step = plan["batch"] * plan["flops_per_sample"][when]["total"] / rate + update
            row[f"{when}_samples_per_second_per_gpu"] = plan["batch"] / per_step
            row[f"{when}_gpu_hours"] = samples / row[f"{when}_samples_per_second_per_gpu"] / 3600
        build = plan["cache_build_flops"]
        pairs = MARKET_TRAIN["pairs"] if build["per_pair"] else 0
        row["cache_gpu_hours"] = (MARKET_TRAIN["images"] * build["per_image"] + pairs * build["per_pair"]) / rate / 3600
        row["after_gpu_hours"] += row["cache_gpu_hours"]
        out["stages"][name] = row
    for when in ("before", "after"):
        out[f"{when}_gpu_hours"] = sum(r[f"{when}_gpu_hours"] for r in out["stages"].values())
    return out


def main(argv=None) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = estimate()
    report["bill"] = recipe_bill(report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
