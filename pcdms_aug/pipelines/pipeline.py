"""PCDMsPipeline: prior -> inpaint -> refine. The only place that knows the order of the stages.

    pipe = PCDMsPipeline.from_pretrained("tiny")            # or .from_config("tiny/pipeline.yaml") (random)
    out = pipe(source_image, source_pose, [pose_a, pose_b], generator=torch.Generator().manual_seed(0))
    out.images, out.coarse_images                            # PIL images at the source's size

Images go in as PIL images, uint8 (H, W, 3) arrays or a float (B, 3, H, W) tensor in [-1, 1]; they are resized
to the pipeline's ``image_size`` (the size the stages were trained at) and the results back to the source's
size. Poses are :class:`~pcdms_aug.data.pose.Pose` or (18, 2) arrays of (x, y) pixels of the source image, -1 for a
missing joint. Pose images are rendered at ``image_size`` as the training data was, then each stage resizes them
as it did in training.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pcdms_aug.config.loading import load_config, resolve_config_path
from pcdms_aug.stages.diffusion import SCHEDULERS
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import NUM_JOINTS, Pose, as_pose, render_pose
from pcdms_aug.stages import STAGES, Stage, stage_class

ORDER = ("prior", "inpaint", "refine")
WEIGHTS_ROOT = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_STEPS = 20
DEFAULT_SCHEDULER = "unipc"  # where a pipeline config names none
DEFAULT_GUIDANCE = {"prior": 1.0, "inpaint": 2.0, "refine": 2.0}  # upstream: no guidance in stage 1


@dataclass
class PCDMsOutput:
    images: list | np.ndarray | torch.Tensor  # final images at the source's size (PIL by default)
    coarse_images: list | np.ndarray | torch.Tensor  # stage-2 images, same size and format
    target_embeds: torch.Tensor | None = None  # the global embeddings stage 2 used (prior's or given), float32
    timings: dict = field(default_factory=dict)  # seconds per part


@dataclass
class SourceEncoding:
    """Sources encoded once (:meth:`PCDMsPipeline.encode_sources`), to reuse over many target poses."""

    features: dict  # stage name -> {name: tensor with one row per source}
    size: tuple  # (height, width) of the source images: the outputs' size
    count: int

    def select(self, index: Sequence[int]) -> "SourceEncoding":
        """Rows ``index`` (repeats allowed): one source per pair, without encoding anything again."""
        idx = list(index)
        if any(not 0 <= i < self.count for i in idx):
            raise ValueError(f"source index out of range 0..{self.count - 1}")
        feats = {n: {k: v[idx] for k, v in f.items()} for n, f in self.features.items()}
        return SourceEncoding(feats, self.size, len(idx))


@dataclass
class CallInputs:
    """One call's arguments as :meth:`PCDMsPipeline.check_inputs` leaves them: checked, defaults filled in."""

    stages: tuple
    steps: dict  # stage -> number of inference steps
    guidance: dict  # stage -> guidance scale
    scheduler: str
    refine_strength: float
    refine_noise: float
    output_type: str
    output_size: str
    sources: torch.Tensor | SourceEncoding | None = None  # (N, 3, H, W) at image_size, or the given encoding
    size: tuple = ()  # (height, width) of the sources
    source_poses: list = field(default_factory=list)
    target_poses: list = field(default_factory=list)  # one per pair
    pair_source: list = field(default_factory=list)  # each pair's source
    generator: torch.Generator | list | None = None
    target_embeds: torch.Tensor | None = None
    batch_size: int = 1


def _per_stage(value, default: dict, what: str, cast) -> dict:
    """A number for every stage, or ``{stage: number}`` (stages left out keep the default); NaN and infinities
    are refused (a NaN guidance would make black images that pass every later check)."""
    out = _per_stage_values(value, default, what, cast)
    bad = [n for n, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} of {bad[0]} must be a finite number, got {out[bad[0]]}")
    return out


def _per_stage_values(value, default: dict, what: str, cast) -> dict:
    if value is None:
        return {n: cast(default[n]) for n in ORDER}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(ORDER))
        if unknown:
            raise ValueError(f"{what}: unknown stage(s) {', '.join(unknown)}; use {', '.join(ORDER)}")
        return {n: cast(value.get(n, default[n])) for n in ORDER}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number or a dict per stage, got {value!r}")
    return {n: cast(value) for n in ORDER}


