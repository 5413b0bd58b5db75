"""Stage 2, inpainting: the target drawn into the right half of a [source | target] canvas.

UNet input = noisy canvas (C) + mask (1: ones over the known source half) + [source | black] (C);
pose = [source pose | target pose] through the pose encoder, added to ``conv_in``'s output; cross-attention on
projected DINOv2(source) tokens plus the target's global embedding as one more token, which also enters as the
class embedding. ``target_embed: false`` leaves the embedding out (no class embedding, no extra token): the
released stage-2-only official checkpoint (``PCDMs_ckpt.pt``), which works without the prior.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from pcdms_aug.stages.diffusion import DEFAULT_SAMPLER, apply_drop, cfg_double, denoise, diffusion_loss, drop_masks, \
    make_noise_scheduler, make_sampler
from pcdms_aug.models.blocks import ImageProjection, PoseEncoder
from pcdms_aug.models.unet import build_unet, pose_residual
from pcdms_aug.stages.base import Stage, to_uint8

CONDITIONS = ("source_features", "target_embed")


class InpaintStage(Stage):
    name = "inpaint"
    CONDITION_KEYS = ("source_pose_image", "target_pose_image")

    def __init__(self, cfg: dict, cache: dict | None = None, load_weights: bool = True):
        super().__init__(cfg, cache, load_weights)
        self.clip = self.frozen("clip")
        self.dino = self.frozen("dino")
        self.codec = self.frozen("codec")
        c = self.codec.channels
        self.uses_target_embed = self.config.target_embed
        self.unet = build_unet(self.config.unet, self.config, 2 * c + 1, c,
                               class_embed_dim=self.clip.dim if self.uses_target_embed else None,
                               load_weights=load_weights)
        cross = self.unet.config.cross_attention_dim
        if self.uses_target_embed and cross != self.clip.dim:
            raise ValueError(f"inpaint: cross_attention_dim ({cross}) must equal the global embedding size "
                             f"({self.clip.dim}): the embedding is one of the attention tokens")
        self.image_proj = ImageProjection(self.dino.dim, self.config.projection.hidden, cross)
        pe = dataclasses.asdict(self.config.pose_encoder)
        if pe["downsample"] is None:
            pe["downsample"] = int(math.log2(self.codec.factor))
        self.pose_encoder = PoseEncoder(out_channels=self.unet.config.block_out_channels[0], **pe)
        self.noise_scheduler = make_noise_scheduler(self.config.scheduler)

    # ---------------------------------------------------------------- pieces
    def encode_source(self, images: torch.Tensor) -> dict:
        images = self.resize(images)
        return {"image": images, "dino": self.dino(images)}

    def _canvas(self, left, right):
        return torch.cat([left, right], dim=-1)

    def _known_dist(self, source_images):
        """The codec's encoding of [source | black] (source images at the stage's size)."""
        return self.codec.encode_dist(self._canvas(source_images, torch.full_like(source_images, -1.0)))

    def _known(self, source_images=None, dist=None):
        """Mask (ones over the known source half) and latents of [source | black] at latent resolution, from
        the source images or from their :meth:`_known_dist`."""
        masked = self.codec.latent(self._known_dist(source_images) if dist is None else dist)
        mask = torch.zeros_like(masked[:, :1])
        mask[..., : mask.shape[-1] // 2] = 1.0
        return mask, masked

    def _pose_images(self, sp, tp):
        return self._canvas(self.resize(sp, mode="area"), self.resize(tp, mode="area"))

    def _model(self, x, t, mask, masked, pose_feats, tokens, embed):
        with pose_residual(self.unet, pose_feats):
            return self.unet(torch.cat([x, mask, masked], 1), t.expand(x.shape[0]).to(x.device),
                             encoder_hidden_states=tokens,
                             class_labels=embed if self.uses_target_embed else None).sample

    def _tokens(self, dino, embed):
        if not self.uses_target_embed:
            return self.image_proj(dino)
        return torch.cat([self.image_proj(dino), embed[:, None, :]], dim=1)

    # ---------------------------------------------------------------- training
    def frozen_needs(self):
        needs = {"source": ("dino", "known"), "pair": ("canvas",)}
        return {**needs, "target": ("clip",)} if self.uses_target_embed else needs

    def image_features(self, images, names):
        out, small = {}, self.resize(images)
        if "clip" in names:  # CLIP reads the image as loaded (its own preprocessing resizes)
            out["clip"] = self.clip(images)
        if "dino" in names:
            out["dino"] = self.dino(small)
        if "known" in names:
            out["known"] = self._known_dist(small)
        return out

    def pair_features(self, batch, names):
        src, tgt = self.batch_inputs(batch, "source_image", "target_image")
        return {"canvas": self.codec.encode_dist(self._canvas(self.resize(src), self.resize(tgt)))}

    def training_loss(self, batch, generator=None):
        """Epsilon-MSE on the canvas latents (or its target half: ``loss_region: target``); source features and
        target embedding dropped to zeros per ``drop``. Teacher forcing: the embedding is CLIP(target)."""
        sp_img, tp_img = self.batch_inputs(batch, "source_pose_image", "target_pose_image",
                                           *self.frozen_image_keys(batch))[:2]
        frozen = self.frozen_inputs(batch)
        embed, dino = frozen.get("target.clip"), frozen["source.dino"]
        x0 = self.codec.latent(frozen["pair.canvas"])
        mask, masked = self._known(dist=frozen["source.known"])
        conditions = CONDITIONS if self.uses_target_embed else CONDITIONS[:1]
        masks = drop_masks(conditions, self.config.drop, x0.shape[0], generator, x0.device)
        dino = apply_drop(dino, masks["source_features"])
        if self.uses_target_embed:
            embed = apply_drop(embed, masks["target_embed"])
        tokens = self._tokens(dino, embed)
        pose_feats = self.pose_encoder(self._pose_images(sp_img, tp_img))
        weight = None
        if self.config.loss_region == "target":
            weight = (1.0 - mask).expand(-1, 1, -1, -1)
        return diffusion_loss(lambda xt, t: self._model(xt, t, mask, masked, pose_feats, tokens, embed),
                              self.noise_scheduler, x0, generator, self.config.noise_offset, weight)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, source: dict, source_pose_image, target_pose_image, target_embed, generator=None,
               num_inference_steps: int = 20, guidance_scale: float = 2.0, sampler=DEFAULT_SAMPLER,
               latents: torch.Tensor | None = None, step_end=None, decode: bool = True):
        """Coarse target images (B, 3, H, W) in [-1, 1] at the stage's size. ``source``: :meth:`encode_source`'s
        output; pose images (B, 3, h, w) in [0, 1]; ``target_embed`` (B, D): the prior's output or CLIP(target).
        Guidance contrasts with source features and embedding at zero (training's joint drop); the pose and the
        known source half stay. A stage with ``target_embed: false`` takes ``target_embed=None``. ``sampler``: a
        shorthand or a diffusers scheduler object; ``latents`` (the canvas latents' shape) and ``step_end``: see
        :func:`denoise`; ``decode=False`` returns the canvas latents (:meth:`decode` makes the images)."""
        src, dino = source["image"], source["dino"]
        if target_embed is None:
            if self.uses_target_embed:
                raise ValueError("inpaint: target_embed is required (this stage reads the target's embedding)")
            target_embed = torch.zeros(src.shape[0], self.clip.dim, device=src.device, dtype=src.dtype)
        self.check_inputs(source_image=src, source_pose_image=source_pose_image,
                          target_pose_image=target_pose_image, target_embed=target_embed)
        if target_embed.shape[1] != self.clip.dim:
            raise ValueError(f"inpaint: target_embed must have {self.clip.dim} features, got {target_embed.shape[1]}")
        mask, masked = self._known(src)
        pose_feats = self.pose_encoder(self._pose_images(source_pose_image.to(src.dtype),
                                                         target_pose_image.to(src.dtype)))
        embed = target_embed.to(device=dino.device, dtype=dino.dtype)

        def fn(x, t, doubled):
            if doubled:
                d2, e2 = cfg_double(dino, embed)
                return self._model(x, t, torch.cat([mask, mask]), torch.cat([masked, masked]),
                                   torch.cat([pose_feats, pose_feats]), self._tokens(d2, e2), e2)
            return self._model(x, t, mask, masked, pose_feats, self._tokens(dino, embed), embed)

        if self.config.loss_region == "target":
            fn = self._known_half_fixed(fn, masked)
        sched = make_sampler(sampler, self.noise_scheduler)
        z = denoise(fn, sched, masked.shape, generator, src.device, num_inference_steps, guidance_scale,
                    masked.dtype, latents=latents, step_end=step_end)
        return self.decode(z) if decode else z

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The target half of the decoded canvas: (B, 3, H, W) in [-1, 1]."""
        canvas = self.codec.decode(latents)
        return canvas[..., canvas.shape[-1] // 2:]

    def _known_half_fixed(self, fn, masked):
        """A stage trained on the target half only never learned to predict the source half; left to its own
        predictions, that half of the noisy canvas drifts away from anything seen in training (a noised
        source) and the target half, which reads it, degrades. So the source half of every prediction is
        replaced by what predicts the true source latent at that timestep: the known half then follows the
        noised source exactly as in training."""
        half = masked.shape[-1] // 2
        known = {False: masked[..., :half], True: torch.cat([masked[..., :half]] * 2)}  # built once, not per step
        kind = self.noise_scheduler.config.prediction_type
        alphas = self.noise_scheduler.alphas_cumprod

        def fixed(x, t, doubled):
            pred = fn(x, t, doubled).clone()
            x0 = known[doubled]
            if kind == "sample":
                pred[..., :half] = x0
                return pred
            a = alphas[int(t)].to(device=x.device, dtype=x.dtype)
            eps = (x[..., :half] - a.sqrt() * x0) / (1 - a).sqrt()
            # epsilon: the noise that takes x0 to x_t; v = sqrt(a) eps - sqrt(1-a) x0
            pred[..., :half] = eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
            return pred

        return fixed

    def preview(self, batch, num_inference_steps=20, generator=None):
        src = self.encode_source(batch["source_image"])
        embed = self.clip(batch["target_image"])
        out = self.sample(src, batch["source_pose_image"], batch["target_pose_image"], embed, generator,
                          num_inference_steps)
        out = self.resize(out, batch["target_image"].shape[-2:])
        rows = []
        for s, p, o, g in zip(to_uint8(batch["source_image"]), to_uint8(batch["target_pose_image"] * 2 - 1),
                              to_uint8(out), to_uint8(batch["target_image"])):
            rows.append({"source": s, "target pose": p, "sample": o, "truth": g})
        return rows
