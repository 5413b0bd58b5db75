"""`pcdms-aug generate` settings: the options of a generation run, each declared once (its YAML key, its flag
and its help, see :mod:`pcdms_aug.config.options`), and their checks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcdms_aug.config.options import later, option
from pcdms_aug.data.layouts import LAYOUTS
from pcdms_aug.generation.identity_filter import FilterConfig
from pcdms_aug.generation.plan import PER, POLICIES
from pcdms_aug.generation.names import MAX_VIEWS_PER_SOURCE
from pcdms_aug.generation.plan import MAX_POSES
from pcdms_aug.utils.argtypes import batch_int, choice_list, finite_float, int_in, seed_int, steps_int
from pcdms_aug.utils.errors import DataError, shown
from pcdms_aug.utils.runtime import DEFAULT_DTYPE, DTYPE_CHOICES

IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}


def _stage_list():
    from pcdms_aug.pipelines.pipeline_config import ORDER

    return choice_list(ORDER)


def _samplers():
    from pcdms_aug.config.schema import SAMPLERS

    return SAMPLERS


@dataclass
class GenerateConfig:
    """A generation run. Flags replace the keys of ``--config`` YAML; a key neither sets keeps the default here."""

    dataset: str | None = option(help="re-ID dataset folder (Market-1501, DukeMTMC-reID, MSMT17, CUHK03 or "
                                      "train/query/gallery/<identity>/ folders), or torchreid's root above it")
    layout: str | None = option(choices=LAYOUTS + ("cuhk03-labeled",), help="the dataset's layout (default: detected)")
    annotations: str | list[str] | None = option(help="annotation CSV(s) (default: market-annotation-train.csv or annotation-train.csv "
                                   "beside the dataset folder; pcdms-aug annotate writes one for any dataset)",
                              nargs="+", action="extend")
    weights: str | None = option(help="folder written by save_pretrained, 'tiny' (shipped), or a pipeline YAML "
                                      "(random weights)")
    out: str | None = option(help="output folder: images, manifest.csv, plan.csv, generate.json, shards/")
    views: int = option(4, type=int_in(1, MAX_VIEWS_PER_SOURCE),
                        help="views per source image (--per image) or per identity (--per identity)")
    per: str = option("image", choices=PER)
    policy: str = option("random", choices=POLICIES,
                         help="target poses: random (the paper: poses of the training split), canonical (k-means, "
                              "as PN-GAN), coverage (far from the identity's own)")
    split: str | None = option(help="low-data subset JSON (pcdms_aug.data.splits): its images are the sources and "
                                    "the random pose pool")
    batch: int = option(8, type=batch_int,
                        help="views per forward pass (part of the settings: fixes which views share one)")
    # YAML also takes {prior: n, inpaint: n, refine: n}; None: the pipeline's own
    steps: Any = option(type=steps_int, help="sampling steps of every stage")
    guidance: Any = option(type=finite_float(0.0),
                           help="classifier-free guidance of every stage (default: the pipeline's)")
    scheduler: str | None = option(choices=later(_samplers))  # None: the pipeline's own
    seed: int = option(0, type=seed_int)
    device: str = option("auto", help="auto | cpu | cuda")
    dtype: str = option(DEFAULT_DTYPE, choices=DTYPE_CHOICES, help=" | ".join(DTYPE_CHOICES))  # part of the settings
    stages: tuple = option(("prior", "inpaint", "refine"), type=later(_stage_list),
                           help="comma list (default all three; without refine the stage-2 image is the view)")
    image_format: str = option("jpg", flag="--format", choices=sorted(IMAGE_FORMATS))  # jpg: as Market-1501
    canonical_poses: int = option(8, type=int_in(1, MAX_POSES), help="k of the canonical policy (default 8)")
    coverage_candidates: int = 32  # k-means candidates the coverage policy picks from
    require_torso: bool = True  # skip sources whose annotation lacks a shoulder or hip (as the training pairs)
    jpeg_quality: int = 95
    overwrite: bool = option(False, action="store_true",
                             help="replace a run with other settings (or a foreign manifest) in --out")
    filter: FilterConfig = option(default_factory=FilterConfig)

    def check(self) -> None:
        for key in ("dataset", "weights", "out"):
            if not getattr(self, key):
                raise DataError(f"--{key} is required (or {key}: in --config)")
        if self.policy not in POLICIES:
            raise DataError(f"--policy must be one of {', '.join(POLICIES)}, got {shown(self.policy)}")
        if self.per not in PER:
            raise DataError(f"--per must be one of {', '.join(PER)}, got {shown(self.per)}")
        from pcdms_aug.config.loading import check_ranges
        from pcdms_aug.generation.names import MAX_VIEWS_PER_SOURCE
        from pcdms_aug.generation.plan import MAX_POSES
        from pcdms_aug.utils.argtypes import MAX_BATCH, MAX_SEED

        check_ranges(self, {"views": (1, MAX_VIEWS_PER_SOURCE), "batch": (1, MAX_BATCH), "seed": (0, MAX_SEED),
                            "canonical_poses": (1, MAX_POSES), "coverage_candidates": (1, MAX_POSES),
                            "jpeg_quality": (1, 100)}, "generate config")
        if self.image_format not in IMAGE_FORMATS:
            raise DataError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {shown(self.image_format)}")
        from pcdms_aug.pipelines.pipeline_config import ORDER

        _check_per_stage(self.steps, "steps", integer=True)
        _check_per_stage(self.guidance, "guidance", integer=False)
        if self.dtype not in DTYPE_CHOICES:
            raise DataError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {shown(self.dtype)}")
        if not self.stages or any(s not in ORDER for s in self.stages) or len(set(self.stages)) != len(self.stages):
            raise DataError(f"stages must be distinct names of {', '.join(ORDER)}, got {shown(list(self.stages))}")
        self.filter.check()
        if self.filter.model not in (None, "train") and not Path(self.filter.model).is_file():
            raise DataError("filter model not found (a torchreid checkpoint file, or 'train')", self.filter.model)
        from pcdms_aug.generation.outputs import PROTOCOL
        from pcdms_aug.generation.run_folder import owns
        from pcdms_aug.utils.paths import check_out_dir

        check_out_dir(self.out, inputs=[("the dataset", self.dataset), ("the annotations", self.annotations),
                                        ("the split", self.split), ("the weights", self.weights),
                                        ("the filter model", self.filter.model)],
                      command="generate", own=owns(PROTOCOL))


def _check_per_stage(value, what: str, integer: bool) -> None:
    """None (the pipeline's own), one number, or {stage: number}: steps integers >= 1, guidance finite >= 0."""
    import math

    from pcdms_aug.pipelines.pipeline_config import ORDER
    from pcdms_aug.utils.argtypes import MAX_STEPS

    if value is None:
        return
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for stage, v in items:
        key = what if stage is None else f"{what}.{stage}"
        if stage is not None and stage not in ORDER:
            raise DataError(f"{key}: unknown stage {shown(stage)}; use {', '.join(ORDER)}")
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))
        if integer and not (number and 1 <= v <= MAX_STEPS and float(v).is_integer()):
            raise DataError(f"{key} must be an integer in 1..{MAX_STEPS} (or one per stage), got {shown(v)}")
        if not integer and not (number and v >= 0):
            raise DataError(f"{key} must be a finite number >= 0 (or one per stage), got {shown(v)}")
