"""Stage 1, the prior: predicts the target image's global (CLIP) embedding from the source's and both poses."""
from __future__ import annotations

import torch

from ..diffusion import apply_drop, cfg_double, denoise, diffusion_loss, drop_masks, sampling_scheduler, \
    training_scheduler
from ..models.blocks import PriorTransformer
from ..models.encoders import GlobalEncoder
from ..pose import VECTOR_DIM
from .base import Stage

CONDITIONS = ("source_image", "source_pose", "target_pose")


class PriorStage(Stage):
    name = "prior"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.clip = GlobalEncoder(cfg["clip"])
        self.prior = PriorTransformer(embed_dim=self.clip.dim, pose_dim=VECTOR_DIM, **cfg["prior"])
        self.scheduler = training_scheduler(cfg["scheduler"])
        # The target is standardised with global scalars (upstream: mean -0.016, std 0.415 for ViT-H/14).
        self.embed_mean, self.embed_std = float(cfg["embed_mean"]), float(cfg["embed_std"])

    def encode_source(self, images: torch.Tensor) -> dict:
        return {"clip": self.clip(images)}

    def _model(self, x, t, src, sp, tp):
        return self.prior(x, t.expand(x.shape[0]).to(x.device), src, sp, tp)

    def training_loss(self, batch, generator=None):
        with torch.no_grad():
            src = self.clip(batch["source_image"])
            x0 = (self.clip(batch["target_image"]) - self.embed_mean) / self.embed_std
        masks = drop_masks(CONDITIONS, self.cfg["drop"], x0.shape[0], generator, x0.device)
        src = apply_drop(src, masks["source_image"])
        sp = apply_drop(batch["source_pose"].to(x0.dtype), masks["source_pose"])
        tp = apply_drop(batch["target_pose"].to(x0.dtype), masks["target_pose"])
        return diffusion_loss(lambda xt, t: self._model(xt, t, src, sp, tp), self.scheduler, x0, generator,
                              float(self.cfg.get("noise_offset", 0.0)))

    @torch.no_grad()
    def sample(self, source: dict, source_pose: torch.Tensor, target_pose: torch.Tensor, generator=None,
               num_inference_steps: int = 20, guidance_scale: float = 1.0, scheduler: str = "unipc") -> torch.Tensor:
        """Target embeddings (B, D), un-standardised. ``source`` is :meth:`encode_source`'s output."""
        src = source["clip"]
        sp, tp = source_pose.to(src.dtype), target_pose.to(src.dtype)

        def fn(x, t, doubled):
            if doubled:
                s2, sp2, tp2 = cfg_double(src, sp, tp)
                return self._model(x, t, s2, sp2, tp2)
            return self._model(x, t, src, sp, tp)

        sched = sampling_scheduler(scheduler, self.scheduler)
        x = denoise(fn, sched, (src.shape[0], self.clip.dim), generator, src.device, num_inference_steps,
                    guidance_scale, src.dtype)
        return x * self.embed_std + self.embed_mean
