"""Paper-scale figures computed without weights or a GPU: parameters, training memory, FLOPs per image.

    python -m pcdms_aug.perf.gpu_estimate            # one JSON object (about a minute on a CPU)

Every stage is built from the paper configs on the ``meta`` device (shapes only, no memory), so the parameter
counts are the published architectures' own. FLOPs are counted by ``torch.utils.flop_counter`` on meta tensors
(matmuls, convolutions, attention; elementwise work is not counted): one training step of each stage (forward
and backward) and one generated image with the paper sampling settings. A denoising loop on meta tensors cannot
run (the schedulers read timestep values), so the stages' sampling loop is replaced, while counting, by one
denoiser evaluation at the loop's batch, multiplied by the number of evaluations the loop makes.
"""
from __future__ import annotations

import contextlib
import json
import sys

import torch

GB = 1e9
ORDER = ("prior", "inpaint", "refine")


def build_meta(name: str, overrides=()):
    from pcdms_aug.config.loading import load_config
    from pcdms_aug.stages import build_stage

    cfg = load_config(f"paper/{name}.yaml", ["random_weights=true", *overrides])
    with torch.device("meta"):
        return build_stage(name, cfg)


def parameter_counts(stage) -> dict:
    counts = {c: sum(p.numel() for p in m.parameters()) for c, m in stage.components().items()}
    trainable = sum(p.numel() for p in stage.trainable_parameters())
    return {"components": counts, "trainable": trainable, "frozen": sum(counts.values()) - trainable}


def memory_estimate(trainable: int, frozen: int, activations_gb: float) -> dict:
    """Bytes of one training step with fp32 master weights under bf16 autocast: trainable weights, gradients,
    AdamW's two moments and the EMA copy are fp32 (4 bytes each, 20 per trainable parameter); the frozen
    encoders are held in fp32 as the loaders give them (4 bytes). ``activations_gb``: what autocast keeps for
    the backward pass, measured elsewhere (stated separately in the docs)."""
    parts = {"trainable_weights": 4 * trainable, "gradients": 4 * trainable, "adamw_moments": 8 * trainable,
             "ema": 4 * trainable, "frozen_weights": 4 * frozen}
    gb = {k: v / GB for k, v in parts.items()}
    gb["activations"] = activations_gb
    gb["total"] = sum(gb.values())
    return gb


def _batch(stage, n: int) -> dict:
    h, w = stage.image_size
    meta = dict(device="meta")
    return {"source_image": torch.zeros(n, 3, h, w, **meta), "target_image": torch.zeros(n, 3, h, w, **meta),
            "coarse_image": torch.zeros(n, 3, h, w, **meta), "source_pose_image": torch.zeros(n, 3, h, w, **meta),
            "target_pose_image": torch.zeros(n, 3, h, w, **meta), "source_pose": torch.zeros(n, 54, **meta),
            "target_pose": torch.zeros(n, 54, **meta)}


class _SavedCounter:
    """A ``saved_tensors_hooks`` pack hook summing the bytes of distinct saved tensors that are not
    parameters (a weight saved for its backward is already counted as a weight; one activation saved by
    two operations is held once)."""

    def __init__(self, stage):
        self.params = {id(p) for p in stage.parameters()}
        self.seen: set = set()
        self.keep: list = []  # keeps the ids unique while counting
        self.total = 0

    def __call__(self, t):
        base = t._base if t._base is not None else t
        if id(base) not in self.params and id(base) not in self.seen:
            self.seen.add(id(base))
            self.keep.append(base)
            self.total += base.numel() * base.element_size()
        return t


def saved_activation_bytes(stage, batch: int) -> int:
    """Bytes the forward of one training step keeps for the backward (``saved_tensors_hooks``), in the dtype
    the meta tensors have: fp32, an upper bound for bf16 autocast (which keeps matmul inputs in bf16)."""
    pack = _SavedCounter(stage)

    stage.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage.training_loss(_batch(stage, batch), generator=None)
    return pack.total


def largest_block_bytes(stage, batch: int) -> int:
    """Without checkpointing, the most any one checkpointed block (a UNet resnet or attention, a prior
    transformer block) saves: with checkpointing, the backward recomputes one block at a time, so this is the
    extra it holds at its peak."""
    pack, seen = _SavedCounter(stage), {}
    handles = []
    for name, module in stage.named_modules():
        if name.rsplit(".", 2)[-2:-1] and name.rsplit(".", 2)[-2] in ("resnets", "attentions", "transformer_blocks"):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, -pack.total)))
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: seen.__setitem__(n, seen[n] + pack.total)))
    flags = {}
    for name, module in stage.named_modules():
        if hasattr(module, "gradient_checkpointing"):
            flags[name] = module.gradient_checkpointing
            module.gradient_checkpointing = False
    try:
        stage.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stage.training_loss(_batch(stage, batch), generator=None)
    finally:
        for h in handles:
            h.remove()
        for name, module in stage.named_modules():
            if name in flags:
                module.gradient_checkpointing = flags[name]
    return max(seen.values(), default=0)


def training_flops(stage, batch: int = 1) -> int:
    """Forward and backward FLOPs of one training step per ``batch`` samples (gradient checkpointing as the
    config sets it: recomputed blocks are counted again)."""
    from torch.utils.flop_counter import FlopCounterMode

    stage.train()
    with FlopCounterMode(display=False) as counter:
        loss = stage.training_loss(_batch(stage, batch), generator=None)
        loss.backward()
    stage.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def one_evaluation_loop(record: dict):
    """Within: the stages' sampling loop makes one denoiser evaluation (the loop's own batch and guidance) and
    records its FLOPs and how many evaluations the real loop makes (``steps * strength`` of them)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pcdms_aug.stages import inpaint, prior, refine

    def loop(model_fn, scheduler, shape, generator, device, steps, guidance, dtype=torch.float32, init=None,
             strength=1.0, init_noise=1.0):
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
    b = _batch(stage, 1)
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


def estimate(batch: int = 8) -> dict:
    """``batch``: per-GPU training batch of the memory estimate (the paper configs' 8 for the UNet stages)."""
    samp = paper_sampling()
    report = {"sampling": samp, "training_batch": batch, "stages": {}}
    for name in ORDER:
        stage = build_meta(name)
        entry = parameter_counts(stage)
        entry["training_flops_per_sample"] = training_flops(stage)
        saved = saved_activation_bytes(stage, batch) / GB
        block = largest_block_bytes(stage, batch) / GB
        entry["training_memory_gb"] = memory_estimate(entry["trainable"], entry["frozen"], saved + block)
        entry["training_memory_gb"].update(batch=batch, saved_activations_fp32=saved, largest_block_fp32=block)
        entry["sampling"] = sampling_flops(name, stage, samp["steps"][name], samp["guidance"][name],
                                           samp["refine_strength"])
        report["stages"][name] = entry
        del stage
    per_image = sum(s["sampling"]["flops"] for s in report["stages"].values())
    report["flops_per_image"] = per_image
    report["denoiser_evaluations_per_image"] = {n: s["sampling"]["denoiser_evaluations"]
                                                for n, s in report["stages"].items()}
    return report


def main(argv=None) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps(estimate(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
