"""Random-weight folders in the exact layouts the paper configs read, so the paper path runs without downloads.

    root/sd21/unet/{config.json,diffusion_pytorch_model.safetensors}   stable-diffusion-2-1-base
    root/sd21/vae/{config.json,diffusion_pytorch_model.safetensors}
    root/clip/{config.json,model.safetensors}                          CLIP-ViT-H-14 (CLIPVisionModelWithProjection)
    root/dinov2/{config.json,model.safetensors}                        facebook/dinov2-giant
    root/kandinsky/prior/{config.json,diffusion_pytorch_model.safetensors}  kandinsky-2-2-prior

Each is written with ``save_pretrained`` of the class the loaders read it with, so the loaders take these
folders exactly as downloaded ones. ``scale="paper"`` writes the published architectures (the paper configs'
inline copies: 3.74 billion parameters, 15 GB); ``scale="reduced"`` the same classes and layouts at a depth
and width that run on a CPU in seconds. ``overrides`` changes any entry (``{"unet": {"layers_per_block": 2}}``).

    python -m pcdms_aug.testing.paper_fixture OUT [--scale reduced|paper]   # prints each stage's overrides
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from pcdms_aug.config.loading import load_config
from pcdms_aug.utils.io import atomic_dir

# Kandinsky-2.2 prior (kandinsky-2-2-prior/prior/config.json): 32 heads x 64, 20 layers, 1280-d, 77 tokens.
KANDINSKY = {"num_attention_heads": 32, "attention_head_dim": 64, "num_layers": 20, "embedding_dim": 1280,
             "num_embeddings": 77, "additional_embeddings": 4}

REDUCED = {
    "clip": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "projection_dim": 32},
    "dino": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    "unet": {"block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": [2, 4],
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32,
             "norm_num_groups": 8, "sample_size": 8},
    # f = 8 as SD's VAE (four blocks), at 8-16 channels
    "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64},
    "kandinsky": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "embedding_dim": 48,
                  "num_embeddings": 7},
}
# What the paper stage configs need beside the folders at reduced scale: the prior transformer's width must
# be the Kandinsky prior's (heads x head dim) for its blocks to initialise from it; small images and DINOv2
# input keep a CPU step short. The UNet architecture comes from the folder, as with the real weights.
REDUCED_STAGE = ["image_size=[64,32]", "dino.image_size=[56,56]"]
REDUCED_PRIOR = ["prior.width=32", "prior.layers=2", "prior.heads=2", "prior.pose_hidden=16"]  # stage 1 only


def _merge(base: dict, extra: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def architectures(scale: str = "reduced", overrides: dict | None = None) -> dict:
    """The config of each folder's model: the paper configs' inline architectures, reduced on request."""
    if scale not in ("paper", "reduced"):
        raise ValueError(f"scale must be paper or reduced, got {scale!r}")
    enc = load_config("paper/encoders.yaml")
    arch = {"clip": dict(enc["clip"]["config"]), "dino": dict(enc["dino"]["config"]),
            "unet": dict(load_config("paper/sd21_unet.yaml")["unet"]["config"]),
            "vae": dict(enc["codec"]["config"]), "kandinsky": dict(KANDINSKY)}
    return _merge(_merge(arch, REDUCED if scale == "reduced" else None), overrides)


def write_folders(root: str | Path, scale: str = "reduced", overrides: dict | None = None, seed: int = 0,
                  dtype=None) -> dict:
    """Write the five folders under ``root`` (skipped where a config.json is already there); returns the
    ``weights.*`` settings that point the paper configs at them. ``dtype`` (e.g. torch.float16) halves the
    paper-scale files; the loaders cast as the real (fp32/fp16) downloads are cast."""
    import torch
    from diffusers import AutoencoderKL, PriorTransformer, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    root = Path(root)
    arch = architectures(scale, overrides)
    builders = {
        "clip": (root / "clip", lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**arch["clip"]))),
        "dinov2": (root / "dinov2", lambda: Dinov2Model(Dinov2Config(**arch["dino"]))),
        "unet": (root / "sd21" / "unet", lambda: UNet2DConditionModel(**arch["unet"])),
        "vae": (root / "sd21" / "vae", lambda: AutoencoderKL(**arch["vae"])),
        "prior": (root / "kandinsky" / "prior", lambda: PriorTransformer(**arch["kandinsky"])),
    }
    for i, (name, (folder, build)) in enumerate(builders.items()):
        if (folder / "config.json").is_file():
            continue
        torch.manual_seed(seed + i)
        model = build()
        if dtype is not None:
            model = model.to(dtype)
        with atomic_dir(folder) as tmp:  # a killed run leaves no half folder that looks complete
            model.save_pretrained(tmp)
        del model
    return weights_settings(root)


def weights_settings(root: str | Path) -> dict:
    root = Path(root).resolve()
    return {"sd21_base": str(root / "sd21"), "dinov2": str(root / "dinov2"), "clip_vit_h": str(root / "clip"),
            "kandinsky22_prior": str(root / "kandinsky")}


def stage_overrides(root: str | Path, scale: str = "reduced", prefix: str = "", stage: str | None = None) -> list[str]:
    """``key=value`` overrides that point a paper stage config at the folders (``prefix`` ``model.`` for a
    training run config); at reduced scale also the small image sizes and, for ``stage`` prior, the prior's
    (stage configs refuse keys they do not have, so each stage gets its own)."""
    sets = [f"{prefix}weights.{k}={v}" for k, v in weights_settings(root).items()]
    if scale != "reduced":
        return sets
    return sets + [prefix + o for o in REDUCED_STAGE + (REDUCED_PRIOR if stage == "prior" else [])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--scale", default="reduced", choices=["reduced", "paper"])
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16 (paper scale: 7.5 GB)")
    args = p.parse_args(argv)
    import torch

    write_folders(args.out, args.scale, dtype=torch.float16 if args.fp16 else None)
    print(json.dumps({"weights": weights_settings(args.out), "overrides": {n: stage_overrides(args.out, args.scale, stage=n) for n in ("prior", "inpaint", "refine")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
