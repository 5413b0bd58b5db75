"""PCDMsPipeline: prior -> inpaint -> refine. The only place that knows the order of the stages."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import load_config, resolve_config_path
from .diffusion import SCHEDULERS
from .errors import DataError
from .pose import Pose, as_pose, render_pose
from .stages import STAGES, Stage, stage_class

ORDER = ("prior", "inpaint", "refine")
WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"


@dataclass
class PCDMsOutput:
    images: list  # final images (PIL by default) at the source's size
    coarse_images: list  # stage-2 images, same format
    target_embeds: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)


def _per_stage(value, name, default):
    if isinstance(value, dict):
        return value.get(name, default)
    return default if value is None else value


class PCDMsPipeline:
    def __init__(self, stages: dict[str, Stage], config: dict):
        self.stages = stages
        for stage in stages.values():
            stage.eval()  # inference object: no dropout, and the same kernels before and after a reload
        self.config = config
        self.image_size = tuple(config.get("image_size", (128, 64)))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, path: str | Path, seed: int = 0, overrides: Sequence[str] = ()) -> "PCDMsPipeline":
        """Random weights from a pipeline YAML (stage i is seeded with seed + i)."""
        path = resolve_config_path(path)
        cfg = load_config(path, overrides)
        stages = {}
        for i, name in enumerate(ORDER):
            spec = cfg["stages"].get(name)
            if spec is None:
                continue
            stage_cfg = load_config(path.parent / spec) if isinstance(spec, str) else spec
            stages[name] = stage_class(name).from_config(stage_cfg, seed=seed + i)
        cfg["stages"] = {n: n for n in stages}
        return cls(stages, cfg)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PCDMsPipeline":
        """A folder written by :meth:`save_pretrained`; ``"tiny"`` is the shipped tiny weights."""
        if str(directory) == "tiny":
            directory = WEIGHTS_ROOT / "tiny"
            if not (directory / "pipeline.json").is_file():
                raise DataError("the shipped tiny weights are missing from this installation "
                                "(scripts/train_tiny.sh makes them)", directory)
        directory = Path(directory)
        meta = directory / "pipeline.json"
        if not meta.is_file():
            raise DataError("not a saved PCDMs pipeline (pipeline.json missing)", directory)
        import json
        cfg = json.loads(meta.read_text())
        stages = {n: STAGES[n].from_pretrained(directory / n) for n in ORDER if (directory / n).is_dir()}
        missing = [n for n in cfg.get("stages", {}) if n not in stages]
        if missing:
            raise DataError(f"stage folder(s) {', '.join(missing)} missing", directory)
        return cls(stages, cfg)

    @classmethod
    def from_stages(cls, folders: dict[str, str | Path], config: dict | None = None) -> "PCDMsPipeline":
        """Assemble from separately trained stage folders (``OUT/final`` of ``pcdms-aug train``)."""
        cfg = copy.deepcopy(config or load_config(resolve_config_path("tiny/pipeline.yaml")))
        stages = {n: STAGES[n].from_pretrained(folders[n]) for n in ORDER if n in folders}
        cfg["stages"] = {n: n for n in stages}
        return cls(stages, cfg)

    def save_pretrained(self, directory: str | Path) -> None:
        import json
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, stage in self.stages.items():
            stage.save_pretrained(directory / name)
        (directory / "pipeline.json").write_text(json.dumps(self.config, indent=2, default=list))

    def to(self, device=None, dtype=None) -> "PCDMsPipeline":
        for stage in self.stages.values():
            stage.to(device=device, dtype=dtype)
            stage.eval()
        return self

    @property
    def device(self):
        return next(iter(self.stages.values())).device

    @property
    def dtype(self):
        return next(iter(self.stages.values())).dtype

    # ---------------------------------------------------------------- inputs
    def _images_to_tensor(self, images) -> tuple[torch.Tensor, tuple[int, int]]:
        from PIL import Image

        if isinstance(images, torch.Tensor):
            x = images if images.dim() == 4 else images[None]
            if x.shape[1] != 3:
                raise ValueError(f"source tensor must be (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
            return x, tuple(x.shape[-2:])
        imgs = [images] if isinstance(images, (Image.Image, np.ndarray)) else list(images)
        if not imgs:
            raise ValueError("no source images given")
        arrs = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in imgs]
        sizes = {a.shape for a in arrs}
        if len(sizes) != 1:
            raise ValueError(f"source images must share one size, got {sorted(s[:2] for s in sizes)}")
        shape = arrs[0].shape
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"source images must be RGB (H, W, 3), got {shape}")
        h, w = shape[:2]
        exp_h, exp_w = self.image_size
        if abs(h / w - exp_h / exp_w) > 0.1 * exp_h / exp_w:
            raise ValueError(f"source images are {h}x{w}; the model expects the aspect ratio of "
                             f"{exp_h}x{exp_w} (height x width)")
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, (h, w)

    def _poses(self, poses, count: int, size, what: str) -> list[Pose]:
        if isinstance(poses, (Pose, np.ndarray)) and not (isinstance(poses, np.ndarray) and poses.ndim == 3):
            poses = [poses]
        out = []
        for p in poses:
            if not isinstance(p, Pose):
                arr = np.asarray(p, dtype=np.float32)
                if arr.shape != (18, 2):
                    raise ValueError(f"{what} must be (18, 2) arrays of (x, y) pixels, got shape {arr.shape}")
            out.append(as_pose(p, size))
        if len(out) != count:
            raise ValueError(f"got {len(out)} {what} for {count} pairs")
        return out

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def __call__(self, source_images, source_poses, target_poses, num_inference_steps=None,
                 guidance_scale=None, generator=None, scheduler=None, stages=ORDER, output_type="pil",
                 target_embeds: torch.Tensor | None = None, batch_size: int | None = None) -> PCDMsOutput:
        """Generate the target of every (source, target pose) pair.

        ``source_images``: one image (used for every target pose) or one per pair; PIL, uint8 arrays or a
        (B, 3, H, W) tensor in [-1, 1]. Poses: :class:`Pose` or (18, 2) (x, y) pixel arrays of the source's size,
        -1 for a missing joint. Steps and guidance: a number or ``{stage: value}``. ``generator``: one
        ``torch.Generator`` or one per pair (then a pair's image does not depend on its batch).
        """
        import time

        stages = tuple(stages)
        bad = [s for s in stages if s not in ORDER]
        if bad or "inpaint" not in stages:
            raise ValueError(f"stages must include 'inpaint' and be among {ORDER}, got {stages}")
        for s in stages:
            if s not in self.stages:
                raise ValueError(f"stage {s!r} is not loaded in this pipeline")
        samp = self.config.get("sampling", {})
        sched = scheduler or samp.get("scheduler", "unipc")
        if sched not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {sched!r}; use one of {', '.join(SCHEDULERS)}")
        steps = {n: int(_per_stage(num_inference_steps, n, samp.get("steps", {}).get(n, 20))) for n in ORDER}
        guide = {n: float(_per_stage(guidance_scale, n, samp.get("guidance", {}).get(n, 1.0))) for n in ORDER}

        src, size = self._images_to_tensor(source_images)
        n_pairs = len(target_poses) if not isinstance(target_poses, (Pose,)) and not (
            isinstance(target_poses, np.ndarray) and target_poses.ndim == 2) else 1
        if src.shape[0] not in (1, n_pairs):
            raise ValueError(f"got {src.shape[0]} source images for {n_pairs} target poses")
        src_index = [0] * n_pairs if src.shape[0] == 1 else list(range(n_pairs))
        src_poses = self._poses(source_poses, src.shape[0], size, "source poses")  # one per source image
        sp = [src_poses[j] for j in src_index]
        tp = self._poses(target_poses, n_pairs, size, "target poses")
        if isinstance(generator, (list, tuple)) and len(generator) != n_pairs:
            raise ValueError(f"got {len(generator)} generators for {n_pairs} pairs")
        if target_embeds is not None and len(target_embeds) != n_pairs:
            raise ValueError(f"got {len(target_embeds)} target embeddings for {n_pairs} pairs")
        if "prior" not in stages and target_embeds is None:
            raise ValueError("without the prior stage, pass target_embeds (e.g. the target's true embedding)")

        dev, dt = self.device, self.dtype
        src = src.to(dev, dt)
        # Each distinct source is encoded once, however many target poses it has.
        timings = {n: 0.0 for n in ORDER}
        t0 = time.perf_counter()
        enc = {n: self.stages[n].encode_source(src) for n in stages}
        timings["encode"] = time.perf_counter() - t0
        bs = int(batch_size or self.config.get("batch_size", 16))
        finals, coarses, embeds = [], [], []
        for lo in range(0, n_pairs, bs):
            idx = list(range(lo, min(lo + bs, n_pairs)))
            sidx = torch.tensor([src_index[i] for i in idx], device=dev)
            gen = [generator[i] for i in idx] if isinstance(generator, (list, tuple)) else generator
            e_src = {n: {k: v[sidx] for k, v in enc[n].items()} for n in stages}
            sp_vec = torch.from_numpy(np.stack([sp[i].vector() for i in idx])).to(dev, dt)
            tp_vec = torch.from_numpy(np.stack([tp[i].vector() for i in idx])).to(dev, dt)
            if "prior" in stages:
                t0 = time.perf_counter()
                emb = self.stages["prior"].sample(e_src["prior"], sp_vec, tp_vec, gen, steps["prior"],
                                                  guide["prior"], sched)
                timings["prior"] += time.perf_counter() - t0
            else:
                emb = target_embeds[idx[0]: idx[-1] + 1].to(dev, dt)
            inp = self.stages["inpaint"]
            t0 = time.perf_counter()
            sp_img = self._pose_tensor([sp[i] for i in idx], inp.image_size, dev, dt)
            tp_img = self._pose_tensor([tp[i] for i in idx], inp.image_size, dev, dt)
            coarse = inp.sample(e_src["inpaint"], sp_img, tp_img, emb, gen, steps["inpaint"], guide["inpaint"],
                                sched)
            timings["inpaint"] += time.perf_counter() - t0
            final = coarse
            if "refine" in stages:
                t0 = time.perf_counter()
                final = self.stages["refine"].sample(e_src["refine"], coarse, gen, steps["refine"],
                                                     guide["refine"], sched)
                timings["refine"] += time.perf_counter() - t0
            finals.append(final.float())
            coarses.append(coarse.float())
            embeds.append(emb.float())
        final = torch.cat(finals)
        coarse = torch.cat(coarses)
        return PCDMsOutput(self._output(final, size, output_type), self._output(coarse, size, output_type),
                           torch.cat(embeds), timings)

    @staticmethod
    def _pose_tensor(poses: list[Pose], size, device, dtype) -> torch.Tensor:
        arr = np.stack([render_pose(p, tuple(size)) for p in poses])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device, dtype) / 255.0

    @staticmethod
    def _output(images: torch.Tensor, size, output_type: str):
        import torch.nn.functional as F
        from PIL import Image

        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
        if output_type == "pt":
            return images
        arr = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return arr
        if output_type != "pil":
            raise ValueError(f"output_type must be pil, np or pt, got {output_type!r}")
        return [Image.fromarray(a) for a in arr]
