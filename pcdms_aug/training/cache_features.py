"""`pcdms-aug cache-features`: compute the frozen features of a training run's pairs once (see feature_cache).

    pcdms-aug cache-features paper/train_inpaint.yaml train.feature_cache=runs/paper/features_inpaint $M
    torchrun --nproc_per_node 8 -m pcdms_aug cache-features ...     # each rank encodes its share

The run config is the training run's own (its stage, data and overrides); the cache goes to
``train.feature_cache`` (or ``--out``). Stopped, it resumes: shards are written whole (atomically) and what
they hold is not computed again. ``pcdms-aug train`` with ``train.feature_cache`` builds what is missing on
first use, then trains from the cache.
"""
from __future__ import annotations

from pcdms_aug.training.feature_build import build_cache
from pcdms_aug.utils.runtime import DTYPES
from pcdms_aug.utils.errors import DataError


def configure(parser):
    from pcdms_aug.utils.argtypes import batch_int, int_in

    parser.add_argument("config", help="the training run's YAML, e.g. paper/train_inpaint.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for pcdms-aug train")
    parser.add_argument("--out", help="cache folder (default: the config's train.feature_cache)")
    parser.add_argument("--batch", type=batch_int, default=16, help="images per encoder call (default 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="storage type of the features (default fp32: the loss equals the uncached one; "
                             "fp16/bf16 halve the disk)")
    parser.add_argument("--shard-size", type=int_in(1, 1_000_000), default=512, help="entries per shard file (default 512)")
    parser.add_argument("--no-progress", action="store_true")


def run(args):
    from pcdms_aug.stages import build_stage
    from pcdms_aug.training.data import make_dataset
    from pcdms_aug.training.config import AMP_TORCH, load_run_config
    from pcdms_aug.utils.runtime import init_runtime

    cfg = load_run_config(args.config, args.overrides)
    folder = args.out or cfg.train.feature_cache
    if not folder:
        raise DataError("give --out or train.feature_cache=FOLDER")
    from pcdms_aug.training.feature_cache import MANIFEST
    from pcdms_aug.utils.paths import check_out_dir, claim_dir

    d = cfg.data
    check_out_dir(folder, "--out" if args.out else "train.feature_cache",
                  inputs=[("data.root", d.root), ("data.annotations", d.annotations)], command="cache-features",
                  own=lambda o: (o / MANIFEST).is_file())
    rt = init_runtime(cfg.train.device, "fp32", cfg.train.seed)
    stage = build_stage(cfg.stage, cfg.model, seed=cfg.train.seed)
    stage.to(rt.device)
    if rt.is_main:
        claim_dir(folder, "cache-features")
    manifest = build_cache(stage, make_dataset(cfg), folder, rt, cfg.data.image_size, args.batch, args.dtype,
                           args.shard_size, cfg.data.num_workers, AMP_TORCH[cfg.train.mixed_precision],
                           progress=not args.no_progress)
    if rt.is_main:
        print(f"[cache-features] {folder}: {manifest['images']} images, {manifest['pairs']} pairs, "
              f"{manifest['bytes'] / 1e9:.2f} GB", flush=True)
    return 0
