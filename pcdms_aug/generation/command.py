"""`pcdms-aug generate`: new-pose views of the training identities, with an identity-consistency filter.

Settings come from --config YAML (e.g. tiny/generate.yaml), then the flags given on the command line.
Run under ``torchrun --nproc_per_node N`` to split the work over N processes (one shard log each).
"""
from __future__ import annotations

import logging
from pathlib import Path

from pcdms_aug.config.loading import build, load_config
from pcdms_aug.data.layouts import LAYOUTS
from pcdms_aug.generation.identity_filter import REDUCE, TOP_SCOPE
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import file_log
from pcdms_aug.generation.config import IMAGE_FORMATS, GenerateConfig
from pcdms_aug.generation.generate import generate
from pcdms_aug.generation.plan import PER, POLICIES

# flag destination -> key in the config (dotted: a key of the filter section)
_FLAGS = {"dataset": "dataset", "layout": "layout", "annotations": "annotations", "weights": "weights", "out": "out",
          "views": "views", "per": "per", "policy": "policy", "split": "split", "batch": "batch", "steps": "steps",
          "guidance": "guidance", "scheduler": "scheduler", "seed": "seed", "device": "device", "dtype": "dtype",
          "image_format": "image_format", "stages": "stages", "canonical_poses": "canonical_poses",
          "filter_model": "filter.model", "filter_arch": "filter.arch", "filter_reduce": "filter.reduce",
          "filter_threshold": "filter.threshold", "filter_top": "filter.top", "filter_top_scope": "filter.top_scope",
          "filter_train_epochs": "filter.train_epochs"}


def configure(parser) -> None:
    from pcdms_aug.utils.argtypes import choice_list, finite_float, positive_int
    from pcdms_aug.pipelines.pipeline_config import ORDER
    from pcdms_aug.stages.diffusion import SAMPLERS
    from pcdms_aug.utils.runtime import DTYPE_CHOICES

    add = parser.add_argument
    add("--config", help="YAML with defaults for every option below (e.g. tiny/generate.yaml, paper/generate.yaml)")
    add("--dataset", help="re-ID dataset folder (Market-1501, DukeMTMC-reID, MSMT17, CUHK03 or train/query/gallery/"
                          "<identity>/ folders), or torchreid's root above it")
    add("--layout", choices=LAYOUTS + ("cuhk03-labeled",), help="the dataset's layout (default: detected)")
    add("--annotations", nargs="+", action="extend",
        help="annotation CSV(s) (default: market-annotation-train.csv or annotation-train.csv beside the dataset "
             "folder; pcdms-aug annotate writes one for any dataset)")
    add("--weights", help="folder written by save_pretrained, 'tiny' (shipped), or a pipeline YAML (random weights)")
    add("--out", help="output folder: images, manifest.csv, plan.csv, generate.json, shards/")
    add("--views", type=positive_int, help="views per source image (--per image) or per identity (--per identity)")
    add("--per", choices=PER)
    add("--policy", choices=POLICIES, help="target poses: random (the paper: poses of the training split), "
                                           "canonical (k-means, as PN-GAN), coverage (far from the identity's own)")
    add("--split", help="low-data subset JSON (pcdms_aug.data.splits): its images are the sources and the random "
                        "pose pool")
    add("--batch", type=positive_int, help="views per forward pass (part of the settings: fixes which views share one)")
    add("--steps", type=positive_int, help="sampling steps of every stage")
    add("--guidance", type=finite_float(0.0), help="classifier-free guidance of every stage (default: the pipeline's)")
    add("--scheduler", choices=SAMPLERS)
    add("--seed", type=int)
    add("--device", help="auto | cpu | cuda")
    add("--dtype", choices=DTYPE_CHOICES, help=" | ".join(DTYPE_CHOICES))
    add("--stages", type=choice_list(ORDER), help="comma list (default all three; without refine the stage-2 "
                                                   "image is the view)")
    add("--format", dest="image_format", choices=sorted(IMAGE_FORMATS))
    add("--canonical-poses", type=positive_int, help="k of the canonical policy (default 8)")
    add("--overwrite", action="store_true", default=None,
        help="replace a run with other settings (or a foreign manifest) in --out")
    add("--filter-model", help="re-ID checkpoint (torchreid model.pth.tar-N or a state dict) for the "
                               "identity-consistency filter; 'train' trains a small one on the real images first")
    add("--filter-arch", help="torchreid model name of the checkpoint (default osnet_x0_25)")
    add("--filter-reduce", choices=REDUCE, help="similarity to the mean real feature (default) or to the closest")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--filter-threshold", type=finite_float(-1.0, 1.0), help="keep views whose score reaches this cosine")
    group.add_argument("--filter-top", type=finite_float(0.0, 1.0, lo_open=True), metavar="FRACTION", help="keep this fraction of the best views")
    add("--filter-top-scope", choices=TOP_SCOPE, help="top fraction of each identity's views (default) or of all")
    add("--filter-train-epochs", type=positive_int, help="epochs of --filter-model train (default 10)")
    add("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args) -> GenerateConfig:
    data = load_config(args.config) if getattr(args, "config", None) else {}
    for dest, key in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}  # absent or null in the config: the flag creates the section
            node = node[p]
        if last in ("threshold", "top") and parents == ["filter"]:
            node.pop("threshold", None)
            node.pop("top", None)  # a rule on the command line replaces the config's rule
        node[last] = value
    if getattr(args, "overwrite", None):
        data["overwrite"] = True
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
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write to the output folder ({e.strerror})", out) from None
    root = logging.getLogger("pcdms_aug")
    console = _console_log(root) if rt.is_main else None
    fmt = f"%(asctime)s rank {rt.rank}/{rt.world_size} %(levelname)s %(message)s"
    try:
        with file_log(root, out / "generate.log", fmt, "%Y-%m-%d %H:%M:%S"):
            counts = generate(cfg, rank=rt.rank, world=rt.world_size, progress=rt.is_main and not args.no_progress)
            logging.getLogger("pcdms_aug.generation").info(
                "rank %d/%d: %d new image(s) in %.1f s (%.3f img/s), %d re-scored, %d of %d batch(es) finished "
                "before", rt.rank, rt.world_size, counts["generated"], counts["seconds"],
                counts["images_per_second"], counts["rescored"], counts["batches_done_before"],
                counts["batches_this_rank"])
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
