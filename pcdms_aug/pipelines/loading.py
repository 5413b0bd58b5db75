"""Pipeline folders and configs read and written: which stages, from which files, with which settings.

A pipeline folder (``save_pretrained``): ``pipeline.yaml`` (stages and sampling defaults, see
:mod:`pcdms_aug.pipelines.pipeline_config`) and one folder per stage (:meth:`Stage.save_pretrained`); a frozen
encoder two stages share is written once, the later stage holding ``<component>.ref.json``. These functions
return ``(stages, config)``; :class:`~pcdms_aug.pipelines.pipeline.PCDMsPipeline` builds itself from them.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from pcdms_aug.config.loading import load_config, resolve_config_path
from pcdms_aug.config.schema import check_stage_sizes
from pcdms_aug.pipelines.pipeline_config import ORDER, check_pipeline_config
from pcdms_aug.pipelines.weights_path import resolve_weights
from pcdms_aug.stages import STAGES, Stage, stage_class
from pcdms_aug.utils.errors import DataError

def stage_folder(source: str | Path, name: str) -> Path:
    """The folder of one stage: ``source`` is a stage folder (``OUT/final`` of ``pcdms-aug train``) or a pipeline
    folder (``"tiny"`` too) whose ``<name>/`` holds it."""
    folder = resolve_weights(source)
    if (folder / name / "config.json").is_file():
        return folder / name
    return folder


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


def stages_from_config(path: str | Path, seed: int = 0, overrides=()) -> tuple[dict[str, Stage], dict]:
    """Random trainable weights from a pipeline YAML (stage i is seeded with seed + i); frozen parts as the
    stage configs say (random tiny encoders, or local pretrained folders)."""
    path = resolve_config_path(path)
    cfg = load_config(path, overrides)
    check_pipeline_config(cfg, str(path))
    cache: dict = {}
    stages = {name: stage_class(name).from_config(scfg, seed=seed + ORDER.index(name), cache=cache)
              for name, scfg in _stage_configs(cfg, path.parent).items()}
    cfg["stages"] = {n: n for n in stages}
    return stages, cfg


def read_pipeline_yaml(directory: Path) -> dict:
    """The checked ``pipeline.yaml`` of a pipeline folder (or its JSON form, ``pipeline.json``, same keys)."""
    from pcdms_aug.config.loading import parse_yaml, read_config_text

    meta = directory / "pipeline.yaml"
    if not meta.is_file() and (directory / "pipeline.json").is_file():
        meta = directory / "pipeline.json"
    if not meta.is_file():
        raise DataError("not a saved PCDMs pipeline (pipeline.yaml missing)", directory)
    # JSON is YAML; read with the bounds of every config (aliases, nesting, size)
    cfg = parse_yaml(read_config_text(meta, what=f"corrupt {meta.name}: "), meta)
    if not isinstance(cfg, dict):
        raise DataError(f"corrupt {meta.name}: not a mapping", meta)
    check_pipeline_config(cfg, str(meta))
    return cfg


def stages_from_folder(directory: str | Path) -> tuple[dict[str, Stage], dict]:
    """A folder written by :func:`save_folder`; ``"tiny"`` is the shipped tiny weights."""
    directory = resolve_weights(directory)
    if not directory.is_dir():
        raise DataError("pipeline folder not found", directory)
    cfg = read_pipeline_yaml(directory)
    cache: dict = {}
    names = [n for n in ORDER if n in (cfg.get("stages") or {})]
    if not names:
        raise DataError("pipeline.yaml names no stage", directory / "pipeline.yaml")
    for n in names:  # every stage's sizes first (nothing built, no library imported), then each folder whole
        if not (directory / n).is_dir():
            raise DataError(f"stage folder {n}/ missing", directory)
        check_stage_sizes(STAGES[n].read_config(directory / n), str(directory / n / "config.json"))
    for n in names:  # every stage folder checked (config, shapes) before any is loaded
        STAGES[n].check_folder(directory / n)
    stages = {n: STAGES[n].from_pretrained(directory / n, cache=cache) for n in names}
    return stages, cfg


def stages_from_stage_folders(folders: dict, config=None) -> tuple[dict[str, Stage], dict]:
    """Separately trained stage folders (``OUT/final`` of ``pcdms-aug train``); sampling settings from
    ``config`` (a pipeline YAML or its dict; default ``tiny/pipeline.yaml``)."""
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
    return stages, cfg


def save_folder(directory: str | Path, stages: dict[str, Stage], config: dict, trainable_dtype=None) -> None:
    """``directory/{prior,inpaint,refine}/`` (see :meth:`Stage.save_pretrained`) and ``pipeline.yaml``.
    A frozen encoder two stages share is written once, by the first; the later one refers to that file."""
    import yaml

    from pcdms_aug.utils.io import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shared: dict = {}
    for name, stage in stages.items():
        stage.save_pretrained(directory / name, trainable_dtype, shared)
    cfg = json.loads(json.dumps({**config, "stages": {n: n for n in stages}}, default=list))
    atomic_write_text(directory / "pipeline.yaml", "# PCDMs pipeline: stage folders and sampling defaults\n"
                      + yaml.safe_dump(cfg, sort_keys=False))
