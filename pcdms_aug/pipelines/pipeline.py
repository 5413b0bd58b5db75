"""PCDMsPipeline: prior -> inpaint -> refine, used the way a diffusers pipeline is.

    pipe = PCDMsPipeline.from_pretrained("tiny", torch_dtype=torch.float32)   # or .from_config("tiny/pipeline.yaml")
    out = pipe(source_image, source_pose, [pose_a, pose_b], generator=torch.Generator().manual_seed(0))
    out.images, out.coarse_images                            # PIL images at the source's size

Images go in as PIL images, uint8 (H, W, 3) arrays or a float (B, 3, H, W) tensor in [-1, 1]; they are resized
to the pipeline's ``image_size`` (the size the stages were trained at) and the results back to the source's
size. Poses are :class:`~pcdms_aug.data.pose.Pose` or (18, 2) arrays of (x, y) pixels of the source image, -1 for a
missing joint. Pose images are rendered at ``image_size`` as the training data was, then each stage resizes them
as it did in training.

Samplers: each stage samples with a diffusers scheduler object, ``pipe.prior_scheduler``,
``pipe.inpaint_scheduler``, ``pipe.refine_scheduler`` (diffusers' attribute names, as in its multi-stage
UnCLIP and Kandinsky pipelines; all three in ``pipe.schedulers``), made at load time from the config's
``sampling.scheduler`` shorthand and the stage's training noise schedule (``stage.noise_scheduler``). Swap one
the diffusers way, ``pipe.inpaint_scheduler = UniPCMultistepScheduler.from_config(pipe.inpaint_scheduler.config)``,
or assign a shorthand (``"ddim"``, ``"unipc"``, ``"dpmsolver++"``); the ``scheduler=`` argument of a call
picks shorthands for that call only. ``save_pretrained`` stores the config's shorthand, not swapped objects.
Words: what diffusers users touch keeps diffusers' word, scheduler (the attributes, the ``scheduler=`` argument,
``sampling.scheduler`` of the saved config); inside the package that object is a *sampler*, and a stage's
training schedule its ``noise_scheduler`` (:mod:`pcdms_aug.stages.diffusion`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from diffusers.utils import BaseOutput

from pcdms_aug.pipelines import loading
from pcdms_aug.pipelines.call_inputs import CallInputs, SourceEncoding, check_call
from pcdms_aug.pipelines.image_processing import (images_to_tensor, pose_images, pose_vectors, postprocess, resize,
                                                  unique_rows)
from pcdms_aug.pipelines.pipeline_config import ORDER, sampling_defaults
from pcdms_aug.stages import Stage
from pcdms_aug.stages.diffusion import make_sampler
from pcdms_aug.utils.runtime import DEFAULT_DTYPE, DTYPES, as_dtype

if TYPE_CHECKING:
    import numpy as np


@dataclass
class PCDMsOutput(BaseOutput):
    """What a call returns (``return_dict=False``: these fields as a tuple, in this order, None included)."""

    images: list | np.ndarray | torch.Tensor  # final images at the source's size, as output_type asks (PIL)
    coarse_images: list | np.ndarray | torch.Tensor  # stage-2 images, alike (latent: the stage-2 canvas latents)
    target_embeds: torch.Tensor | None = None  # the global embeddings stage 2 used (prior's or given), float32
    timings: dict = field(default_factory=dict)  # seconds per part


def _scheduler_attribute(stage: str) -> property:
    def get(self):
        if stage not in self.schedulers:
            raise AttributeError(f"this pipeline has no {stage} stage")
        return self.schedulers[stage]

    def set_(self, sampler):
        self.schedulers[stage] = make_sampler(sampler, self.stages[stage].noise_scheduler)

    return property(get, set_, doc=f"The {stage} stage's sampler: a diffusers scheduler object; a shorthand "
                                   "(ddim, unipc, dpmsolver++) may be assigned.")


class PCDMsPipeline:
    _callback_tensor_inputs = ("latents",)  # what callback_on_step_end may read and replace

    prior_scheduler = _scheduler_attribute("prior")
    inpaint_scheduler = _scheduler_attribute("inpaint")
    refine_scheduler = _scheduler_attribute("refine")

    def __init__(self, stages: dict[str, Stage], config: dict):
        self.stages = stages
        for stage in stages.values():
            stage.eval()  # an inference object: no dropout, the same kernels before and after a reload
        self.config = config
        self.image_size = tuple(int(v) for v in config.get("image_size", (128, 64)))
        name = sampling_defaults(config)["scheduler"]
        self.schedulers = {n: make_sampler(name, s.noise_scheduler) for n, s in stages.items()}
        self._progress_bar_config: dict = {}
        self._offload_device: torch.device | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, path: str | Path, seed: int = 0, overrides: Sequence[str] = (),
                    torch_dtype=None) -> "PCDMsPipeline":
        """Random trainable weights from a pipeline YAML (stage i is seeded with seed + i); frozen parts as the
        stage configs say (random tiny encoders, or local pretrained folders)."""
        return cls(*loading.stages_from_config(path, seed, overrides))._cast(torch_dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype=None) -> "PCDMsPipeline":
        """A folder written by :meth:`save_pretrained`; ``"tiny"`` is the shipped tiny weights. ``torch_dtype``
        (a torch dtype or fp32 / fp16 / bf16): the type every stage is cast to (default: as stored, fp32)."""
        return cls(*loading.stages_from_folder(directory))._cast(torch_dtype)

    @classmethod
    def from_stages(cls, folders: dict[str, str | Path], config: str | Path | dict | None = None,
                    torch_dtype=None) -> "PCDMsPipeline":
        """Assemble from separately trained stage folders (``OUT/final`` of ``pcdms-aug train``); sampling
        settings from ``config`` (a pipeline YAML or its dict; default ``tiny/pipeline.yaml``)."""
        return cls(*loading.stages_from_stage_folders(folders, config))._cast(torch_dtype)

    @classmethod
    def load(cls, weights: str | Path, device: str = "auto", dtype: str | None = None) -> "PCDMsPipeline":
        """What every command takes as ``--weights``: ``tiny`` (shipped), a folder written by save_pretrained, or a
        pipeline YAML (random weights, for tests); moved to ``device`` (auto: the GPU if there is one) and
        ``dtype`` (default :data:`~pcdms_aug.utils.runtime.DEFAULT_DTYPE`). The per-step progress bar is off:
        the commands draw their own, per image."""
        from pcdms_aug.pipelines.weights_path import check_weights_spec
        from pcdms_aug.utils.runtime import pick_device, pick_dtype

        if check_weights_spec(weights) is None:
            pipe = cls.from_config(weights, seed=0)
        else:
            pipe = cls.from_pretrained(weights)
        pipe.set_progress_bar_config(disable=True)
        dev = pick_device(device)
        return pipe.to(dev, pick_dtype(dtype or DEFAULT_DTYPE, dev))

    def save_pretrained(self, directory: str | Path, trainable_dtype=None) -> None:
        """``directory/{prior,inpaint,refine}/`` (see :meth:`Stage.save_pretrained`) and ``pipeline.yaml``.
        A frozen encoder two stages share is written once, by the first; the later one refers to that file."""
        loading.save_folder(directory, self.stages, self.config, trainable_dtype)

    def _cast(self, dtype) -> "PCDMsPipeline":
        return self if dtype is None else self.to(dtype=dtype)

    # ---------------------------------------------------------------- device, dtype, offload, progress
    def to(self, *args, **kwargs) -> "PCDMsPipeline":
        """As diffusers' ``DiffusionPipeline.to``: ``to("cuda")``, ``to(torch.float16)``, ``to("cuda",
        torch.float16)``, ``to(device=..., dtype=...)`` (dtype names fp32 / fp16 / bf16 too). A device ends
        model CPU offload."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword(s) {', '.join(kwargs)}")
        for a in args:
            if isinstance(a, torch.dtype) or (isinstance(a, str) and (a in DTYPES or a in DTYPES.values())):
                dtype = a
            elif isinstance(a, (str, torch.device, int)):
                device = a
            else:
                raise TypeError(f"to() takes a device and/or a dtype, got {a!r}")
        dtype = None if dtype is None else as_dtype(dtype)
        if device is not None:
            self._offload_device = None
        for stage in self.stages.values():
            stage.to(device=device, dtype=dtype)
            stage.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the stages are (the CPU under model offload; see :meth:`enable_model_cpu_offload`)."""
        return next(iter(self.stages.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.stages.values())).dtype

    @property
    def _execution_device(self) -> torch.device:
        """Where the computation runs: the offload device, else the stages' device (diffusers' name)."""
        return self._offload_device if self._offload_device is not None else self.device

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep the stages on the CPU and move each to ``device`` only while it runs (encoding, then sampling
        each batch), the others back to the CPU first: GPU memory holds one stage at a time (the paper's
        UNets and encoders, not all three stages). Images are those of the pipeline on ``device``; each batch
        moves every stage once. ``pipe.to(device)`` ends it."""
        dev = torch.device(device)
        if gpu_id is not None:
            dev = torch.device(dev.type, gpu_id)
        for stage in self.stages.values():
            stage.to("cpu")
        self._offload_device = dev

    def _onload(self, name: str) -> None:
        if self._offload_device is None:
            return
        stage = self.stages[name]
        for other in self.stages.values():  # first: a frozen encoder two stages share must end on the device
            if other is not stage:
                other.to("cpu")
        stage.to(self._offload_device)

    def maybe_free_model_hooks(self) -> None:
        """Under model offload, every stage back on the CPU (the end of each call; diffusers' name)."""
        if self._offload_device is not None:
            for stage in self.stages.values():
                stage.to("cpu")

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm arguments of the per-call denoising progress bar, e.g. ``disable=True`` (diffusers' method)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total=None):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, **{"desc": "PCDMs", **self._progress_bar_config})

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def encode_sources(self, source_images, stages: Sequence[str] = ORDER) -> SourceEncoding:
        """Encode sources once (each stage's frozen encoders); pass the result as ``source_encoding=``, after
        :meth:`SourceEncoding.select` if the pairs reuse sources."""
        x, size = images_to_tensor(source_images, self.image_size)
        feats = self._encode_images(x, [n for n in stages if n in self.stages])
        self.maybe_free_model_hooks()
        return SourceEncoding(feats, size, x.shape[0])

    def _encode_images(self, x: torch.Tensor, stages) -> dict:
        x = x.to(self._execution_device, self.dtype)
        feats = {}
        for n in stages:
            self._onload(n)
            feats[n] = self.stages[n].encode_source(x)
        return feats

    @torch.no_grad()
    def __call__(self, source_images=None, source_poses=None, target_poses=None, num_inference_steps=None,
                 guidance_scale=None, generator=None, scheduler=None, stages=ORDER, output_type: str = "pil",
                 target_embeds: torch.Tensor | None = None, batch_size: int | None = None,
                 refine_strength: float | None = None, refine_noise: float | None = None,
                 output_size: str = "source", *, source_encoding: SourceEncoding | None = None,
                 latents: dict | None = None, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)):
        """Generate the target of every (source, target pose) pair.

        ``source_images``: one source for every target pose, or one per pair (PIL, uint8 arrays or a tensor in
        [-1, 1]); or ``source_encoding``: :meth:`encode_sources`' result, one row per source. ``source_poses``:
        one per source. ``num_inference_steps`` and ``guidance_scale``: a number or ``{stage: value}``
        (defaults: the pipeline config's ``sampling``). ``scheduler``: a shorthand (ddim, unipc, dpmsolver++)
        or ``{stage: shorthand or scheduler object}`` for this call (default: ``pipe.<stage>_scheduler``).
        ``generator``: one ``torch.Generator`` or one per pair; with one per pair a pair's images do not
        depend on the other pairs of the call. ``stages``: a subset of prior/inpaint/refine that includes
        inpaint; without prior pass ``target_embeds`` (e.g. CLIP of the true target: teacher forcing);
        without refine the final images are the coarse ones. ``output_type``: pil, np (float (N, H, W, 3) in
        [0, 1]), pt (float (N, 3, H, W) in [0, 1], on the CPU) or latent (the last stage's latents,
        undecoded; ``coarse_images`` the stage-2 canvas latents). ``latents``: ``{stage: tensor}``, a stage's
        starting noise instead of drawing it (the shapes ``output_type="latent"`` returns: prior
        ``target_embeds``, inpaint ``coarse_images``, refine ``images``). ``refine_strength`` (default: the
        config's ``sampling.refine_strength``, else 1 = upstream's start from noise): below 1, stage 3 starts
        from the coarse image noised part of the way and runs ``steps * strength`` steps (img2img).
        ``refine_noise`` (default: ``sampling.refine_noise``, else 1): the scale of that noise; 0 starts stage 3
        from the noised image's mean, so the final image is a deterministic function of the coarse one.
        ``callback_on_step_end(pipe, stage, step, timestep, callback_kwargs)`` runs after every denoising step
        of every stage and batch with ``callback_kwargs`` holding ``callback_on_step_end_tensor_inputs``
        ("latents": that stage's current latents, one row per pair of the batch); the dict it returns may
        replace them. ``return_dict=False``: a tuple of :class:`PCDMsOutput`'s fields.
        """
        timings = {"encode": 0.0, **{n: 0.0 for n in ORDER}}
        t0 = time.perf_counter()  # "encode" counts preparing the sources (resizing them) as well
        call = self.check_inputs(source_images, source_poses, target_poses, num_inference_steps, guidance_scale,
                                 generator, scheduler, stages, output_type, target_embeds, batch_size,
                                 refine_strength, refine_noise, output_size, source_encoding=source_encoding,
                                 latents=latents, callback_on_step_end=callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        enc, source_row = self._encode(call)
        timings["encode"] = time.perf_counter() - t0
        finals, coarses, embeds = [], [], []
        n_pairs = len(call.target_poses)
        batches = [list(range(lo, min(lo + call.batch_size, n_pairs))) for lo in range(0, n_pairs, call.batch_size)]
        with self.progress_bar(total=self._loop_steps(call) * len(batches)) as bar:
            for idx in batches:
                final, coarse, emb = self._sample_pairs(call, enc, source_row, idx, timings, bar)
                if call.output_type != "latent":
                    final = resize(final, call.size if call.output_size == "source" else final.shape[-2:])
                    coarse = resize(coarse, call.size if call.output_size == "source" else coarse.shape[-2:])
                finals.append(final)
                coarses.append(coarse)
                if emb is not None:
                    embeds.append(emb.float().cpu())
        self.maybe_free_model_hooks()
        out = PCDMsOutput(postprocess(torch.cat(finals), call.output_type),
                          postprocess(torch.cat(coarses), call.output_type),
                          torch.cat(embeds) if embeds else None, timings)
        return out if return_dict else tuple(getattr(out, f.name) for f in fields(out))

    def check_inputs(self, source_images, source_poses, target_poses, num_inference_steps=None,
                     guidance_scale=None, generator=None, scheduler=None, stages=ORDER, output_type: str = "pil",
                     target_embeds: torch.Tensor | None = None, batch_size: int | None = None,
                     refine_strength: float | None = None, refine_noise: float | None = None,
                     output_size: str = "source", **kwargs) -> CallInputs:
        """The arguments of :meth:`__call__` checked (a ValueError naming the first bad one) and normalised:
        defaults from the pipeline config filled in, sources as a tensor at ``image_size`` (or the given
        :class:`SourceEncoding`), poses as :class:`Pose` objects of the sources' size, a sampler per stage."""
        return check_call(self, source_images, source_poses, target_poses, num_inference_steps, guidance_scale,
                          generator, scheduler, stages, output_type, target_embeds, batch_size, refine_strength,
                          refine_noise, output_size, **kwargs)

    @staticmethod
    def _loop_steps(call: CallInputs) -> int:
        """Denoising steps of one batch (the progress bar's unit)."""
        steps = dict(call.steps)
        if call.refine_strength < 1.0:
            steps["refine"] = max(1, min(steps["refine"], round(steps["refine"] * call.refine_strength)))
        return sum(steps[n] for n in call.stages)

    def _encode(self, call: CallInputs) -> tuple[SourceEncoding, list[int]]:
        """The sources' encoding and, for each source, its row in it (a repeated image is encoded once)."""
        if isinstance(call.sources, SourceEncoding):
            return call.sources, list(range(call.sources.count))
        x, source_row = unique_rows(call.sources)
        return SourceEncoding(self._encode_images(x, call.stages), call.size, x.shape[0]), source_row

    def _step_end(self, call: CallInputs, name: str, bar):
        """The per-step hook of stage ``name``'s loop: the progress bar, then the caller's callback."""
        def step_end(i, t, x):
            bar.update(1)
            if call.callback is None:
                return x
            given = {"latents": x}
            out = call.callback(self, name, i, t, {k: given[k] for k in call.callback_inputs})
            return x if out is None else out.get("latents", x)
        return step_end

    def _sample_pairs(self, call: CallInputs, enc: SourceEncoding, source_row: list[int], idx: list[int],
                      timings: dict, bar) -> tuple:
        """Pairs ``idx`` through the stages: (final, coarse, the embeddings stage 2 read or None); final and
        coarse are latents for ``output_type="latent"``."""
        dev, dt, stages = self._execution_device, self.dtype, call.stages
        src = [call.pair_source[i] for i in idx]
        rows = torch.tensor([source_row[s] for s in src])
        gen = [call.generator[i] for i in idx] if isinstance(call.generator, (list, tuple)) else call.generator
        feats = {n: {k: v[rows.to(v.device)] for k, v in enc.features[n].items()} for n in stages}
        sp = [call.source_poses[s] for s in src]
        tp = [call.target_poses[i] for i in idx]
        kw = {n: dict(generator=gen, num_inference_steps=call.steps[n], guidance_scale=call.guidance[n],
                      sampler=call.samplers[n], step_end=self._step_end(call, n, bar),
                      latents=call.latents[n][idx] if n in call.latents else None) for n in stages}
        latent_out = call.output_type == "latent"
        if "prior" in stages:
            t0 = time.perf_counter()
            self._onload("prior")
            emb = self.stages["prior"].sample(feats["prior"], pose_vectors(sp, dev, dt), pose_vectors(tp, dev, dt),
                                              **kw["prior"])
            timings["prior"] += time.perf_counter() - t0
        elif call.target_embeds is not None:
            emb = call.target_embeds[idx].to(dev, dt)
        else:  # an inpainting stage that reads no embedding (the released official stage 2)
            emb = None
        t0 = time.perf_counter()
        self._onload("inpaint")
        inpaint = self.stages["inpaint"]
        coarse = inpaint.sample(feats["inpaint"], pose_images(sp, self.image_size, dev, dt),
                                pose_images(tp, self.image_size, dev, dt), emb, decode=not latent_out,
                                **kw["inpaint"])
        coarse_image = inpaint.decode(coarse) if latent_out and "refine" in stages else coarse
        timings["inpaint"] += time.perf_counter() - t0
        final = coarse
        if "refine" in stages:
            t0 = time.perf_counter()
            self._onload("refine")
            final = self.stages["refine"].sample(feats["refine"], coarse_image, strength=call.refine_strength,
                                                 noise=call.refine_noise, decode=not latent_out, **kw["refine"])
            timings["refine"] += time.perf_counter() - t0
        return final, coarse, emb
