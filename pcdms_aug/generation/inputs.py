"""What a generation run reads: the dataset, its pose annotations and split, the sources, and the fingerprints
of the weights and input files that the settings record."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcdms_aug.data.layouts import is_identity, open_dataset
from pcdms_aug.data.market import image_sizes
from pcdms_aug.data.pose import read_annotation_files
from pcdms_aug.data.splits import load_split
from pcdms_aug.generation.config import GenerateConfig
from pcdms_aug.utils.io import file_sha256
from pcdms_aug.generation.plan import collect_sources
from pcdms_aug.utils.errors import DataError


def _short(h) -> str:
    return h.hexdigest()[:12]


def weights_fingerprint(weights: str, pipe=None) -> str:
    """sha256 (12 hex digits) of the weights files; of the initial tensors for a pipeline YAML (random weights)."""
    from pcdms_aug.pipelines.weights_path import check_weights_spec, is_config_spec

    spec = str(weights)
    h = hashlib.sha256()
    if is_config_spec(spec):
        if pipe is None:
            from pcdms_aug.pipelines.pipeline import PCDMsPipeline
            pipe = PCDMsPipeline.load(spec, "cpu", "fp32")
        for name in sorted(pipe.stages):
            for key, t in sorted(pipe.stages[name].state_dict().items()):
                h.update(f"{name}.{key}".encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return "init-" + _short(h)
    folder = check_weights_spec(spec)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError("weights folder is empty", folder)
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(file_sha256(p).encode())
    return _short(h)


def _content_sha(path: Path) -> str:
    return file_sha256(path)[:12]


# The training annotations looked for beside a dataset: Market-1501's file, and synth-market --layout's.
DEFAULT_ANNOTATIONS = ("market-annotation-train.csv", "annotation-train.csv")


def annotation_files(cfg: GenerateConfig, root: Path) -> list[Path]:
    given = cfg.annotations
    if given:
        files = [Path(given)] if isinstance(given, (str, Path)) else [Path(p) for p in given]
    else:
        files = [p / name for name in DEFAULT_ANNOTATIONS for p in (root, root.parent)]
        files = [p for p in files if p.is_file()][:1]
        if not files:
            raise DataError(f"no {' or '.join(DEFAULT_ANNOTATIONS)} beside the dataset folder; pass --annotations "
                            "CSV (pcdms-aug annotate writes one)", root)
    for p in files:
        if not p.is_file():
            raise DataError("annotation file not found", p)
    return files


@dataclass
class Inputs:
    dataset: Any  # layouts.ReidDataset
    sources: Any  # plan.SourceSet
    real_by_pid: dict  # pid -> paths of its real training images (of the split): the filter's references
    settings: dict
    weights_fp: str


def load_inputs(cfg: GenerateConfig, pipe=None) -> Inputs:
    from pcdms_aug.utils.runtime import pick_device, pick_dtype

    dataset = open_dataset(cfg.dataset, cfg.layout)
    ann = annotation_files(cfg, dataset.root)
    poses = read_annotation_files(ann, image_sizes(dataset.train))  # each in its own image's pixels
    split_names = list(load_split(cfg.split).files) if cfg.split else None
    source_set = collect_sources(dataset, poses, split_names, cfg.require_torso, cfg.split)
    wanted = None if split_names is None else set(split_names)
    real_by_pid: dict[int, list[Path]] = {}
    for it in dataset.train:
        if is_identity(dataset, it) and (wanted is None or it.filename in wanted):
            real_by_pid.setdefault(it.pid, []).append(it.path)
    weights_fp = weights_fingerprint(cfg.weights, pipe)
    dtype = str(pick_dtype(cfg.dtype, pick_device(cfg.device))).replace("torch.", "")
    settings = {
        "dataset": str(dataset.root.resolve()),
        "annotations": [f"{p.resolve()}@{_content_sha(p)}" for p in ann],
        "split": None if not cfg.split else f"{Path(cfg.split).resolve()}@{_content_sha(Path(cfg.split))}",
        "weights": weights_fp, "views": int(cfg.views), "per": cfg.per, "policy": cfg.policy,
        "batch": int(cfg.batch), "steps": cfg.steps, "guidance": cfg.guidance, "scheduler": cfg.scheduler,
        "stages": list(cfg.stages), "seed": int(cfg.seed), "dtype": dtype,
        "canonical_poses": int(cfg.canonical_poses), "coverage_candidates": int(cfg.coverage_candidates),
        "require_torso": bool(cfg.require_torso), "image_format": cfg.image_format,
        "jpeg_quality": int(cfg.jpeg_quality) if cfg.image_format == "jpg" else None,
    }
    if cfg.layout:
        settings["layout"] = cfg.layout
    return Inputs(dataset, source_set, real_by_pid, json.loads(json.dumps(settings)), weights_fp)
