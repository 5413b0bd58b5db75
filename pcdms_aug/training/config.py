"""The run config of `pcdms-aug train` (YAML with ``_base_`` and ``key=value`` overrides): the stage, its model
config, the data and the training settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pcdms_aug.config.loading import apply_overrides, build, load_config, resolve_config_path, to_dict
from pcdms_aug.config.schema import SCHEMAS
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.runtime import as_dtype

AMP_DTYPES = ("no", "bf16", "fp16")  # train.mixed_precision: autocast dtype on GPU; weights stay fp32
AMP_TORCH = {"no": None, **{n: as_dtype(n) for n in AMP_DTYPES[1:]}}  # names of utils.runtime.DTYPES


@dataclass
class DataConfig:
    root: str = ""
    annotations: str = ""
    image_size: tuple = (128, 64)
    refine_inputs: str | None = None
    max_pairs: int | None = None
    num_workers: int = 0


@dataclass
class TrainConfig:
    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU only; trainable weights stay fp32)
    batch_size: int = 4  # per process and micro-batch
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    lr_schedule: str = "cosine"  # any diffusers.optimization scheduler name
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 200
    sample_steps: int = 20
    # Warm start (step 0 only): a saved stage folder, a saved pipeline folder (its stage of this name) or
    # "tiny". The architecture must match the config; optimizer, schedule and EMA start fresh.
    init_from: str | None = None
    # The frozen networks' outputs read from this folder (pcdms-aug cache-features; what is missing is built
    # on first use): the step then runs no frozen network, and they stay off the device.
    feature_cache: str | None = None
    channels_last: bool = True  # the trainable convolutions in channels-last layout (CUDA only)
    compile: bool = False  # torch.compile the trainable denoiser (the first steps pay for compiling)


@dataclass
class RunConfig:
    stage: str = "inpaint"
    model: dict | str = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_run_config(path, overrides=()) -> RunConfig:
    """``overrides`` may reach into the stage's model config too (``model.noise_offset=0.05``), also where the
    run config names it by path."""
    path = resolve_config_path(path)
    model_over = [o for o in overrides if o.strip().startswith("model.")]
    raw = load_config(path, [o for o in overrides if o not in model_over])
    if (raw.get("train") or {}).get("mixed_precision") is False:  # YAML reads a bare `no` as false
        raw["train"]["mixed_precision"] = "no"
    cfg = build(RunConfig, raw, where=str(path))
    if isinstance(cfg.model, str):
        cfg.model = load_config(cfg.model if Path(cfg.model).is_file() else path.parent / cfg.model)
    cfg.model = apply_overrides(cfg.model, [o.strip()[len("model."):] for o in model_over])
    if cfg.stage not in SCHEMAS:
        raise DataError(f"stage must be {', '.join(SCHEMAS)}, got {cfg.stage!r}", path)
    if cfg.train.mixed_precision not in AMP_DTYPES:
        raise DataError(f"train.mixed_precision must be one of {', '.join(AMP_DTYPES)}, "
                        f"got {cfg.train.mixed_precision!r}", path)
    return cfg


def as_yaml(cfg: RunConfig) -> str:
    import yaml
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