def resolve_weights(directory: str | Path) -> Path:
    """The folder a weights argument names: ``"tiny"`` is the shipped tiny weights, anything else a path."""
    if str(directory) != "tiny":
        return Path(directory)
    directory = WEIGHTS_ROOT / "tiny"
    if not (directory / "pipeline.yaml").is_file():
        raise DataError("the shipped tiny weights are missing from this installation (scripts/train_tiny.sh "
                        "trains them on the synthetic Market-1501 and writes them here)", directory)
    return directory


def stage_folder(source: str | Path, name: str) -> Path:
    """The folder of one stage: ``source`` is a stage folder (``OUT/final`` of ``pcdms-aug train``) or a pipeline
    folder (``"tiny"`` too) whose ``<name>/`` holds it."""
    folder = resolve_weights(source)
    if (folder / name / "config.json").is_file():
        return folder / name
    return folder


# The keys a pipeline config may hold beside ``stages`` (what ``assemble KEY=VALUE`` may change), each with
# its check: one place for what a valid sampling default is.
def _steps(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(lo, hi, lo_open=False):
    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if lo_open else v >= lo) \
            and (hi is None or v <= hi)
    return ok


CONFIG_KEYS = {
    "image_size": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_steps(x) for x in v),
                   "[height, width]"),
    "batch_size": (_steps, "an integer >= 1"),
    "sampling.scheduler": (lambda v: v in SCHEDULERS, "one of " + ", ".join(SCHEDULERS)),
    **{f"sampling.steps.{n}": (_steps, "an integer >= 1") for n in ORDER},
    **{f"sampling.guidance.{n}": (_number(0.0, None), "a number >= 0") for n in ORDER},
    "sampling.refine_strength": (_number(0.0, 1.0, lo_open=True), "a number in (0, 1]"),
    "sampling.refine_noise": (_number(0.0, 1.0), "a number in [0, 1]"),
}


def check_pipeline_config(cfg: dict, where: str = "pipeline config") -> None:
    """A DataError naming the first unknown key or bad value of a pipeline config (``stages`` aside)."""
    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if key in ("stages", "weights", "random_weights"):  # read by from_config (stage YAMLs, pretrained folders)
                continue
            if isinstance(v, dict) and key in ("sampling", "sampling.steps", "sampling.guidance"):
                walk(v, key + ".")
                continue
            if key not in CONFIG_KEYS:
                import difflib

                near = difflib.get_close_matches(key, list(CONFIG_KEYS) + ["stages", "weights", "random_weights"],
                                                 n=1, cutoff=0.6)
                raise DataError(f"unknown key {key!r} in {where}" + (f"; did you mean {near[0]!r}?" if near else "")
                                + f" (known: {', '.join(CONFIG_KEYS)})")
            ok, what = CONFIG_KEYS[key]
            if not ok(v):
                raise DataError(f"{key}={v!r} in {where}: must be {what}")
    walk(cfg, "")


