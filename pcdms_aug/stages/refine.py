"""Stage 3, refining: the final target image from the coarse stage-2 image and the source's local features.

UNet input = noisy target (C) + the coarse image (C); cross-attention on projected DINOv2(source) tokens; no pose.
``ssim_loss: w`` adds w * (1 - SSIM) of the decoded x0 prediction to the MSE (x0-prediction only).
``source_image_input: true`` adds the source image itself as C more input channels (dropped with the source
features). Off at paper scale (docs/design.md: 8 channels); on for the tiny stage, whose random frozen DINOv2 stand-in
carries no colour a tiny UNet learns to read, while a person is upright and centred in both crops, so a pixel of
the source mostly shows the body part the same pixel of the target does.
``adversarial: {weight: w, channels: [...]}`` adds a patch discriminator on the decoded x0 prediction against the
true target (hinge loss) and w times its generator term: the MSE-optimal x0 prediction averages away the
texture it cannot place, and the re-ID features FID is measured on notice (README, stage 3).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from pcdms_aug.stages.diffusion import DEFAULT_SAMPLER, apply_drop, cfg_double, denoise, diffusion_loss, drop_masks, \
    make_noise_scheduler, make_sampler
from pcdms_aug.models.blocks import ImageProjection, PatchDiscriminator
from pcdms_aug.models.unet import build_unet
from pcdms_aug.stages.base import Stage, to_uint8

CONDITIONS = ("source_features",)


class RefineStage(Stage):
    name = "refine"
    CONDITION_KEYS = ()
    FROZEN_IMAGE_KEYS = ("source_image", "target_image", "coarse_image")

    def __init__(self, cfg: dict, cache: dict | None = None, load_weights: bool = True):
        super().__init__(cfg, cache, load_weights)
        self.dino = self.frozen("dino")
        self.codec = self.frozen("codec")
        c = self.codec.channels
        self.source_input = self.config.source_image_input
        self.unet = build_unet(self.config.unet, self.config, (3 if self.source_input else 2) * c, c,
                               load_weights=load_weights)
        self.image_proj = ImageProjection(self.dino.dim, self.config.projection.hidden,
                                          self.unet.config.cross_attention_dim)
        self.noise_scheduler = make_noise_scheduler(self.config.scheduler)
        if self.config.adversarial is not None:
            # Trained with the rest, but never used to sample; saved with the stage so a run can continue.
            self.discriminator = PatchDiscriminator(self.config.adversarial.channels)

    def encode_source(self, images: torch.Tensor) -> dict:
        out = {"dino": self.dino(self.resize(images))}
        if self.source_input:
            out["latent"] = self.codec.encode(self.resize(images))
        return out

    def _cond(self, coarse_latent: torch.Tensor, source_latent: torch.Tensor | None) -> torch.Tensor:
        """The UNet's extra input channels: the coarse latent, then the source's where the config asks."""
        return coarse_latent if source_latent is None else torch.cat([coarse_latent, source_latent], 1)

    def _model(self, x, t, cond, tokens):
        return self.unet(torch.cat([x, cond], 1), t.expand(x.shape[0]).to(x.device),
                         encoder_hidden_states=tokens).sample

    def frozen_needs(self):
        return {"source": ("dino", "latent") if self.source_input else ("dino",), "target": ("latent",),
                "pair": ("coarse",)}

    def image_features(self, images, names):
        out, small = {}, self.resize(images)
        if "dino" in names:
            out["dino"] = self.dino(small)
        if "latent" in names:
            out["latent"] = self.codec.encode_dist(small)
        return out

    def pair_features(self, batch, names):
        (coarse,) = self.batch_inputs(batch, "coarse_image")
        return {"coarse": self.codec.encode_dist(self.resize(coarse))}

    def cache_keeps(self):
        """The x0 terms (SSIM, adversarial) decode predictions: the VAE stays with them."""
        return ("codec",) if self.config.ssim_loss > 0 or self.config.adversarial is not None else ()

    def training_loss(self, batch, generator=None):
        """MSE (the noise scheduler's prediction type) on the target latents given the coarse stage-2 image; source
        features dropped to zeros per ``drop``. Optional, for img2img use (``sampling.refine_strength`` < 1):
        ``train_timesteps: [lo, hi]`` and ``train_coarse_start`` (the share of the batch whose x_t noises the
        coarse image instead of the truth) with ``train_coarse_noise`` (its noise scale; 0 = the noise-free start
        of ``sampling.refine_noise: 0``); see :func:`diffusion_loss`. ``ssim_loss`` and ``adversarial`` add
        terms on the x0 prediction."""
        self.batch_inputs(batch, *self.frozen_image_keys(batch))
        frozen = self.frozen_inputs(batch)
        dino = frozen["source.dino"]
        x0 = self.codec.latent(frozen["target.latent"])
        cond = self.codec.latent(frozen["pair.coarse"])
        src_latent = self.codec.latent(frozen["source.latent"]) if self.source_input else None
        masks = drop_masks(CONDITIONS, self.config.drop, x0.shape[0], generator, x0.device)
        tokens = self.image_proj(apply_drop(dino, masks["source_features"]))
        if src_latent is not None:
            src_latent = apply_drop(src_latent, masks["source_features"])
        inputs = self._cond(cond, src_latent)
        terms = []
        c = self.config
        if c.ssim_loss > 0:
            terms.append(lambda pred, truth: c.ssim_loss * self._ssim_loss(pred, truth))
        if c.adversarial is not None:
            terms.append(self._adversarial_loss)
        extra = (lambda pred, truth: sum(f(pred, truth) for f in terms)) if terms else None
        return diffusion_loss(lambda xt, t: self._model(xt, t, inputs, tokens), self.noise_scheduler, x0, generator,
                              c.noise_offset, timesteps=c.train_timesteps, start=cond,
                              start_prob=c.train_coarse_start, start_noise=c.train_coarse_noise, x0_loss=extra)

    def _adversarial_loss(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Hinge GAN terms in one scalar, so the one optimizer of the training loop serves both players: the
        discriminator's loss on truth vs the detached prediction (its gradients reach only the discriminator),
        plus w times the generator's -D(prediction) evaluated with the discriminator's weights detached (its
        gradients reach only the denoiser). No alternating steps, no second optimizer or checkpoint format."""
        from torch.func import functional_call

        d = self.discriminator
        fake, real = self.codec.decode(pred), self.codec.decode(truth)
        d_loss = F.relu(1 - d(real)).mean() + F.relu(1 + d(fake.detach())).mean()
        frozen = {k: v.detach() for k, v in d.named_parameters()}
        g_loss = -functional_call(d, frozen, (fake,)).mean()
        self.loss_terms = {"discriminator": float(d_loss.detach()), "generator": float(g_loss.detach()),
                           "mse": float(F.mse_loss(pred.detach(), truth))}
        return d_loss + self.config.adversarial.weight * g_loss

    def _ssim_loss(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """1 - SSIM of the decoded x0 prediction, with the evaluation's Gaussian window (sigma 1.2, 9 taps)."""
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        a, b = self.codec.decode(pred), self.codec.decode(truth)
        return 1 - ssim(a, b, gaussian_kernel=True, sigma=1.2, kernel_size=9, data_range=2.0)

    @torch.no_grad()
    def sample(self, source: dict, coarse: torch.Tensor, generator=None, num_inference_steps: int = 20,
               guidance_scale: float = 2.0, sampler=DEFAULT_SAMPLER, strength: float = 1.0,
               noise: float = 1.0, latents: torch.Tensor | None = None, step_end=None,
               decode: bool = True) -> torch.Tensor:
        """Final images (B, 3, H, W) in [-1, 1] at the stage's size from coarse ones (any size, [-1, 1]).
        Guidance contrasts with the source features at zero; the coarse image stays. ``strength`` 1 starts
        from pure noise (upstream); below 1 from the coarse image noised part of the way (img2img), which
        runs ``steps * strength`` denoiser calls and keeps the coarse layout. ``noise`` scales the noise of that
        start (1: img2img; 0: the noised image's mean, deterministic; ``denoise``'s ``init_noise``). ``sampler``: a
        shorthand or a diffusers scheduler object; ``latents`` and ``step_end``: see :func:`denoise`;
        ``decode=False`` returns the latents (:meth:`decode` makes the images)."""
        dino = source["dino"]
        self.check_inputs(coarse_image=coarse)
        if dino.shape[0] != coarse.shape[0]:
            raise ValueError(f"refine: {dino.shape[0]} encoded sources for {coarse.shape[0]} coarse images")
        cond = self.codec.encode(self.resize(coarse.to(device=dino.device, dtype=dino.dtype)))
        trained, n_train = self.config.train_timesteps, self.noise_scheduler.config.num_train_timesteps
        if trained and strength * n_train > float(trained[1]) + 1:
            warnings.warn(f"refine: strength {strength} starts at noise levels up to {strength * n_train:.0f}, but "
                          f"this stage was trained on t in [{trained[0]}, {trained[1]}) only; use a strength <= "
                          f"{float(trained[1]) / n_train:g}", stacklevel=2)

        src_latent = source["latent"].to(cond.dtype) if self.source_input else None
        inputs = self._cond(cond, src_latent)

        def fn(x, t, doubled):
            if doubled:
                (d2,) = cfg_double(dino)
                both = torch.cat([cond, cond]) if src_latent is None else \
                    self._cond(torch.cat([cond, cond]), *cfg_double(src_latent))
                return self._model(x, t, both, self.image_proj(d2))
            return self._model(x, t, inputs, self.image_proj(dino))

        sched = make_sampler(sampler, self.noise_scheduler)
        z = denoise(fn, sched, cond.shape, generator, dino.device, num_inference_steps, guidance_scale, cond.dtype,
                    init=cond, strength=strength, init_noise=noise, latents=latents, step_end=step_end)
        return self.decode(z) if decode else z

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] from the stage's latents."""
        return self.codec.decode(latents)

    def preview(self, batch, num_inference_steps=20, generator=None):
        out = self.sample(self.encode_source(batch["source_image"]), batch["coarse_image"], generator,
                          num_inference_steps)
        out = self.resize(out, batch["target_image"].shape[-2:])
        return [{"source": s, "coarse": c, "sample": o, "truth": g}
                for s, c, o, g in zip(to_uint8(batch["source_image"]), to_uint8(batch["coarse_image"]),
                                      to_uint8(out), to_uint8(batch["target_image"]))]
