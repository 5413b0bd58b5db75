"""The typed structure of a stage config (YAML, ``config.json`` of a saved stage, ``model.*`` overrides), and
the one place of its defaults.

A stage saves its config as the plain data it was given (a key left out stays left out, so its default can
be read here) and reads the typed object :func:`stage_config` builds from it. A typo (``sheduler:``) or a
wrong value is refused at load, with its path and the nearest valid key. The architecture blocks
(``unet.config``, ``clip.config``, ``scheduler``, ...) are checked against the signature of the library class
they are passed to.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from pcdms_aug.config.loading import build, unknown_key_error


@dataclass
class Encoder:  # clip / dino: a transformers vision model, frozen
    pretrained: Optional[str] = None
    seed: int = 0
    image_size: Optional[tuple[int, int]] = None  # None: the model's own
    config: dict = field(default_factory=dict)
    # imagenet: DINOv2's own statistics; clip: the official PCDMs fed DINOv2 through CLIPImageProcessor
    normalize: Literal["imagenet", "clip"] = "imagenet"


@dataclass
class Codec:
    type: Literal["pixel", "space_to_depth", "vae"] = "pixel"
    factor: int = 2
    pretrained: Optional[str] = None
    seed: int = 0
    scaling_factor: Optional[float] = None  # None: the VAE's own
    config: dict = field(default_factory=dict)


@dataclass
class Weights:
    sd21_base: Optional[str] = None
    dinov2: Optional[str] = None
    clip_vit_h: Optional[str] = None
    kandinsky22_prior: Optional[str] = None


@dataclass
class Prior:
    width: int = 2048
    layers: int = 20
    heads: int = 32
    pose_hidden: int = 512
    dropout: float = 0.0
    pose_dim: int = 54  # data.pose.VECTOR_DIM; the official checkpoint's is 36 (import-official)
    pose_missing: float = -1.0
    pretrained: Optional[str] = None


@dataclass
class UNet:
    pretrained: Optional[str] = None
    config: dict = field(default_factory=dict)


@dataclass
class Projection:
    hidden: int = 768


@dataclass
class PoseEncoder:
    channels: tuple[int, ...] = (16, 32, 96, 256)
    downsample: Optional[int] = None  # stride-2 steps; None: to the codec's factor (log2 f; SD's f=8: 3)
    out_kernel: int = 1
    signed_input: bool = False


@dataclass
class Adversarial:
    weight: float = 0.1
    channels: tuple[int, ...] = (32, 64, 128)


@dataclass
class Common:
    stage: Optional[str] = None
    image_size: tuple[int, int] = (128, 64)
    clip: Optional[Encoder] = None
    dino: Optional[Encoder] = None
    codec: Codec = field(default_factory=Codec)
    scheduler: dict = field(default_factory=dict)  # the training noise schedule: DDPMScheduler's arguments
    noise_offset: float = 0.0
    drop: dict[str, float] = field(default_factory=dict)
    weights: Weights = field(default_factory=Weights)
    random_weights: bool = False
    # auto: the training loop's memory estimate decides for the run's batch and device (training/memory.py)
    gradient_checkpointing: Union[bool, Literal["auto"]] = False
    origin: Optional[dict] = None  # provenance of an imported checkpoint (import-official)


@dataclass
class PriorStage(Common):
    prior: Prior = field(default_factory=Prior)
    # The target embedding is standardised with global scalars (upstream: mean -0.016, std 0.415 for ViT-H/14).
    embed_mean: float = 0.0
    embed_std: float = 1.0


@dataclass
class InpaintStage(Common):
    unet: UNet = field(default_factory=UNet)
    projection: Projection = field(default_factory=Projection)
    pose_encoder: PoseEncoder = field(default_factory=PoseEncoder)
    loss_region: Literal["canvas", "target"] = "canvas"
    target_embed: bool = True


@dataclass
class RefineStage(Common):
    unet: UNet = field(default_factory=UNet)
    projection: Projection = field(default_factory=Projection)
    source_image_input: bool = False
    adversarial: Optional[Adversarial] = None  # None: no discriminator
    ssim_loss: float = 0.0
    train_timesteps: Optional[tuple[int, int]] = None
    train_coarse_start: float = 0.0
    train_coarse_noise: float = 1.0


# The sampler shorthands (``sampling.scheduler`` of a pipeline config, ``--scheduler`` of the commands, the
# ``scheduler=`` argument of a pipeline call): the diffusers class and its settings. Deterministic samplers only:
# a sample then depends on its own initial noise alone.
SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
}
DEFAULT_SAMPLER = "unipc"  # upstream's, where neither a call nor a pipeline config names one


SCHEMAS = {"prior": PriorStage, "inpaint": InpaintStage, "refine": RefineStage}


@functools.lru_cache(maxsize=None)
def _parameters(kind: str) -> frozenset:
    """The keyword arguments the library class of an architecture block accepts."""
    if kind == "unet":
        from diffusers import UNet2DConditionModel as cls
    elif kind == "vae":
        from diffusers import AutoencoderKL as cls
    elif kind == "scheduler":
        from diffusers import DDPMScheduler as cls
    elif kind == "clip":
        from transformers import CLIPVisionConfig as cls
    else:
        from transformers import Dinov2Config as cls
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "args"}
    if kind in ("clip", "dino"):
        names |= set(cls().to_dict())  # transformers configs take the common PretrainedConfig keys too
    return frozenset(names)


def _check_block(block: dict, kind: str, where: str) -> None:
    known = _parameters(kind)
    for key in block:
        if not str(key).startswith("_") and key not in known:  # _class_name, _diffusers_version: metadata
            raise unknown_key_error(str(key), known, where)


# Sane maxima of the numbers that size a model, checked before anything is built: the paper's largest are
# 5120 (CLIP ViT-H's MLP), 40 layers (DINOv2-giant) and 512-pixel images; a value far beyond them asks for
# gigabytes, so it is refused by name rather than allocated. Seeds are not sizes.
MAX_SIZE = 8192
MAX_COUNT = 256  # layers, heads, blocks
MAX_IMAGE_SIDE = 2048
MAX_LIST = 64
_COUNT_WORDS = ("layers", "heads", "downsample", "groups")
_IMAGE_WORDS = ("image_size", "sample_size")


def check_sizes(node, where: str) -> None:
    """Every integer of a stage config in 0..its maximum (by key name), every list at most MAX_LIST long."""
    from pcdms_aug.utils.errors import DataError, shown

    def walk(v, key: str, path: str):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, str(k), f"{path}.{k}")
        elif isinstance(v, (list, tuple)):
            if len(v) > MAX_LIST:
                raise DataError(f"{path} has {len(v)} items: at most {MAX_LIST}")
            for i, x in enumerate(v):
                walk(x, key, f"{path}[{i}]")
        elif isinstance(v, int) and not isinstance(v, bool) and not key.endswith("seed"):
            top = MAX_IMAGE_SIDE if key in _IMAGE_WORDS else MAX_COUNT if any(
                w in key for w in _COUNT_WORDS) else MAX_SIZE
            if not 0 <= v <= top:
                raise DataError(f"{path} = {shown(v)} is out of range: a size here is 0..{top}")
    walk(node, "", where)


def check_stage_sizes(cfg: dict, where: str) -> None:
    """The sizes of a stage config only: no library is imported, so a pipeline folder checks every stage's sizes
    this way before any stage is built."""
    check_sizes({k: v for k, v in cfg.items() if k not in ("origin", "weights")}, where)


def stage_config(cfg: dict, name: str, where: str = "stage config") -> Common:
    """Stage ``name``'s config as its typed dataclass; a DataError names the first unknown key, bad value or
    out-of-range size."""
    from pcdms_aug.utils.errors import DataError

    if name not in SCHEMAS:
        raise DataError(f"{where}: unknown stage {name!r}; use {', '.join(SCHEMAS)}")
    check_stage_sizes(cfg, where)
    typed = build(SCHEMAS[name], cfg, where)
    _check_block(typed.scheduler, "scheduler", f"{where}.scheduler")
    for enc in ("clip", "dino"):
        part = getattr(typed, enc)
        if part is not None:
            _check_block(part.config, enc, f"{where}.{enc}.config")
    if typed.codec.type == "vae":
        _check_block(typed.codec.config, "vae", f"{where}.codec.config")
    unet = getattr(typed, "unet", None)
    if unet is not None:
        _check_block(unet.config, "unet", f"{where}.unet.config")
    for key, rate in typed.drop.items():
        if not 0.0 <= rate <= 1.0:
            raise DataError(f"{where}.drop.{key} must be a rate in [0, 1], got {rate}")
    return typed
