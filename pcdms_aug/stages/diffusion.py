"""What the three stages share: noising with an offset, the loss, condition drops, samplers and CFG.

Words: the *noise scheduler* is a stage's training noise schedule (diffusers ``DDPMScheduler``; the ``scheduler``
block of a stage config); a *sampler* is the diffusers scheduler object that draws samples with that schedule
(``DDIMScheduler``, ``UniPCMultistepScheduler``, ...), named by the shorthands in :data:`SAMPLERS`. Pipelines
expose samplers under diffusers' attribute name, ``<stage>_scheduler``.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from pcdms_aug.config.schema import DEFAULT_SAMPLER, SAMPLERS  # noqa: F401 (declared with the configs)

def make_noise_scheduler(cfg: dict):
    """The DDPM noise schedule a stage is trained with (diffusers ``DDPMScheduler`` keys)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**cfg)


def make_sampler(sampler, noise_sched):
    """A sampler sharing ``noise_sched``'s schedule (betas, prediction type): ``sampler`` is a shorthand of
    :data:`SAMPLERS` (a new object) or a diffusers scheduler object (used as it is)."""
    import diffusers

    if not isinstance(sampler, str):
        if not (hasattr(sampler, "set_timesteps") and hasattr(sampler, "step")):
            raise ValueError(f"a sampler must be one of {', '.join(SAMPLERS)} or a diffusers scheduler, got "
                             f"{type(sampler).__name__}")
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown scheduler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    cls, settings = SAMPLERS[sampler]
    return getattr(diffusers, cls).from_config(noise_sched.config, **settings)


def sampler_name(sampler) -> str:
    """The shorthand of a sampler object made by :func:`make_sampler`, else its class name."""
    for name, (cls, settings) in SAMPLERS.items():
        if type(sampler).__name__ == cls and all(sampler.config.get(k) == v for k, v in settings.items()):
            return name
    return type(sampler).__name__


def randn(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """Normal noise; ``generator`` may be one generator or one per sample (so a sample's noise does not depend
    on the batch it is in)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
                          for g in generator])
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def rand(shape, generator, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def noise_like(x: torch.Tensor, generator, offset: float) -> torch.Tensor:
    """Gaussian noise plus the 'noise offset', which lets the model move an image's overall brightness: a
    per-sample, per-channel constant for images (B, C, H, W); a per-sample constant for vectors (B, D), as
    upstream's stage 1 adds it to its (B, 1, D) embeddings."""
    noise = randn(x.shape, generator, x.device, x.dtype)
    if offset:
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2) if x.dim() > 2 else (x.shape[0], 1)
        noise = noise + offset * randn(shape, generator, x.device, x.dtype)
    return noise


