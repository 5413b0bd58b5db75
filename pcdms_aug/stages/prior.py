"""Stage 1, the prior: predicts the target image's global (CLIP) embedding from the source's and both poses."""
from __future__ import annotations

import dataclasses

import torch

from pcdms_aug.stages.diffusion import DEFAULT_SAMPLER, apply_drop, cfg_double, denoise, diffusion_loss, drop_masks, \
    make_noise_scheduler, make_sampler
from pcdms_aug.utils.errors import DataError
from pcdms_aug.models.blocks import PriorTransformer
from pcdms_aug.stages.base import Stage

CONDITIONS = ("source_image", "source_pose", "target_pose")


def init_from_kandinsky(prior: PriorTransformer, part, stage) -> int:
    """Copy the Kandinsky-2.2 prior's tensors whose names and shapes agree (its transformer blocks, time
    embedding, ``prd`` token, norm); the rest keeps its random init. Returns how many tensors were copied."""
    from pcdms_aug.models.encoders import pretrained_folder

    path = pretrained_folder(part, stage, "prior")
    if path is None:
        return 0
    from diffusers import PriorTransformer as KandinskyPrior

    if not (path / "prior" / "config.json").is_file():
        raise DataError("no prior/config.json in this folder; expected kandinsky-community/kandinsky-2-2-prior",
                        path)
    theirs = KandinskyPrior.from_pretrained(path, subfolder="prior", local_files_only=True).state_dict()
    own = prior.state_dict()
    fit = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("transformer_blocks.") for k in fit):
        raise DataError("the Kandinsky prior's transformer blocks do not fit prior.width/heads/layers", path)
    prior.load_state_dict(fit, strict=False)
    return len(fit)


class PriorStage(Stage):
    name = "prior"
    CONDITION_KEYS = ("source_pose", "target_pose")

    def __init__(self, cfg: dict, cache: dict | None = None, load_weights: bool = True):
        super().__init__(cfg, cache, load_weights)
        self.clip = self.frozen("clip")
        arch = {k: v for k, v in dataclasses.asdict(self.config.prior).items() if k != "pretrained"}
        self.prior = PriorTransformer(embed_dim=self.clip.dim, **arch)
        if load_weights:
            init_from_kandinsky(self.prior, self.config.prior, self.config)
        self.noise_scheduler = make_noise_scheduler(self.config.scheduler)
        self.embed_mean, self.embed_std = self.config.embed_mean, self.config.embed_std

    def encode_source(self, images: torch.Tensor) -> dict:
        return {"clip": self.clip(images)}

    def _model(self, x, t, src, sp, tp):
        return self.prior(x, t.expand(x.shape[0]).to(x.device), src, sp, tp)

    def frozen_needs(self):
        return {"source": ("clip",), "target": ("clip",)}

    def image_features(self, images, names):
        return {"clip": self.clip(images)}

    def training_loss(self, batch, generator=None):
        """x0-MSE on the standardised target embedding; each condition dropped to zeros per ``drop``."""
        sp, tp = self.batch_inputs(batch, "source_pose", "target_pose", *self.frozen_image_keys(batch))[:2]
        frozen = self.frozen_inputs(batch)
        src = frozen["source.clip"]
        x0 = (frozen["target.clip"] - self.embed_mean) / self.embed_std
        masks = drop_masks(CONDITIONS, self.config.drop, x0.shape[0], generator, x0.device)
        src = apply_drop(src, masks["source_image"])
        sp = apply_drop(sp.to(x0.dtype), masks["source_pose"])
        tp = apply_drop(tp.to(x0.dtype), masks["target_pose"])
        return diffusion_loss(lambda xt, t: self._model(xt, t, src, sp, tp), self.noise_scheduler, x0, generator,
                              self.config.noise_offset)

    @torch.no_grad()
    def sample(self, source: dict, source_pose: torch.Tensor, target_pose: torch.Tensor, generator=None,
               num_inference_steps: int = 20, guidance_scale: float = 1.0, sampler=DEFAULT_SAMPLER,
               latents: torch.Tensor | None = None, step_end=None) -> torch.Tensor:
        """Target embeddings (B, D), un-standardised. ``source`` is :meth:`encode_source`'s output. Guidance
        contrasts with all three conditions at zero, the joint drop of training. ``sampler``: a shorthand or a
        diffusers scheduler object; ``latents`` (B, D) and ``step_end``: see :func:`denoise`."""
        src = source["clip"]
        self.check_inputs(source_embed=src, source_pose=source_pose, target_pose=target_pose)
        sp, tp = source_pose.to(src.dtype), target_pose.to(src.dtype)

        def fn(x, t, doubled):
            if doubled:
                s2, sp2, tp2 = cfg_double(src, sp, tp)
                return self._model(x, t, s2, sp2, tp2)
            return self._model(x, t, src, sp, tp)

        sched = make_sampler(sampler, self.noise_scheduler)
        x = denoise(fn, sched, (src.shape[0], self.clip.dim), generator, src.device, num_inference_steps,
                    guidance_scale, src.dtype, latents=latents, step_end=step_end)
        return x * self.embed_std + self.embed_mean
