"""Training memory counted on the ``meta`` device: what a step holds, and whether it needs gradient checkpointing.

A stage config's ``gradient_checkpointing: auto`` is decided here for the run's batch and device: the step
without checkpointing when it fits the device's memory (it is about a quarter faster: no recomputed forward),
with it when only that fits, refused (one line, with the largest batch that fits) when neither does.

Weights stay fp32 under autocast: a trainable parameter costs 4 bytes of weight, 4 of gradient, 8 of AdamW
moments and 4 of EMA copy (20 bytes); a frozen one on the device 4 bytes (none that a feature cache replaces).
Activations: the bytes the forward keeps for the backward, counted with ``saved_tensors_hooks`` on meta
tensors in fp32 (an upper bound under bf16 autocast), plus, with checkpointing, the largest checkpointed block.
"""
from __future__ import annotations

import copy
import os

import torch

from pcdms_aug.utils.errors import DataError

GB = 1e9
HEADROOM = 0.9  # of the device's memory: the CUDA context, allocator slack and the transient frozen forward


def memory_estimate(trainable: int, frozen: int, activations_gb: float) -> dict:
    """GB of one training step: trainable weights, gradients, AdamW's two moments and the EMA copy (fp32),
    the frozen weights on the device, and ``activations_gb`` (counted by the functions below)."""
    parts = {"trainable_weights": 4 * trainable, "gradients": 4 * trainable, "adamw_moments": 8 * trainable,
             "ema": 4 * trainable, "frozen_weights": 4 * frozen}
    gb = {k: v / GB for k, v in parts.items()}
    gb["activations"] = activations_gb
    gb["total"] = sum(gb.values())
    return gb


def meta_batch(stage, n: int, device: str = "meta") -> dict:
    """A training batch of ``n`` zero samples at the stage's size (on ``device``: meta, shapes only)."""
    h, w = stage.image_size
    meta = dict(device=device)
    return {"source_image": torch.zeros(n, 3, h, w, **meta), "target_image": torch.zeros(n, 3, h, w, **meta),
            "coarse_image": torch.zeros(n, 3, h, w, **meta), "source_pose_image": torch.zeros(n, 3, h, w, **meta),
            "target_pose_image": torch.zeros(n, 3, h, w, **meta), "source_pose": torch.zeros(n, 54, **meta),
            "target_pose": torch.zeros(n, 54, **meta)}


class SavedCounter:
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
    """Bytes the forward of one training step keeps for the backward, in the meta tensors' dtype (fp32)."""
    pack = SavedCounter(stage)
    stage.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage.training_loss(meta_batch(stage, batch), generator=None)
    return pack.total


def checkpointing_flags(stage) -> dict:
    return {n: m.gradient_checkpointing for n, m in stage.named_modules() if hasattr(m, "gradient_checkpointing")}


def set_checkpointing(stage, flags) -> None:
    """``flags``: a dict of :func:`checkpointing_flags` to restore, or whether the trainable denoisers
    checkpoint (through their own switches: diffusers' models need theirs)."""
    from pcdms_aug.stages.base import FROZEN

    if isinstance(flags, dict):
        for name, module in stage.named_modules():
            if name in flags:
                module.gradient_checkpointing = flags[name]
        return
    if flags:
        stage.enable_gradient_checkpointing()
        return
    for name, module in stage.components().items():
        if name in FROZEN:
            continue
        if hasattr(module, "disable_gradient_checkpointing"):
            module.disable_gradient_checkpointing()
        elif hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = False


def largest_block_bytes(stage, batch: int) -> int:
    """Without checkpointing, the most any one checkpointed block (a UNet resnet or attention, a prior
    transformer block) saves: with checkpointing, the backward recomputes one block at a time, so this is the
    extra it holds at its peak."""
    pack, seen = SavedCounter(stage), {}
    handles = []
    for name, module in stage.named_modules():
        if name.rsplit(".", 2)[-2:-1] and name.rsplit(".", 2)[-2] in ("resnets", "attentions", "transformer_blocks"):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, -pack.total)))
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: seen.__setitem__(n, seen[n] + pack.total)))
    flags = checkpointing_flags(stage)
    set_checkpointing(stage, False)
    try:
        stage.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stage.training_loss(meta_batch(stage, batch), generator=None)
    finally:
        for h in handles:
            h.remove()
        set_checkpointing(stage, flags)
    return max(seen.values(), default=0)


