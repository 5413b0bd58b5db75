"""One pipeline call's arguments checked (a ValueError naming the first bad one) and normalised: the config's
defaults filled in, sources at the working size (or a given encoding), poses as Pose objects, one sampler
object per stage."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from pcdms_aug.pipelines.image_processing import OUTPUT_TYPES, as_poses, images_to_tensor
from pcdms_aug.pipelines.pipeline_config import DEFAULT_BATCH, ORDER, sampling_defaults
from pcdms_aug.stages.diffusion import make_sampler


@dataclass
class SourceEncoding:
    """Sources encoded once (``PCDMsPipeline.encode_sources``), to reuse over many target poses."""

    features: dict  # stage name -> {name: tensor with one row per source}
    size: tuple  # (height, width) of the source images: the outputs' size
    count: int

    def select(self, index: Sequence[int]) -> "SourceEncoding":
        """Rows ``index`` (repeats allowed): one source per pair, without encoding anything again."""
        idx = list(index)
        if any(not 0 <= i < self.count for i in idx):
            raise ValueError(f"source index out of range 0..{self.count - 1}")
        feats = {n: {k: v[idx] for k, v in f.items()} for n, f in self.features.items()}
        return SourceEncoding(feats, self.size, len(idx))


@dataclass
class CallInputs:
    """One call's arguments as :func:`check_call` leaves them."""

    stages: tuple
    steps: dict  # stage -> number of inference steps
    guidance: dict  # stage -> guidance scale
    samplers: dict  # stage -> the diffusers scheduler object that samples it in this call
    refine_strength: float
    refine_noise: float
    output_type: str
    output_size: str
    sources: torch.Tensor | SourceEncoding | None = None  # (N, 3, H, W) at image_size, or the given encoding
    size: tuple = ()  # (height, width) of the sources
    source_poses: list = field(default_factory=list)
    target_poses: list = field(default_factory=list)  # one per pair
    pair_source: list = field(default_factory=list)  # each pair's source
    generator: torch.Generator | list | None = None
    target_embeds: torch.Tensor | None = None
    batch_size: int = 1
    latents: dict = field(default_factory=dict)  # stage -> starting noise, one row per pair
    callback: object = None  # callback_on_step_end
    callback_inputs: tuple = ()


def per_stage(value, default: dict, what: str, cast) -> dict:
    """A number for every stage, or ``{stage: number}`` (stages left out keep the default); NaN and infinities
    are refused (a NaN guidance would make black images that pass every later check)."""
    if value is None:
        out = {n: cast(default[n]) for n in ORDER}
    elif isinstance(value, dict):
        _known_stages(value, what)
        out = {n: cast(value.get(n, default[n])) for n in ORDER}
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number or a dict per stage, got {value!r}")
    else:
        out = {n: cast(value) for n in ORDER}
    bad = [n for n, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} of {bad[0]} must be a finite number, got {out[bad[0]]}")
    return out


def _known_stages(value: dict, what: str) -> None:
    unknown = sorted(set(value) - set(ORDER))
    if unknown:
        raise ValueError(f"{what}: unknown stage(s) {', '.join(unknown)}; use {', '.join(ORDER)}")


def check_call(pipe, source_images, source_poses, target_poses, num_inference_steps=None, guidance_scale=None,
               generator=None, scheduler=None, stages=ORDER, output_type="pil", target_embeds=None, batch_size=None,
               refine_strength=None, refine_noise=None, output_size="source", source_encoding=None, latents=None,
               callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)) -> CallInputs:
    """The arguments of ``PCDMsPipeline.__call__`` checked and normalised; nothing is encoded."""
    call = _check_settings(pipe, stages, output_type, output_size, scheduler, num_inference_steps, guidance_scale,
                           refine_strength, refine_noise)
    if isinstance(source_images, SourceEncoding):
        raise ValueError("pass a SourceEncoding as source_encoding=, not as source_images")
    if source_encoding is not None:
        if source_images is not None:
            raise ValueError("give source_images or source_encoding, not both")
        if not isinstance(source_encoding, SourceEncoding):
            raise ValueError(f"source_encoding must be a SourceEncoding (PCDMsPipeline.encode_sources), got "
                             f"{type(source_encoding).__name__}")
        lacking = [n for n in call.stages if n not in source_encoding.features]
        if lacking:
            raise ValueError(f"the source encoding lacks stage(s) {', '.join(lacking)}")
        call.sources, call.size, n_src = source_encoding, source_encoding.size, source_encoding.count
    elif source_images is None:
        raise ValueError("no source images given (source_images, or source_encoding from encode_sources)")
    else:
        call.sources, call.size = images_to_tensor(source_images, pipe.image_size)
        n_src = call.sources.shape[0]
    _check_pairs(pipe, call, n_src, source_poses, target_poses, generator, target_embeds)
    call.batch_size = int(batch_size or pipe.config.get("batch_size", DEFAULT_BATCH))
    if call.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {call.batch_size}")
    call.latents = _check_latents(latents, call)
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise ValueError("callback_on_step_end must be callable (pipe, stage, step, timestep, callback_kwargs)")
    wrong = [k for k in callback_on_step_end_tensor_inputs if k not in pipe._callback_tensor_inputs]
    if wrong:
        raise ValueError(f"callback_on_step_end_tensor_inputs: {', '.join(wrong)} not among "
                         f"{', '.join(pipe._callback_tensor_inputs)}")
    call.callback, call.callback_inputs = callback_on_step_end, tuple(callback_on_step_end_tensor_inputs)
    return call


