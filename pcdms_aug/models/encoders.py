"""Frozen parts: the global image encoder (CLIP), the local one (DINOv2) and the image codec (VAE or pixels).

Each is either loaded from a LOCAL folder (paper scale; never downloaded) or built with random weights from an
inline config and a fixed seed (tiny scale, and paper-scale architecture tests), so every stage that builds
"the same" tiny encoder gets the same weights.

A component's ``pretrained`` is a folder, or ``weights.<name>``: the folder the stage config's ``weights``
section gives that name (``weights.sd21_base``, ``weights.dinov2``, ``weights.clip_vit_h``), so a user sets
each folder once for all stages. ``random_weights: true`` in the stage config ignores every ``pretrained``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pcdms_aug.utils.errors import DataError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Where each kind of weights comes from (said in the error when a folder is missing).
SOURCES = {
    "clip": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (transformers format: config.json + model.safetensors)",
    "dino": "facebook/dinov2-giant",
    "vae": "stabilityai/stable-diffusion-2-1-base (the whole repository; its vae/ folder is used)",
    "unet": "stabilityai/stable-diffusion-2-1-base (the whole repository; its unet/ folder is used)",
    "prior": "kandinsky-community/kandinsky-2-2-prior (the whole repository; its prior/ folder is used)",
}
HOW = ("download it once by hand on a machine with network access (e.g. `huggingface-cli download {repo} "
       "--local-dir FOLDER`) and point the config at FOLDER; nothing is downloaded at run time")


def pretrained_folder(part, stage, kind: str) -> Path | None:
    """The local folder a component loads from, or None when it is built with random weights. ``part``: the
    component's section of the typed stage config ``stage`` (:mod:`pcdms_aug.config.schema`)."""
    if stage.random_weights:
        return None
    value = part.pretrained
    if not value:
        return None
    value = str(value)
    how = HOW.format(repo=SOURCES[kind].split(" ")[0])
    if value.startswith("weights."):
        key = value[len("weights."):]
        folder = getattr(stage.weights, key, None)
        if not folder:
            raise DataError(f"{value} is not set: the {kind} weights ({SOURCES[kind]}) must be a local folder; "
                            f"{how}; then set {value}=FOLDER (or random_weights=true for an untrained "
                            "architecture test)")
        value = str(folder)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"{kind} weights folder not found ({SOURCES[kind]}); {how}", path)
    return path


def _check_files(path: Path, what: str, kind: str) -> None:
    if not (path / "config.json").is_file():
        raise DataError(f"{what}: no config.json in this folder; expected {SOURCES[kind]}", path)


class _Preprocess(nn.Module):
    def __init__(self, size, mean, std):
        super().__init__()
        self.size = tuple(size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the encoder's size and normalisation."""
        x = (images.float() + 1) / 2
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False).clamp(0, 1)
        return (x - self.mean.float()) / self.std.float()


def _seeded(seed, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def _vision_model(cfg, stage, kind: str, what: str, model_class, config_class):
    """A transformers vision model read from its local folder, or built from ``cfg.config`` under ``cfg.seed``."""
    path = pretrained_folder(cfg, stage, kind)
    if path is not None:
        _check_files(path, what, kind)
        return model_class.from_pretrained(path, local_files_only=True)
    return _seeded(cfg.seed, lambda: model_class(config_class(**cfg.config)))


class GlobalEncoder(nn.Module):
    """CLIP vision tower with projection: one embedding per image (``image_embeds``)."""

    def __init__(self, cfg, stage):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.model = _vision_model(cfg, stage, "clip", "CLIP image encoder", CLIPVisionModelWithProjection,
                                   CLIPVisionConfig)
        size = cfg.image_size or [self.model.config.image_size] * 2
        self.pre = _Preprocess(size, CLIP_MEAN, CLIP_STD)
        self.dim = self.model.config.projection_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.pre(images).to(self.model.dtype)).image_embeds


class LocalEncoder(nn.Module):
    """DINOv2: all tokens (CLS + patches) of the last layer. ``normalize``: imagenet (DINOv2's own) or clip (the
    official PCDMs fed DINOv2 through CLIPImageProcessor; imported checkpoints set it)."""

    def __init__(self, cfg, stage):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        self.model = _vision_model(cfg, stage, "dino", "DINOv2 encoder", Dinov2Model, Dinov2Config)
        size = cfg.image_size or [self.model.config.image_size] * 2
        stats = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalize == "imagenet" else (CLIP_MEAN, CLIP_STD)
        self.pre = _Preprocess(size, *stats)
        self.dim = self.model.config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.pre(images).to(self.model.dtype)).last_hidden_state


