"""What every stage is made of: named components, trainable parameters, a loss, a sampler, save and load.

Saved format (one folder per stage, diffusers-style): ``config.json`` (the stage's resolved config) and one
``<component>.safetensors`` per component. Frozen components loaded from a local pretrained folder are not
copied (they are read from that folder again); randomly initialised ones are saved like the rest.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

FROZEN = ("clip", "dino", "codec")


class Stage(nn.Module):
    name = ""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.image_size = tuple(cfg.get("image_size", (128, 64)))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: dict, seed: int = 0) -> "Stage":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stage = cls(cfg)
        for name in FROZEN:
            part = getattr(stage, name, None)
            if part is not None:
                part.requires_grad_(False).eval()
        return stage

    def components(self) -> dict[str, nn.Module]:
        return dict(self.named_children())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, m in self.components().items() if n not in FROZEN for p in m.parameters()]

    def train(self, mode: bool = True):
        super().train(mode)
        for name in FROZEN:  # frozen encoders stay in eval mode (no dropout) while the rest trains
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def resize(self, images: torch.Tensor, size=None, mode="bicubic") -> torch.Tensor:
        size = tuple(size or self.image_size)
        if tuple(images.shape[-2:]) == size:
            return images
        if mode == "area":
            return F.interpolate(images, size=size, mode="area")
        return F.interpolate(images, size=size, mode=mode, align_corners=False).clamp(-1, 1)

    # ---------------------------------------------------------------- save / load
    def _saved_components(self) -> dict[str, nn.Module]:
        out = {}
        for name, module in self.components().items():
            if name in FROZEN and (self.cfg.get(name) or {}).get("pretrained"):
                continue
            out[name] = module
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_model

        directory = Path(directory)
        tmp = directory.parent / f".{directory.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps({"stage": self.name, **self.cfg}, indent=2, default=list))
        for name, module in self._saved_components().items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Stage":
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        directory = Path(directory)
        cfg_file = directory / "config.json"
        if not cfg_file.is_file():
            raise DataError(f"no {cls.name or 'stage'} weights here (config.json missing)", directory)
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"corrupt config.json: {e}", cfg_file) from None
        name = cfg.pop("stage", cls.name)
        if cls.name and name != cls.name:
            raise DataError(f"this folder holds stage {name!r}, not {cls.name!r}", directory)
        stage = cls.from_config(cfg, seed=0)
        for comp, module in stage._saved_components().items():
            f = directory / f"{comp}.safetensors"
            if not f.is_file():
                raise DataError(f"weights of component {comp!r} missing", f)
            try:
                missing, unexpected = load_model(module, str(f), strict=False)
            except (SafetensorError, OSError, RuntimeError) as e:
                raise DataError(f"cannot load weights of component {comp!r}: {e}", f) from None
            if missing or unexpected:
                raise DataError(f"weights do not match the config: missing {sorted(missing)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]}", f)
        return stage.eval()

    # ---------------------------------------------------------------- the stage's own parts
    def training_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def preview(self, batch: dict, num_inference_steps: int = 20, generator=None) -> list[dict]:
        """Rows of labelled images (uint8 HxWx3) for the training grid."""
        return []


def to_uint8(images: torch.Tensor) -> list:
    """[-1, 1] (B, 3, H, W) -> list of uint8 (H, W, 3) arrays."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a.permute(1, 2, 0).cpu().numpy() for a in x]