def step_memory(stage, batch: int, checkpointing: bool, cached: bool) -> dict:
    """GB of one step of ``stage`` (built on meta) at ``batch``; ``cached``: features from a feature cache,
    so only the frozen components the loss still runs are on the device."""
    from pcdms_aug.stages.base import FROZEN

    trainable = sum(p.numel() for p in stage.trainable_parameters())
    frozen_names = [n for n in FROZEN if stage.frozen_component(n) is not None
                    and (not cached or n in stage.cache_keeps())]
    frozen = sum(p.numel() for n in frozen_names for p in stage.frozen_component(n).parameters())
    flags = checkpointing_flags(stage)
    set_checkpointing(stage, checkpointing)
    try:
        saved = saved_activation_bytes(stage, batch) / GB
        block = largest_block_bytes(stage, batch) / GB if checkpointing else 0.0
    finally:
        set_checkpointing(stage, flags)
    out = memory_estimate(trainable, frozen, saved + block)
    out.update(batch=batch, checkpointing=checkpointing, cached=cached, saved_activations_fp32=saved,
               largest_block_fp32=block)
    return out


def largest_batch(stage, budget_gb: float, checkpointing: bool, cached: bool) -> int:
    """The largest batch whose step fits ``budget_gb`` (activations grow linearly with the batch: counted at
    1 and 2)."""
    one, two = (step_memory(stage, b, checkpointing, cached) for b in (1, 2))
    per = two["total"] - one["total"]
    return max(0, int((budget_gb - (one["total"] - per)) // per)) if per > 0 else 0


def folder_architecture(part: str, stage) -> dict | None:
    """The architecture a component's local folder holds (its ``config.json``), or None (inline config);
    ``stage``: the typed stage config (:mod:`pcdms_aug.config.schema`)."""
    from pcdms_aug.models.encoders import pretrained_folder

    spec = getattr(stage, part, None)
    if spec is None or (part == "codec" and spec.type != "vae"):
        return None
    kind = {"codec": "vae"}.get(part, part)
    folder = pretrained_folder(spec, stage, kind)
    if folder is None:
        return None
    if part in ("clip", "dino"):
        from transformers import CLIPVisionConfig, Dinov2Config

        return (CLIPVisionConfig if part == "clip" else Dinov2Config).from_pretrained(folder).to_diff_dict()
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls, sub = (UNet2DConditionModel, "unet") if part == "unet" else (AutoencoderKL, "vae")
    sub = sub if (folder / sub).is_dir() else None
    arch = cls.load_config(folder, subfolder=sub, local_files_only=True)
    return {k: v for k, v in arch.items() if not k.startswith("_")}


def meta_stage(name: str, model_cfg: dict):
    """The stage of a run's model config, architecture only, on the meta device (no weights read: the
    architectures of folder-backed parts from their ``config.json``)."""
    from pcdms_aug.config.schema import stage_config
    from pcdms_aug.stages import build_stage

    cfg = copy.deepcopy(dict(model_cfg))
    typed = stage_config(cfg, name, f"{name} stage config")
    for part in ("clip", "dino", "codec", "unet"):
        arch = folder_architecture(part, typed)
        if arch is not None:
            cfg[part]["config"] = arch
    cfg["random_weights"] = True
    cfg["gradient_checkpointing"] = False
    with torch.device("meta"):
        return build_stage(name, cfg)


def device_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory / GB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


def choose_checkpointing(name: str, model_cfg: dict, batch: int, device: str, cached: bool,
                         budget: float | None = None) -> tuple[bool, dict]:
    """``gradient_checkpointing: auto``: (whether to checkpoint, the estimate that decided) for a step of
    ``batch`` on ``device`` (``budget``: usable GB, default ``HEADROOM`` of its memory); a DataError when the
    batch does not fit even with checkpointing."""
    budget = HEADROOM * device_memory_gb(device) if budget is None else budget
    stage = meta_stage(name, model_cfg)
    plain = step_memory(stage, batch, False, cached)
    if plain["total"] <= budget:
        return False, {**plain, "budget_gb": budget}
    ckpt = step_memory(stage, batch, True, cached)
    if ckpt["total"] <= budget:
        return True, {**ckpt, "budget_gb": budget}
    most = largest_batch(stage, budget, True, cached)
    raise DataError(f"train.batch_size={batch} does not fit {device} ({ckpt['total']:.1f} GB with gradient "
                    f"checkpointing, {budget:.1f} GB usable); the largest batch that fits is {most}")


def auto_checkpointing(stage, name: str, model_cfg: dict, batch: int, rt, cached: bool, log) -> bool:
    """``gradient_checkpointing: auto`` applied to a built ``stage``: :func:`choose_checkpointing`, logged."""
    on, plan = choose_checkpointing(name, model_cfg, batch, rt.device, cached)
    if on:
        stage.enable_gradient_checkpointing()
    if rt.is_main:
        log.info("gradient checkpointing %s: %.1f GB estimated of %.1f GB usable at batch %d", "on" if on else "off",
                 plan["total"], plan["budget_gb"], batch)
    return on
