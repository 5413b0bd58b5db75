"""`pcdms-aug assemble`: one pipeline folder (what every ``--weights`` reads) from separately trained stages.

Sampling defaults come from the stages' own scale: stages in SD's VAE latent space (paper configs) get
``paper/pipeline.yaml``'s, the others ``tiny/pipeline.yaml``'s; the working size is the largest stage's. A ``--config`` whose image size disagrees is refused, not applied."""
from __future__ import annotations

import gc
from pathlib import Path

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_dir
from pcdms_aug.utils.runtime import DTYPES, as_dtype


def configure(parser):
    where = ("a stage folder (OUT/final of `pcdms-aug train`) or a pipeline folder ('tiny' too) whose {}/ is "
             "used")
    parser.add_argument("--prior", help=where.format("prior") + "; without it the pipeline needs target "
                        "embeddings from the caller")
    parser.add_argument("--inpaint", required=True, help=where.format("inpaint"))
    parser.add_argument("--refine", help=where.format("refine") + "; without it the coarse image is the output")
    parser.add_argument("--out", required=True, help="new pipeline folder (refused if it exists and is not empty)")
    parser.add_argument("--config", default=None,
                        help="pipeline YAML with the sampling defaults to store (default: the stages' own scale: "
                             "paper/pipeline.yaml for VAE-latent stages, else tiny/pipeline.yaml)")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES,
                        help="store the trained weights in this type (frozen encoders keep theirs; default fp32)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="changes to the stored config, e.g. sampling.refine_strength=0.3")


def stage_scale(folders: dict[str, Path]) -> tuple[str, list]:
    """('paper' | 'tiny', image size) of the stage folders; a DataError if they disagree."""
    from pcdms_aug.stages import Stage

    scales, sizes = {}, {}
    for name, folder in folders.items():
        cfg = Stage.read_config(folder)
        scales[name] = "paper" if (cfg.get("codec") or {}).get("type") == "vae" else "tiny"
        sizes[name] = list(cfg.get("image_size", [128, 64]))
    if len(set(scales.values())) > 1:
        raise DataError(f"the stages are of different scales ({scales}); assemble stages trained together")
    # The pipeline works at its largest stage's size (tiny: stage 2 at 64x32 inside a 128x64 pipeline; paper:
    # all 512x256): sources and pose images are prepared at it and each stage resizes from it as in training.
    size = max(sizes.values(), key=lambda hw: (hw[0] * hw[1], hw))
    return next(iter(scales.values())), size


def pipeline_config(folders: dict[str, Path], config: str | None, overrides) -> dict:
    from pcdms_aug.config.loading import apply_overrides, load_config, resolve_config_path
    from pcdms_aug.pipelines.pipeline_config import check_pipeline_config

    scale, size = stage_scale(folders)
    path = resolve_config_path(config or f"{scale}/pipeline.yaml")
    cfg = load_config(path)
    if config is not None and list(cfg.get("image_size", size)) != size:
        raise DataError(f"image_size {cfg['image_size']} of this config is not the stages' {size} "
                        f"({scale} scale); leave out --config to take the stages' defaults", path)
    cfg["image_size"] = size
    check_pipeline_config(cfg, str(path))
    cfg = apply_overrides(cfg, overrides)
    check_pipeline_config(cfg, "the key=value overrides")
    return cfg


def run(args):
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline
    from pcdms_aug.pipelines.loading import stage_folder

    from pcdms_aug.utils.paths import check_new_dir

    given = {n: getattr(args, n) for n in ("prior", "inpaint", "refine") if getattr(args, n)}
    out = check_new_dir(args.out, inputs=[(f"the {n} stage", v) for n, v in given.items()]
                        + [("the config", args.config)])
    folders = {n: stage_folder(v, n) for n, v in given.items()}
    cfg = pipeline_config(folders, args.config, args.overrides)  # refused before any weights are read
    pipe = PCDMsPipeline.from_stages(folders, cfg)
    dtype = None if args.dtype == "fp32" else as_dtype(args.dtype)  # fp32: saved as trained, no cast
    with atomic_dir(out) as tmp:  # an interrupted run leaves no half pipeline under OUT
        pipe.save_pretrained(tmp, trainable_dtype=dtype)
        sampling = pipe.config.get("sampling")
        # What was written must load before it takes the name; the assembled copy goes first, so the check
        # holds one pipeline in memory, not two.
        del pipe
        gc.collect()
        PCDMsPipeline.from_pretrained(tmp)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"[assemble] {out}: {', '.join(f'{n} <- {f}' for n, f in folders.items())}; "
          f"image_size {cfg['image_size']}; sampling {sampling}; {size / 2**20:.1f} MB")
    return 0