def _samplers(pipe, scheduler, stages) -> dict:
    """Each stage's sampler: the pipeline's own objects, or for this call only a shorthand for every stage
    (``"ddim"``) or ``{stage: shorthand or scheduler object}``."""
    chosen = {}
    if isinstance(scheduler, dict):
        _known_stages(scheduler, "scheduler")
        chosen = scheduler
    elif scheduler is not None:
        if not isinstance(scheduler, str):
            raise ValueError("scheduler must be a shorthand or {stage: shorthand or scheduler}; to use a scheduler "
                             "object, assign it to the pipeline (pipe.inpaint_scheduler = ...)")
        chosen = {n: scheduler for n in stages}
    return {n: make_sampler(chosen[n], pipe.stages[n].noise_scheduler) if n in chosen else pipe.schedulers[n]
            for n in stages}


def _check_settings(pipe, stages, output_type, output_size, scheduler, num_inference_steps, guidance_scale,
                    refine_strength, refine_noise) -> CallInputs:
    """The sampling settings of a call (what does not depend on the pairs), defaults filled in."""
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    bad = [s for s in stages if s not in ORDER]
    if bad or "inpaint" not in stages or len(set(stages)) != len(stages):
        raise ValueError(f"stages must be distinct names among {ORDER} and include 'inpaint', got {stages}")
    missing = [s for s in stages if s not in pipe.stages]
    if missing:
        raise ValueError(f"stage(s) {', '.join(missing)} not loaded in this pipeline")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if output_size not in ("source", "working"):
        raise ValueError(f"output_size must be source or working, got {output_size!r}")
    samp = sampling_defaults(pipe.config)
    samplers = _samplers(pipe, scheduler, stages)
    steps = per_stage(num_inference_steps, samp["steps"], "num_inference_steps", int)
    guide = per_stage(guidance_scale, samp["guidance"], "guidance_scale", float)
    strength = float(samp["refine_strength"] if refine_strength is None else refine_strength)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"refine_strength must be in (0, 1], got {strength}")
    init_noise = float(samp["refine_noise"] if refine_noise is None else refine_noise)
    if not 0.0 <= init_noise <= 1.0:
        raise ValueError(f"refine_noise must be in [0, 1], got {init_noise}")
    if strength >= 1.0:
        # The config's refine_noise belongs to its img2img start; a start from noise has no coarse image.
        if refine_noise is not None and init_noise != 1.0 and "refine" in stages:
            raise ValueError(f"refine_noise {init_noise} needs refine_strength < 1: from noise there is no "
                             "coarse image to start from")
        init_noise = 1.0
    for n in stages:
        if steps[n] < 1:
            raise ValueError(f"num_inference_steps of {n} must be at least 1, got {steps[n]}")
        if guide[n] < 0:
            raise ValueError(f"guidance_scale of {n} must not be negative, got {guide[n]}")
    return CallInputs(stages, steps, guide, samplers, strength, init_noise, output_type, output_size)


def _check_pairs(pipe, call: CallInputs, n_src: int, source_poses, target_poses, generator, target_embeds) -> None:
    """Poses, generators and target embeddings against the number of sources and pairs, into ``call``."""
    if source_poses is None or target_poses is None:
        raise ValueError("source_poses and target_poses are required")
    call.source_poses = as_poses(source_poses, call.size, "source poses")
    call.target_poses = as_poses(target_poses, call.size, "target poses")
    if len(call.source_poses) != n_src:
        raise ValueError(f"got {len(call.source_poses)} source poses for {n_src} source images")
    n_pairs = len(call.target_poses)
    if n_src not in (1, n_pairs):
        raise ValueError(f"got {n_src} source images for {n_pairs} target poses (give one, or one per pair)")
    call.pair_source = [0] * n_pairs if n_src == 1 else list(range(n_pairs))
    if isinstance(generator, (list, tuple)) and len(generator) != n_pairs:
        raise ValueError(f"got {len(generator)} generators for {n_pairs} pairs")
    call.generator = generator
    if "prior" in call.stages:
        if target_embeds is not None:
            raise ValueError("target_embeds replace the prior: pass them with stages without 'prior'")
    elif target_embeds is None:
        if getattr(pipe.stages["inpaint"], "uses_target_embed", True):
            raise ValueError("without the prior stage, pass target_embeds (e.g. the target's true CLIP "
                             "embedding)")
    else:
        target_embeds = torch.as_tensor(target_embeds)
        dim = pipe.stages["inpaint"].clip.dim
        if target_embeds.shape != (n_pairs, dim):
            raise ValueError(f"target_embeds must be ({n_pairs}, {dim}), got {tuple(target_embeds.shape)}")
    call.target_embeds = target_embeds


def _check_latents(latents, call: CallInputs) -> dict:
    """``{stage: (pairs, ...) float tensor}``: each stage's starting noise (the shapes ``output_type="latent"``
    returns: prior ``target_embeds``, inpaint ``coarse_images``, refine ``images``)."""
    if latents is None:
        return {}
    if not isinstance(latents, dict):
        raise ValueError("latents must be {stage: tensor}, e.g. {'inpaint': noise}: each stage starts from "
                         "its own noise")
    _known_stages(latents, "latents")
    n_pairs = len(call.target_poses)
    for n, x in latents.items():
        if n not in call.stages:
            raise ValueError(f"latents for {n}, which this call does not run")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] != n_pairs:
            raise ValueError(f"latents of {n} must be a float tensor with one row per pair ({n_pairs}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return dict(latents)
