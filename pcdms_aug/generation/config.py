"""`pcdms-aug generate` settings: the options of a generation run and their checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcdms_aug.generation.identity_filter import FilterConfig
from pcdms_aug.generation.plan import PER, POLICIES
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.runtime import DEFAULT_DTYPE

IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}


@dataclass
class GenerateConfig:
    dataset: str | None = None  # a re-ID dataset folder in any layouts.LAYOUTS (or torchreid's root above it)
    layout: str | None = None  # the dataset's layout; None: detected
    annotations: Any = None  # annotation CSV(s); default (market-)annotation-train.csv beside the dataset folder
    weights: str | None = None  # folder written by save_pretrained, "tiny", or a pipeline YAML (random weights)
    out: str | None = None
    views: int = 4  # per source image (per="image") or per identity (per="identity")
    per: str = "image"
    policy: str = "random"  # random | canonical | coverage
    split: str | None = None  # low-data subset (data.splits JSON): its images are the sources and the pose pool
    batch: int = 8  # views per forward pass (fixed groups of the plan; part of the settings)
    steps: Any = None  # a number or {prior: n, inpaint: n, refine: n}; None: the pipeline's own
    guidance: Any = None  # a number or per stage; None: the pipeline's own defaults
    scheduler: str | None = None  # None: the pipeline's own
    stages: tuple = ("prior", "inpaint", "refine")
    seed: int = 0
    device: str = "auto"
    dtype: str = DEFAULT_DTYPE  # a name of utils.runtime.DTYPE_CHOICES; part of the settings
    canonical_poses: int = 8  # k of the canonical policy (PN-GAN used 8)
    coverage_candidates: int = 32  # k-means candidates the coverage policy picks from
    require_torso: bool = True  # skip sources whose annotation lacks a shoulder or hip (as the training pairs)
    image_format: str = "jpg"  # jpg (as Market-1501) | png
    jpeg_quality: int = 95
    overwrite: bool = False
    filter: FilterConfig = field(default_factory=FilterConfig)

    def check(self) -> None:
        for key in ("dataset", "weights", "out"):
            if not getattr(self, key):
                raise DataError(f"--{key} is required (or {key}: in --config)")
        if self.policy not in POLICIES:
            raise DataError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.per not in PER:
            raise DataError(f"--per must be one of {', '.join(PER)}, got {self.per!r}")
        for key in ("views", "batch", "canonical_poses", "coverage_candidates"):
            if int(getattr(self, key)) < 1:
                raise DataError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.image_format not in IMAGE_FORMATS:
            raise DataError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")
        from pcdms_aug.pipelines.pipeline_config import ORDER
        from pcdms_aug.utils.runtime import DTYPE_CHOICES

        _check_per_stage(self.steps, "steps", integer=True)
        _check_per_stage(self.guidance, "guidance", integer=False)
        if self.dtype not in DTYPE_CHOICES:
            raise DataError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}")
        if not self.stages or any(s not in ORDER for s in self.stages) or len(set(self.stages)) != len(self.stages):
            raise DataError(f"stages must be distinct names of {', '.join(ORDER)}, got {list(self.stages)}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise DataError(f"jpeg_quality must be 1..100, got {self.jpeg_quality}")
        self.filter.check()
        if self.filter.model not in (None, "train") and not Path(self.filter.model).is_file():
            raise DataError("filter model not found (a torchreid checkpoint file, or 'train')", self.filter.model)
        from pcdms_aug.utils.paths import check_out_dir

        check_out_dir(self.out, not_inside={"the dataset": self.dataset})


def _check_per_stage(value, what: str, integer: bool) -> None:
    """None (the pipeline's own), one number, or {stage: number}: steps integers >= 1, guidance finite >= 0."""
    import math

    from pcdms_aug.pipelines.pipeline_config import ORDER

    if value is None:
        return
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for stage, v in items:
        key = what if stage is None else f"{what}.{stage}"
        if stage is not None and stage not in ORDER:
            raise DataError(f"{key}: unknown stage {stage!r}; use {', '.join(ORDER)}")
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if integer and not (number and float(v).is_integer() and v >= 1):
            raise DataError(f"{key} must be an integer >= 1 (or one per stage), got {v!r}")
        if not integer and not (number and v >= 0):
            raise DataError(f"{key} must be a finite number >= 0 (or one per stage), got {v!r}")
