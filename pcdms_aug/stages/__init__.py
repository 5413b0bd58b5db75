"""Room ``stages``: the three PCDMs stages, each the same parts (components, ``training_loss``, ``sample``,
``save_pretrained`` / ``from_pretrained``; ``base``): the prior (``prior``), inpainting (``inpaint``) and
refining (``refine``), with the diffusion loss, condition drops, noise schedule and samplers they share
(``diffusion``). ``pipelines/pipeline_config.py`` is the only place that knows their order.

May import ``utils``, ``config``, ``data``, ``testing`` and ``models``.
"""
from __future__ import annotations

from pcdms_aug.stages.base import Stage
from pcdms_aug.stages.inpaint import InpaintStage
from pcdms_aug.stages.prior import PriorStage
from pcdms_aug.stages.refine import RefineStage

STAGES = {"prior": PriorStage, "inpaint": InpaintStage, "refine": RefineStage}


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}")
    return STAGES[name]


def build_stage(name: str, cfg: dict, seed: int = 0) -> Stage:
    return stage_class(name).from_config(cfg, seed=seed)