def diffusion_loss(model_fn, noise_scheduler, x0: torch.Tensor, generator, noise_offset: float = 0.0,
                   weight: torch.Tensor | None = None, timesteps: Sequence[int] | None = None,
                   start: torch.Tensor | None = None, start_prob: float = 0.0, start_noise: float = 1.0,
                   x0_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """One loss for every stage (improved-diffusion's ``training_losses``): noise ``x0`` at a random timestep,
    call ``model_fn(x_t, t)`` and regress what the noise scheduler's ``prediction_type`` names.

    ``timesteps`` = (lo, hi): draw t from [lo, hi) only. A stage that is sampled only from a partly noised
    image (stage 3 as img2img) spends its capacity where it is used, as SDXL's refiner is trained on the
    first 200 noise levels. ``start`` and ``start_prob``: for that share of the batch x_t noises ``start``
    (e.g. the coarse stage-2 image) instead of ``x0``, while the target stays ``x0``; img2img sampling
    begins from a noised coarse image, never from a noised truth, and this teaches the model that case.
    ``start_noise`` scales the noise of those samples as ``denoise``'s ``init_noise`` scales the sampler's start
    (0: x_t is the mean of q(x_t | start), the noise-free start stage 3 samples from).
    ``x0_loss(pred, x0)``: a term added to the MSE for x0-prediction models (e.g. an SSIM loss, which keeps the
    contrast an MSE-optimal prediction averages away where the target is uncertain)."""
    b = x0.shape[0]
    gdev = generator.device if generator is not None else x0.device
    n_train = noise_scheduler.config.num_train_timesteps
    lo, hi = (0, n_train) if timesteps is None else (int(timesteps[0]), int(timesteps[1]))
    if not 0 <= lo < hi <= n_train:
        raise ValueError(f"training timesteps must satisfy 0 <= lo < hi <= {n_train}, got [{lo}, {hi})")
    t = torch.randint(lo, hi, (b,), generator=generator, device=gdev).to(x0.device)
    noise = noise_like(x0, generator, noise_offset)
    origin = x0
    if start is not None and start_prob > 0:
        if start.shape != x0.shape:
            raise ValueError(f"start {tuple(start.shape)} does not match x0 {tuple(x0.shape)}")
        use = rand((b,), generator, x0.device) < start_prob
        use = use.view(-1, *([1] * (x0.dim() - 1)))
        origin = torch.where(use, start, x0)
        if start_noise != 1.0:
            noise = torch.where(use, start_noise * noise, noise)
    xt = noise_scheduler.add_noise(origin, noise, t)
    pred = model_fn(xt, t)
    kind = noise_scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": x0}.get(kind)
    if target is None and kind == "v_prediction":
        target = noise_scheduler.get_velocity(x0, noise, t)
    if target is None:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    if x0_loss is not None and kind != "sample":
        raise ValueError(f"an x0 loss term needs prediction_type 'sample', not {kind!r}")
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    if weight is not None:
        err = err * weight
        loss = err.sum() / (weight.expand_as(err).sum().clamp(min=1))
    else:
        loss = err.mean()
    return loss if x0_loss is None else loss + x0_loss(pred.float(), x0.float())


def drop_masks(names: Sequence[str], probs: dict, batch: int, generator, device) -> dict[str, torch.Tensor]:
    """Per-sample condition drops. ``probs[name]`` is each condition's marginal drop rate; ``probs['joint']``
    the rate at which all of them drop together (the unconditional input classifier-free guidance needs;
    with independent drops it would be seen only p^n of the time). Events are disjoint slices of one uniform."""
    joint = float(probs.get("joint", 0.0))
    u = rand((batch,), generator, device)
    masks, lo = {}, joint
    for n in names:
        p = float(probs.get(n, 0.0))
        if p < joint:
            raise ValueError(f"drop rate of {n} ({p}) is below the joint drop rate ({joint})")
        alone = p - joint
        masks[n] = (u < joint) | ((u >= lo) & (u < lo + alone))
        lo += alone
    if lo > 1.0 + 1e-9:
        raise ValueError(f"condition drop rates add up to more than 1 ({lo})")
    return masks


def apply_drop(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The null condition is zeros, at training and at sampling alike."""
    return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x)


def cfg_double(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """[unconditional | conditional] halves: the first half is nulled (zeros) as training dropped it."""
    return [torch.cat([torch.zeros_like(t), t]) for t in tensors]


def cfg_combine(pred: torch.Tensor, scale: float) -> torch.Tensor:
    uncond, cond = pred.chunk(2)
    return uncond + scale * (cond - uncond)


def denoise(model_fn, sampler, shape, generator, device, steps: int, guidance: float,
            dtype=torch.float32, init: torch.Tensor | None = None, strength: float = 1.0,
            init_noise: float = 1.0, latents: torch.Tensor | None = None,
            step_end: Callable | None = None) -> torch.Tensor:
    """The explicit sampling loop: ``model_fn(x, t, do_cfg)`` returns the prediction for x (doubled inside
    when guidance is on); ``sampler``: a diffusers scheduler object. With ``init`` and ``strength`` < 1 it starts, as
    diffusers' img2img pipelines do, from ``init`` noised to the level of the schedule's last
    ``round(steps * strength)`` steps and runs only those: the sample keeps the layout of ``init`` and is
    refined rather than drawn anew.

    ``init_noise`` scales the noise of that start: 1 draws x_t from q(x_t | init) as img2img does; 0 starts
    from its mean sqrt(alpha_bar_t) * init, so the sample is a deterministic function of ``init``. With no
    drawn noise the denoiser has no random texture to turn into detail, which is what a refiner that must stay
    faithful to its input wants (see README, stage 3).

    ``latents``: the starting noise (``shape``) instead of drawing it from ``generator``. ``step_end(i, t, x)``
    runs after every step and returns the x to go on with (diffusers' ``callback_on_step_end``)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if not 0.0 <= init_noise <= 1.0:
        raise ValueError(f"init_noise must be in [0, 1], got {init_noise}")
    if init_noise != 1.0 and strength >= 1.0:
        raise ValueError("init_noise below 1 needs strength < 1 (a start from an init image)")
    if strength < 1.0 and init is None:
        raise ValueError("strength < 1 needs an init image to start from")
    sampler.set_timesteps(steps, device=device)
    if latents is None:
        noise = randn(shape, generator, device, dtype)
    elif tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have the shape {tuple(shape)}, got {tuple(latents.shape)}")
    else:
        noise = latents.to(device, dtype)
    timesteps = sampler.timesteps
    if strength < 1.0:
        keep = max(1, min(steps, round(steps * strength)))
        begin = (steps - keep) * sampler.order
        timesteps = timesteps[begin:]
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(begin)
        x = sampler.add_noise(init.to(device, dtype), noise * init_noise, timesteps[:1].repeat(shape[0]))
    else:
        x = noise * sampler.init_noise_sigma
    do_cfg = guidance is not None and guidance != 1.0
    # A stochastic sampler swapped in by the caller (DDPM, Euler ancestral) draws its step noise from the
    # generator, as diffusers' pipelines pass it.
    extra = {"generator": generator} if "generator" in inspect.signature(sampler.step).parameters else {}
    for i, t in enumerate(timesteps):
        xin = sampler.scale_model_input(x, t)
        if do_cfg:
            pred = cfg_combine(model_fn(torch.cat([xin, xin]), t, True), guidance)
        else:
            pred = model_fn(xin, t, False)
        x = sampler.step(pred, t, x, **extra).prev_sample
        if step_end is not None:
            x = step_end(i, t, x)
    return x