class Codec(nn.Module):
    """Images [-1, 1] <-> the space the UNets denoise: SD's VAE latents (f=8, scaled), 2x2 pixel blocks as
    channels (``space_to_depth``), or the pixels themselves."""

    def __init__(self, cfg, stage):
        super().__init__()
        self.kind = cfg.type
        if self.kind == "pixel":
            self.vae, self.channels, self.factor, self.scaling = None, 3, 1, 1.0
        elif self.kind == "space_to_depth":
            # Lossless and free: f x f pixel blocks become channels, so a UNet works at 1/f the resolution
            # without a VAE to train (tiny scale's stand-in for SD's f=8 latents).
            f = cfg.factor
            self.vae, self.channels, self.factor, self.scaling = None, 3 * f * f, f, 1.0
        elif self.kind == "vae":
            from diffusers import AutoencoderKL

            path = pretrained_folder(cfg, stage, "vae")
            if path is not None:
                sub = "vae" if (path / "vae").is_dir() else None
                _check_files(path / sub if sub else path, "VAE", "vae")
                self.vae = AutoencoderKL.from_pretrained(path, subfolder=sub, local_files_only=True)
            else:
                self.vae = _seeded(cfg.seed, lambda: AutoencoderKL(**cfg.config))
            self.channels = self.vae.config.latent_channels
            self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.scaling = float(self.vae.config.scaling_factor if cfg.scaling_factor is None else cfg.scaling_factor)

    def encode_dist(self, images: torch.Tensor) -> torch.Tensor:
        """What encoding keeps of images: a VAE's latent distribution (its mean and log-variance concatenated
        on the channels, unscaled: diffusers' ``DiagonalGaussianDistribution.parameters``), or the other codecs'
        exact encoding. :meth:`latent` makes the UNets' latents of it (a feature cache stores this)."""
        if self.kind == "space_to_depth":
            return F.pixel_unshuffle(images, self.factor)
        if self.vae is None:
            return images
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.parameters

    def latent(self, dist: torch.Tensor) -> torch.Tensor:
        """The latents of :meth:`encode_dist`'s output: the distribution's mean (its mode: the latent of an
        image is then a function of the image), scaled."""
        if self.vae is None:
            return dist
        return dist.chunk(2, dim=1)[0] * self.scaling

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.latent(self.encode_dist(images))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.kind == "space_to_depth":
            return F.pixel_shuffle(latents, self.factor).clamp(-1, 1)
        if self.vae is None:
            return latents.clamp(-1, 1)
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample.clamp(-1, 1)


FROZEN_KINDS = {"clip": GlobalEncoder, "dino": LocalEncoder, "codec": Codec}


def frozen_key(name: str, cfg, stage) -> str:
    """Two stages whose frozen component has the same key hold the very same weights, so a pipeline keeps one
    copy: ``<name>|folder|<path>`` (read from a local folder) or ``<name>|random|<config>`` (inline config and
    seed; shared only after checking the weights, see ``Stage.from_pretrained``)."""
    kind = "vae" if name == "codec" else name
    folder = None if name == "codec" and cfg.type != "vae" else pretrained_folder(cfg, stage, kind)
    fields = dataclasses.asdict(cfg)
    if folder is not None:
        rest = {k: v for k, v in fields.items() if k not in ("pretrained", "config", "seed")}
        return f"{name}|folder|{folder.resolve()}|" + json.dumps(rest, sort_keys=True, default=str)
    return f"{name}|random|" + json.dumps(fields, sort_keys=True, default=str)


def is_folder_key(key: str) -> bool:
    return key.split("|", 2)[1] == "folder"


def build_frozen(name: str, cfg, stage, cache: dict | None = None) -> nn.Module:
    """A frozen component (``cfg``: its section of the typed stage config ``stage``), taken from ``cache`` when
    an equal one was built already."""
    key = frozen_key(name, cfg, stage) if cache is not None else None
    if key is not None and key in cache:
        return cache[key]
    module = FROZEN_KINDS[name](cfg, stage).requires_grad_(False).eval()
    if key is not None:
        cache[key] = module
    return module
