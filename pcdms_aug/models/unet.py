"""The stages' UNets: diffusers ``UNet2DConditionModel``, built from an inline config (tiny) or initialised from
SD-2.1-base's UNet (paper), with the extra input channels zero-initialised as SD's own inpainting model does."""
from __future__ import annotations

import torch

from pcdms_aug.utils.errors import DataError
from pcdms_aug.models.encoders import SOURCES


def build_unet(cfg, stage, in_channels: int, out_channels: int, class_embed_dim: int | None = None,
               load_weights: bool = True):
    """The architecture is SD's own ``unet/config.json`` when ``pretrained`` names an SD-2.1-base folder, else
    ``cfg.config`` (``cfg``: the ``unet`` section of the typed stage config ``stage``); input/output channels and the class embedding are the stage's. ``load_weights=False``
    builds the architecture only (the weights then come from a saved stage)."""
    from diffusers import UNet2DConditionModel

    from pcdms_aug.models.encoders import pretrained_folder

    arch = dict(cfg.config)
    path = pretrained_folder(cfg, stage, "unet")
    base_sd = None
    if path is not None:
        if not (path / "unet" / "config.json").is_file():
            raise DataError("no unet/config.json in this folder; expected " + SOURCES["unet"], path)
        # The folder's own config is the architecture; the inline one only describes it for random init.
        arch = dict(UNet2DConditionModel.load_config(path, subfolder="unet", local_files_only=True))
        if load_weights:
            base = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
            base_sd = base.state_dict()
            del base
    arch = {k: v for k, v in arch.items() if not k.startswith("_")}
    arch.update(in_channels=in_channels, out_channels=out_channels)
    if class_embed_dim is not None:
        arch.update(class_embed_type="projection", projection_class_embeddings_input_dim=class_embed_dim)
    unet = UNet2DConditionModel(**arch)
    if base_sd is not None:
        # SD's first 4 input channels keep their weights; the extra ones (mask, known latents, coarse image)
        # start at zero, as SD's own inpainting model did, so step 0 behaves like SD. (Upstream PCDMs
        # re-initialised the whole conv_in at random through ignore_mismatched_sizes.)
        own = unet.state_dict()
        w = base_sd["conv_in.weight"]
        new = torch.zeros_like(own["conv_in.weight"])
        n = min(w.shape[1], new.shape[1])
        new[:, :n] = w[:, :n]
        base_sd["conv_in.weight"] = new
        missing, unexpected = unet.load_state_dict(base_sd, strict=False)
        # Only the class embedding is new on top of SD's UNet; anything else missing is a config mismatch.
        if [k for k in missing if not k.startswith("class_embedding.")] or unexpected:
            raise DataError(f"SD UNet does not fit the stage: missing {missing[:3]}, unexpected {unexpected[:3]}",
                            path)
    return unet


class pose_residual:
    """Adds the pose features to ``conv_in``'s output for one call (a forward hook, so the UNet's own keys
    and code stay those of diffusers)."""

    def __init__(self, unet, features: torch.Tensor | None):
        self.unet, self.features, self.handle = unet, features, None

    def __enter__(self):
        if self.features is not None:
            feats = self.features
            self.handle = self.unet.conv_in.register_forward_hook(lambda m, i, o: o + feats.to(o.dtype))
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
        return False