class PCDMsPipeline:
    def __init__(self, stages: dict[str, Stage], config: dict):
        self.stages = stages
        for stage in stages.values():
            stage.eval()  # an inference object: no dropout, the same kernels before and after a reload
        self.config = config
        self.image_size = tuple(int(v) for v in config.get("image_size", (128, 64)))

    # ---------------------------------------------------------------- construction
    @staticmethod
    def _stage_configs(cfg: dict, base: Path | None) -> dict[str, dict]:
        """Each stage's config, with the pipeline's ``weights`` folders and ``random_weights`` passed down."""
        out = {}
        for name in ORDER:
            spec = (cfg.get("stages") or {}).get(name)
            if spec is None:
                continue
            if isinstance(spec, str):
                if base is None:
                    raise DataError(f"stage {name}: a file name needs a pipeline YAML to be relative to")
                path = base / spec
                if not path.is_file():
                    raise DataError(f"stage {name}: config file not found", path)
                scfg = load_config(path)
            elif isinstance(spec, dict):
                scfg = copy.deepcopy(spec)
            else:
                raise DataError(f"stages.{name} must be a file name or a mapping, got {spec!r}")
            given = {k: v for k, v in (cfg.get("weights") or {}).items() if v}
            if given:
                scfg["weights"] = {**(scfg.get("weights") or {}), **given}
            if "random_weights" in cfg:
                scfg["random_weights"] = bool(cfg["random_weights"])
            out[name] = scfg
        if "inpaint" not in out:
            raise DataError("a pipeline needs at least the inpaint stage (stages.inpaint)")
        return out

    @classmethod
    def from_config(cls, path: str | Path, seed: int = 0, overrides: Sequence[str] = ()) -> "PCDMsPipeline":
        """Random trainable weights from a pipeline YAML (stage i is seeded with seed + i); frozen parts as the
        stage configs say (random tiny encoders, or local pretrained folders)."""
        path = resolve_config_path(path)
        cfg = load_config(path, overrides)
        check_pipeline_config(cfg, str(path))
        cache: dict = {}
        stages = {name: stage_class(name).from_config(scfg, seed=seed + ORDER.index(name), cache=cache)
                  for name, scfg in cls._stage_configs(cfg, path.parent).items()}
        cfg["stages"] = {n: n for n in stages}
        return cls(stages, cfg)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PCDMsPipeline":
        """A folder written by :meth:`save_pretrained`; ``"tiny"`` is the shipped tiny weights."""
        directory = resolve_weights(directory)
        if not directory.is_dir():
            raise DataError("pipeline folder not found", directory)
        cfg = cls._read_meta(directory)
        cache: dict = {}
        names = [n for n in ORDER if n in (cfg.get("stages") or {})]
        if not names:
            raise DataError("pipeline.yaml names no stage", directory / "pipeline.yaml")
        stages = {}
        for n in names:
            if not (directory / n).is_dir():
                raise DataError(f"stage folder {n}/ missing", directory)
            stages[n] = STAGES[n].from_pretrained(directory / n, cache=cache)
        return cls(stages, cfg)

    @classmethod
    def load(cls, weights: str | Path, device: str = "auto", dtype: str | None = None) -> "PCDMsPipeline":
        """What every command takes as ``--weights``: ``tiny`` (shipped), a folder written by save_pretrained, or a
        pipeline YAML (random weights, for tests); moved to ``device`` (auto: the GPU if there is one), ``dtype``
        (default fp32)."""
        from pcdms_aug.utils.runtime import pick_device, pick_dtype

        if str(weights).endswith((".yaml", ".yml")):
            pipe = cls.from_config(weights, seed=0)
        else:
            if weights != "tiny" and not Path(weights).is_dir():
                raise DataError("weights folder not found (expected a folder written by save_pretrained, "
                                "or 'tiny' for the shipped weights)", weights)
            pipe = cls.from_pretrained(weights)
        dev = pick_device(device)
        return pipe.to(dev, pick_dtype(dtype or "fp32", dev))

    @staticmethod
    def _read_meta(directory: Path) -> dict:
        import yaml

        meta = directory / "pipeline.yaml"
        if not meta.is_file():
            legacy = directory / "pipeline.json"  # written by the first version of save_pretrained
            if legacy.is_file():
                return json.loads(legacy.read_text())
            raise DataError("not a saved PCDMs pipeline (pipeline.yaml missing)", directory)
        try:
            cfg = yaml.safe_load(meta.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"corrupt pipeline.yaml: {e}", meta) from None
        if not isinstance(cfg, dict):
            raise DataError("corrupt pipeline.yaml: not a mapping", meta)
        check_pipeline_config(cfg, str(meta))
        return cfg

    @classmethod
    def from_stages(cls, folders: dict[str, str | Path], config: str | Path | dict | None = None) -> "PCDMsPipeline":
        """Assemble from separately trained stage folders (``OUT/final`` of ``pcdms-aug train``); sampling
        settings from ``config`` (a pipeline YAML or its dict; default ``tiny/pipeline.yaml``)."""
        if config is None or isinstance(config, (str, Path)):
            config = load_config(resolve_config_path(config or "tiny/pipeline.yaml"))
        cfg = copy.deepcopy(config)
        check_pipeline_config(cfg)
        cache: dict = {}
        unknown = sorted(set(folders) - set(ORDER))
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}")
        stages = {n: STAGES[n].from_pretrained(folders[n], cache=cache) for n in ORDER if n in folders}
        cfg["stages"] = {n: n for n in stages}
        return cls(stages, cfg)

    def save_pretrained(self, directory: str | Path, trainable_dtype=None) -> None:
        """``directory/{prior,inpaint,refine}/`` (see :meth:`Stage.save_pretrained`) and ``pipeline.yaml``.
        A frozen encoder two stages share is written once, by the first; the later one refers to that file."""
        import yaml

        from pcdms_aug.utils.io import atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shared: dict = {}
        for name, stage in self.stages.items():
            stage.save_pretrained(directory / name, trainable_dtype, shared)
        cfg = json.loads(json.dumps({**self.config, "stages": {n: n for n in self.stages}}, default=list))
        atomic_write_text(directory / "pipeline.yaml", "# PCDMs pipeline: stage folders and sampling defaults\n"
                          + yaml.safe_dump(cfg, sort_keys=False))

    def to(self, device=None, dtype=None) -> "PCDMsPipeline":
        for stage in self.stages.values():
            stage.to(device=device, dtype=dtype)
            stage.eval()
        return self

    @property
    def scheduler(self) -> str:
        """The sampler this pipeline uses unless a call names another."""
        return (self.config.get("sampling") or {}).get("scheduler") or DEFAULT_SCHEDULER

    @property
    def device(self) -> torch.device:
        return next(iter(self.stages.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.stages.values())).dtype

    # ---------------------------------------------------------------- inputs
    def _images_to_tensor(self, images) -> tuple[torch.Tensor, tuple[int, int]]:
        """Source images -> (N, 3, H, W) in [-1, 1] at ``image_size``, and their own (H, W)."""
        from PIL import Image

        if isinstance(images, torch.Tensor):
            x = images[None] if images.dim() == 3 else images
            if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
                raise ValueError(f"a source tensor must be float (B, 3, H, W) in [-1, 1], got {tuple(images.shape)} "
                                 f"{images.dtype}")
            if x.shape[0] == 0:
                raise ValueError("no source images given")
            if float(x.min()) < -1.001 or float(x.max()) > 1.001:
                raise ValueError("a source tensor must hold values in [-1, 1]")
            size = tuple(x.shape[-2:])
            self._check_size(size)
            x = x.float().cpu()
            if size != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False).clamp(-1, 1)
            return x, size
        imgs = [images] if isinstance(images, (Image.Image, np.ndarray)) else list(images)
        if not imgs:
            raise ValueError("no source images given")
        arrs = []
        for im in imgs:
            if isinstance(im, Image.Image):
                a = np.asarray(im.convert("RGB"))
            elif isinstance(im, np.ndarray):
                a = im
                if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                    raise ValueError(f"a source array must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
            else:
                raise ValueError(f"a source image must be a PIL image, a uint8 array or a tensor, got {type(im)}")
            arrs.append(a)
        sizes = sorted({a.shape[:2] for a in arrs})
        if len(sizes) != 1:
            raise ValueError(f"source images must share one size, got {sizes}")
        size = sizes[0]
        self._check_size(size)
        if size != self.image_size:
            # PIL bicubic, as the training data was resized (pcdms_aug.data.market.load_image).
            h, w = self.image_size
            arrs = [np.asarray(Image.fromarray(a).resize((w, h), Image.BICUBIC)) for a in arrs]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, size

    def _check_size(self, size) -> None:
        h, w = size
        exp_h, exp_w = self.image_size
        if h < 8 or w < 8 or abs(h / w - exp_h / exp_w) > 0.1 * exp_h / exp_w:
            raise ValueError(f"source images are {h}x{w} (height x width); this pipeline takes images with the "
                             f"aspect ratio of {exp_h}x{exp_w} (e.g. Market-1501's 128x64 crops)")

    @staticmethod
    def _poses(poses, size, what: str) -> list[Pose]:
        """Pose objects of images of ``size``: one Pose / (18, 2) array, or a sequence / (N, 18, 2) array."""
        if isinstance(poses, Pose) or (isinstance(poses, np.ndarray) and poses.ndim == 2):
            poses = [poses]
        elif isinstance(poses, torch.Tensor):
            poses = list(poses.detach().cpu().numpy()) if poses.dim() == 3 else [poses.detach().cpu().numpy()]
        out = []
        for p in poses:
            if not isinstance(p, Pose):
                arr = np.asarray(p, dtype=np.float32)
                if arr.shape != (NUM_JOINTS, 2):
                    raise ValueError(f"{what} must be Pose objects or ({NUM_JOINTS}, 2) arrays of (x, y) pixels, "
                                     f"got shape {arr.shape}")
                if not np.isfinite(arr).all():
                    raise ValueError(f"{what}: coordinates must be finite (-1 marks a missing joint)")
                p = arr
            out.append(as_pose(p, size))
        if not out:
            raise ValueError(f"no {what} given")
        return out

    @staticmethod
    def _unique(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Identical images (by content) are kept once: a source repeated for many targets is encoded once."""
        keys, first, index = {}, [], []
        for i in range(x.shape[0]):
            k = hashlib.sha1(x[i].numpy().tobytes()).hexdigest()
            if k not in keys:
                keys[k] = len(first)
                first.append(i)
            index.append(keys[k])
        return x[first], index

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def encode_sources(self, source_images, stages: Sequence[str] = ORDER) -> SourceEncoding:
        """Encode sources once (each stage's frozen encoders); pass the result as ``source_images``, after
        :meth:`SourceEncoding.select` if the pairs reuse sources."""
        x, size = self._images_to_tensor(source_images)
        x = x.to(self.device, self.dtype)
        feats = {n: self.stages[n].encode_source(x) for n in stages if n in self.stages}
        return SourceEncoding(feats, size, x.shape[0])

    @torch.no_grad()
    def __call__(self, source_images, source_poses, target_poses, num_inference_steps=None,
                 guidance_scale=None, generator=None, scheduler: str | None = None, stages=ORDER,
                 output_type: str = "pil", target_embeds: torch.Tensor | None = None,
                 batch_size: int | None = None, refine_strength: float | None = None,
                 refine_noise: float | None = None, output_size: str = "source") -> PCDMsOutput:
        """Generate the target of every (source, target pose) pair.

        ``source_images``: one source for every target pose, or one per pair (PIL, uint8 arrays, a tensor in
        [-1, 1], or a :class:`SourceEncoding`); ``source_poses``: one per source. ``num_inference_steps`` and
        ``guidance_scale``: a number or ``{stage: value}`` (defaults: the pipeline config's ``sampling``).
        ``generator``: one ``torch.Generator`` or one per pair; with one per pair a pair's images do not
        depend on the other pairs of the call. ``stages``: a subset of prior/inpaint/refine that includes
        inpaint; without prior pass ``target_embeds`` (e.g. CLIP of the true target: teacher forcing);
        without refine the final images are the coarse ones. ``output_type``: pil, np (uint8) or pt (float
        (N, 3, H, W) in [-1, 1] on the CPU). ``refine_strength`` (default: the config's
        ``sampling.refine_strength``, else 1 = upstream's start from noise): below 1, stage 3 starts from the
        coarse image noised part of the way and runs ``steps * strength`` steps (img2img). ``refine_noise``
        (default: ``sampling.refine_noise``, else 1): the scale of that noise; 0 starts stage 3 from the noised
        image's mean, so the final image is a deterministic function of the coarse one.
        """
        timings = {"encode": 0.0, **{n: 0.0 for n in ORDER}}
        t0 = time.perf_counter()  # "encode" counts preparing the sources (resizing them) as well
        call = self.check_inputs(source_images, source_poses, target_poses, num_inference_steps, guidance_scale,
                                 generator, scheduler, stages, output_type, target_embeds, batch_size,
                                 refine_strength, refine_noise, output_size)
        enc, source_row = self._encode(call)
        timings["encode"] = time.perf_counter() - t0
        finals, coarses, embeds = [], [], []
        n_pairs = len(call.target_poses)
        for lo in range(0, n_pairs, call.batch_size):
            final, coarse, emb = self._sample_pairs(call, enc, source_row, list(range(lo, min(lo + call.batch_size,
                                                                                               n_pairs))), timings)
            finals.append(self._resize(final, call.size if call.output_size == "source" else final.shape[-2:]))
            coarses.append(self._resize(coarse, call.size if call.output_size == "source" else coarse.shape[-2:]))
            if emb is not None:
                embeds.append(emb.float().cpu())
        return PCDMsOutput(self._output(torch.cat(finals), call.output_type),
                           self._output(torch.cat(coarses), call.output_type),
                           torch.cat(embeds) if embeds else None, timings)

    def check_inputs(self, source_images, source_poses, target_poses, num_inference_steps=None,
                     guidance_scale=None, generator=None, scheduler: str | None = None, stages=ORDER,
                     output_type: str = "pil", target_embeds: torch.Tensor | None = None,
                     batch_size: int | None = None, refine_strength: float | None = None,
                     refine_noise: float | None = None, output_size: str = "source") -> "CallInputs":
        """The arguments of :meth:`__call__` checked (a ValueError naming the first bad one) and normalised:
        defaults from the pipeline config filled in, sources as a tensor at ``image_size`` (or the given
        :class:`SourceEncoding`), poses as :class:`Pose` objects of the sources' size."""
        call = self._check_settings(stages, output_type, output_size, scheduler, num_inference_steps,
                                    guidance_scale, refine_strength, refine_noise)
        if isinstance(source_images, SourceEncoding):
            lacking = [n for n in call.stages if n not in source_images.features]
            if lacking:
                raise ValueError(f"the source encoding lacks stage(s) {', '.join(lacking)}")
            call.sources, call.size, n_src = source_images, source_images.size, source_images.count
        else:
            call.sources, call.size = self._images_to_tensor(source_images)
            n_src = call.sources.shape[0]
        self._check_pairs(call, n_src, source_poses, target_poses, generator, target_embeds)
        call.batch_size = int(batch_size or self.config.get("batch_size", 16))
        if call.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {call.batch_size}")
        return call

    def _check_settings(self, stages, output_type, output_size, scheduler, num_inference_steps, guidance_scale,
                        refine_strength, refine_noise) -> "CallInputs":
        """The sampling settings of a call (what does not depend on the pairs), defaults filled in."""
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        bad = [s for s in stages if s not in ORDER]
        if bad or "inpaint" not in stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct names among {ORDER} and include 'inpaint', got {stages}")
        missing = [s for s in stages if s not in self.stages]
        if missing:
            raise ValueError(f"stage(s) {', '.join(missing)} not loaded in this pipeline")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be pil, np or pt, got {output_type!r}")
        if output_size not in ("source", "working"):
            raise ValueError(f"output_size must be source or working, got {output_size!r}")
        samp = self.config.get("sampling") or {}
        sched = scheduler or self.scheduler
        if sched not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {sched!r}; use one of {', '.join(SCHEDULERS)}")
        steps = _per_stage(num_inference_steps, {n: (samp.get("steps") or {}).get(n, DEFAULT_STEPS) for n in ORDER},
                           "num_inference_steps", int)
        guide = _per_stage(guidance_scale, {n: (samp.get("guidance") or {}).get(n, DEFAULT_GUIDANCE[n])
                                            for n in ORDER}, "guidance_scale", float)
        strength = float(samp.get("refine_strength", 1.0) if refine_strength is None else refine_strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"refine_strength must be in (0, 1], got {strength}")
        init_noise = float(samp.get("refine_noise", 1.0) if refine_noise is None else refine_noise)
        if not 0.0 <= init_noise <= 1.0:
            raise ValueError(f"refine_noise must be in [0, 1], got {init_noise}")
        if strength >= 1.0:
            # The config's refine_noise belongs to its img2img start; a start from noise has no coarse image.
            if refine_noise is not None and init_noise != 1.0 and "refine" in stages:
                raise ValueError(f"refine_noise {init_noise} needs refine_strength < 1: from noise there is no "
                                 "coarse image to start from")
            init_noise = 1.0
        for n in stages:
            if steps[n] < 1:
                raise ValueError(f"num_inference_steps of {n} must be at least 1, got {steps[n]}")
            if guide[n] < 0:
                raise ValueError(f"guidance_scale of {n} must not be negative, got {guide[n]}")
        return CallInputs(stages, steps, guide, sched, strength, init_noise, output_type, output_size)

    def _check_pairs(self, call: "CallInputs", n_src: int, source_poses, target_poses, generator,
                     target_embeds) -> None:
        """Poses, generators and target embeddings against the number of sources and pairs, into ``call``."""
        call.source_poses = self._poses(source_poses, call.size, "source poses")
        call.target_poses = self._poses(target_poses, call.size, "target poses")
        if len(call.source_poses) != n_src:
            raise ValueError(f"got {len(call.source_poses)} source poses for {n_src} source images")
        n_pairs = len(call.target_poses)
        if n_src not in (1, n_pairs):
            raise ValueError(f"got {n_src} source images for {n_pairs} target poses (give one, or one per pair)")
        call.pair_source = [0] * n_pairs if n_src == 1 else list(range(n_pairs))
        if isinstance(generator, (list, tuple)) and len(generator) != n_pairs:
            raise ValueError(f"got {len(generator)} generators for {n_pairs} pairs")
        call.generator = generator
        if "prior" in call.stages:
            if target_embeds is not None:
                raise ValueError("target_embeds replace the prior: pass them with stages without 'prior'")
        elif target_embeds is None:
            if getattr(self.stages["inpaint"], "uses_target_embed", True):
                raise ValueError("without the prior stage, pass target_embeds (e.g. the target's true CLIP "
                                 "embedding)")
        else:
            target_embeds = torch.as_tensor(target_embeds)
            dim = self.stages["inpaint"].clip.dim
            if target_embeds.shape != (n_pairs, dim):
                raise ValueError(f"target_embeds must be ({n_pairs}, {dim}), got {tuple(target_embeds.shape)}")
        call.target_embeds = target_embeds

    def _encode(self, call: "CallInputs") -> tuple[SourceEncoding, list[int]]:
        """The sources' encoding and, for each source, its row in it (a repeated image is encoded once)."""
        if isinstance(call.sources, SourceEncoding):
            return call.sources, list(range(call.sources.count))
        x, source_row = self._unique(call.sources)
        x = x.to(self.device, self.dtype)
        return SourceEncoding({n: self.stages[n].encode_source(x) for n in call.stages}, call.size,
                              x.shape[0]), source_row

    def _sample_pairs(self, call: "CallInputs", enc: SourceEncoding, source_row: list[int], idx: list[int],
                      timings: dict) -> tuple:
        """Pairs ``idx`` through the stages: (final, coarse, the embeddings stage 2 read or None)."""
        dev, dt, stages = self.device, self.dtype, call.stages
        src = [call.pair_source[i] for i in idx]
        rows = torch.tensor([source_row[s] for s in src], device=dev)
        gen = [call.generator[i] for i in idx] if isinstance(call.generator, (list, tuple)) else call.generator
        feats = {n: {k: v[rows] for k, v in enc.features[n].items()} for n in stages}
        sp = [call.source_poses[s] for s in src]
        tp = [call.target_poses[i] for i in idx]
        if "prior" in stages:
            t0 = time.perf_counter()
            emb = self.stages["prior"].sample(feats["prior"], self._vectors(sp, dev, dt), self._vectors(tp, dev, dt),
                                              gen, call.steps["prior"], call.guidance["prior"], call.scheduler)
            timings["prior"] += time.perf_counter() - t0
        elif call.target_embeds is not None:
            emb = call.target_embeds[idx].to(dev, dt)
        else:  # an inpainting stage that reads no embedding (the released official stage 2)
            emb = None
        t0 = time.perf_counter()
        coarse = self.stages["inpaint"].sample(feats["inpaint"], self._pose_images(sp, dev, dt),
                                               self._pose_images(tp, dev, dt), emb, gen, call.steps["inpaint"],
                                               call.guidance["inpaint"], call.scheduler)
        timings["inpaint"] += time.perf_counter() - t0
        final = coarse
        if "refine" in stages:
            t0 = time.perf_counter()
            final = self.stages["refine"].sample(feats["refine"], coarse, gen, call.steps["refine"],
                                                 call.guidance["refine"], call.scheduler,
                                                 strength=call.refine_strength, noise=call.refine_noise)
            timings["refine"] += time.perf_counter() - t0
        return final, coarse, emb

    @staticmethod
    def _vectors(poses: list[Pose], device, dtype) -> torch.Tensor:
        return torch.from_numpy(np.stack([p.vector() for p in poses])).to(device, dtype)

    def _pose_images(self, poses: list[Pose], device, dtype) -> torch.Tensor:
        arr = np.stack([render_pose(p, self.image_size) for p in poses])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device, dtype) / 255.0

    @staticmethod
    def _resize(images: torch.Tensor, size) -> torch.Tensor:
        images = images.float().cpu()
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False)
        return images.clamp(-1, 1)

    @staticmethod
    def _output(images: torch.Tensor, output_type: str):
        from PIL import Image

        if output_type == "pt":
            return images
        arr = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        return [Image.fromarray(a) for a in arr]
