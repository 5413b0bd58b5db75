"""What keeps the accelerator busy in a training step, decided once here: gradient checkpointing only where the
batch needs it, the frozen networks off the device when a feature cache replaces them, channels-last
convolutions, an optional ``torch.compile`` of the denoiser, fused AdamW. docs/gpu.md measures each."""
from __future__ import annotations

import torch


def on_device(stage, cfg, rt, log):
    """``stage`` (built on the CPU) on ``rt.device`` as run config ``cfg`` says; returns it and the names of
    the frozen components left on the CPU (``train.feature_cache``: the step reads their outputs)."""
    tc = cfg.train
    if stage.config.gradient_checkpointing == "auto":
        from pcdms_aug.training.memory import auto_checkpointing

        auto_checkpointing(stage, cfg.stage, cfg.model, tc.batch_size, rt, bool(tc.feature_cache), log)
    aside = stage.set_frozen_aside() if tc.feature_cache else []
    stage = stage.to(rt.device)
    if rt.device.startswith("cuda") and tc.channels_last:
        # cuDNN's convolutions run NHWC natively (tensor cores); NCHW costs a transpose per convolution
        stage.to(memory_format=torch.channels_last)
    if tc.compile:
        for name, module in stage.components().items():
            if name in ("unet", "prior"):  # in place: parameter names (checkpoints, EMA) stay as they are
                module.compile()
    return stage, aside


def adamw(params, tc, device: str) -> torch.optim.AdamW:
    """AdamW of ``train.*``; fused on CUDA (one kernel for every parameter's update, not several per tensor)."""
    return torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay,
                             fused=True if device.startswith("cuda") else None)
