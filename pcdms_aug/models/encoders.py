"""Frozen parts: the global image encoder (CLIP), the local one (DINOv2) and the image codec (VAE or pixels).

Each is either loaded from a LOCAL folder named in the config (paper scale; never downloaded) or built with
random weights from an inline config and a fixed seed (tiny scale), so every stage that builds "the same" tiny
encoder gets the same weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _local_folder(path: str, what: str, hint: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{what} weights folder not found; download it once by hand ({hint}) and point the "
                        "config at it; nothing is downloaded at run time", p)
    return p


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
        return (x - self.mean) / self.std


class GlobalEncoder(nn.Module):
    """CLIP vision tower with projection: one embedding per image (``image_embeds``)."""

    def __init__(self, cfg: dict):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        if cfg.get("pretrained"):
            path = _local_folder(cfg["pretrained"], "CLIP image encoder", "OpenCLIP ViT-H/14 in transformers "
                                 "format, e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
            self.model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(cfg.get("seed", 0)))
                self.model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["config"]))
        size = cfg.get("image_size") or [self.model.config.image_size] * 2
        self.pre = _Preprocess(size, CLIP_MEAN, CLIP_STD)
        self.dim = self.model.config.projection_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.pre(images).to(self.model.dtype)).image_embeds


class LocalEncoder(nn.Module):
    """DINOv2: all tokens (CLS + patches) of the last layer."""

    def __init__(self, cfg: dict):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        if cfg.get("pretrained"):
            path = _local_folder(cfg["pretrained"], "DINOv2 encoder", "facebook/dinov2-giant")
            self.model = Dinov2Model.from_pretrained(path, local_files_only=True)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(cfg.get("seed", 0)))
                self.model = Dinov2Model(Dinov2Config(**cfg["config"]))
        size = cfg.get("image_size") or [self.model.config.image_size] * 2
        self.pre = _Preprocess(size, IMAGENET_MEAN, IMAGENET_STD)
        self.dim = self.model.config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.pre(images).to(self.model.dtype)).last_hidden_state


class Codec(nn.Module):
    """Images [-1, 1] <-> the space the UNets denoise: SD's VAE latents (f=8, scaled) or the pixels
    themselves (tiny scale: no VAE to train, and a CPU handles 128x64 pixels well)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.kind = cfg.get("type", "pixel")
        if self.kind == "pixel":
            self.vae, self.channels, self.factor, self.scaling = None, 3, 1, 1.0
        elif self.kind == "space_to_depth":
            # Lossless and free: f x f pixel blocks become channels, so a UNet works at 1/f the resolution
            # without a VAE to train (tiny scale's stand-in for SD's f=8 latents).
            f = int(cfg.get("factor", 2))
            self.vae, self.channels, self.factor, self.scaling = None, 3 * f * f, f, 1.0
        elif self.kind == "vae":
            from diffusers import AutoencoderKL
            if cfg.get("pretrained"):
                path = _local_folder(cfg["pretrained"], "VAE", "stable-diffusion-2-1-base, folder 'vae'")
                self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(cfg.get("seed", 0)))
                    self.vae = AutoencoderKL(**cfg["config"])
            self.channels = self.vae.config.latent_channels
            self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.scaling = float(cfg.get("scaling_factor", self.vae.config.scaling_factor))
        else:
            raise DataError(f"codec.type must be pixel, space_to_depth or vae, got {self.kind!r}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "space_to_depth":
            return F.pixel_unshuffle(images, self.factor)
        if self.vae is None:
            return images
        # The distribution's mean, not a sample: the latent of an image is then a function of the image.
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode() * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.kind == "space_to_depth":
            return F.pixel_shuffle(latents, self.factor).clamp(-1, 1)
        if self.vae is None:
            return latents.clamp(-1, 1)
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample.clamp(-1, 1)
