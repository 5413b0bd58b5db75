"""`pcdms-aug generate`: new-pose views of the training identities, with an identity-consistency filter.

Settings come from --config YAML (e.g. tiny/generate.yaml), then the flags given on the command line.
Run under ``torchrun --nproc_per_node N`` to split the work over N processes (one shard log each).
"""
from __future__ import annotations

import logging

from pcdms_aug.config.loading import build, load_config
from pcdms_aug.config.options import add_options, given_options
from pcdms_aug.generation.config import GenerateConfig
from pcdms_aug.generation.generate import generate
from pcdms_aug.utils.errors import DataError


def configure(parser) -> None:
    parser.add_argument("--config", help="YAML with defaults for every option below (e.g. tiny/generate.yaml, "
                                         "paper/generate.yaml)")
    add_options(parser, GenerateConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args) -> GenerateConfig:
    data = load_config(args.config) if getattr(args, "config", None) else {}
    for (*parents, last), value in given_options(args, GenerateConfig):
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}  # absent or null in the config: the flag creates the section
            node = node[p]
        if last in ("threshold", "top") and parents == ["filter"]:
            node.pop("threshold", None)
            node.pop("top", None)  # a rule on the command line replaces the config's rule
        node[last] = value
    cfg = build(GenerateConfig, data, "generate config")
    if (getattr(args, "filter_threshold", None) is not None or getattr(args, "filter_top", None) is not None) \
            and not cfg.filter.model:
        raise DataError("--filter-threshold / --filter-top need a re-ID model: --filter-model PATH (or train)")
    return cfg


def run(args) -> int:
    from pcdms_aug.utils.runtime import init_runtime

    cfg = config_from_args(args)
    cfg.check()
    rt = init_runtime(cfg.device, cfg.dtype)
    cfg.device = rt.device
    root = logging.getLogger("pcdms_aug")
    console = _console_log(root) if rt.is_main else None
    fmt = f"%(asctime)s rank {rt.rank}/{rt.world_size} %(levelname)s %(message)s"
    try:
        # OUT/generate.log starts once every input is checked and the folder is claimed (nothing before).
        counts = generate(cfg, rank=rt.rank, world=rt.world_size, progress=rt.is_main and not args.no_progress,
                          log_format=fmt)
    finally:
        if console is not None:
            root.removeHandler(console)
    if rt.is_main:
        skipped = counts["no_annotation"] + counts["no_torso"]
        print(f"[generate] {counts['sources']} source image(s) of {counts['identities']} identities"
              + (f"; skipped {skipped}: {counts['no_annotation']} without a pose annotation, "
                 f"{counts['no_torso']} without a full torso" if skipped else "")
              + (f"; {counts['not_in_split']} outside the split" if counts["not_in_split"] else ""))
        print(f"[generate] {counts['manifest_rows']} of {counts['planned']} planned views in "
              f"{cfg.out}/manifest.csv, {counts['kept']} kept"
              + ("" if counts["complete"] else " (incomplete: run the same command again to finish)"))
    if rt.distributed:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def _console_log(root: logging.Logger) -> logging.Handler | None:
    """Log lines on stderr too, unless the caller already shows them; returns the handler it added."""
    if any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        return None
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    return console
