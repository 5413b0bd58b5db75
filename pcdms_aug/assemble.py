"""`pcdms-aug assemble`: one pipeline folder (what every ``--weights`` reads) from separately trained stages."""
from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .io import atomic_dir

DTYPES = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def configure(parser):
    where = ("a stage folder (OUT/final of `pcdms-aug train`) or a pipeline folder ('tiny' too) whose {}/ is "
             "used")
    parser.add_argument("--prior", help=where.format("prior") + "; without it the pipeline needs target "
                        "embeddings from the caller")
    parser.add_argument("--inpaint", required=True, help=where.format("inpaint"))
    parser.add_argument("--refine", help=where.format("refine") + "; without it the coarse image is the output")
    parser.add_argument("--out", required=True, help="new pipeline folder (refused if it exists and is not empty)")
    parser.add_argument("--config", default="tiny/pipeline.yaml",
                        help="pipeline YAML with the sampling defaults to store (default: tiny/pipeline.yaml)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="store the trained weights in this type (frozen encoders keep theirs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="changes to the stored config, e.g. sampling.refine_strength=0.3")


def run(args):
    import torch

    from .config import load_config, resolve_config_path
    from .pipeline import PCDMsPipeline, stage_folder

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError("exists and is not empty; assemble writes a new pipeline folder", out)
    given = {n: getattr(args, n) for n in ("prior", "inpaint", "refine") if getattr(args, n)}
    folders = {n: stage_folder(v, n) for n, v in given.items()}
    cfg = load_config(resolve_config_path(args.config), args.overrides)
    pipe = PCDMsPipeline.from_stages(folders, cfg)
    dtype = DTYPES[args.dtype] and getattr(torch, DTYPES[args.dtype])
    with atomic_dir(out) as tmp:  # an interrupted run leaves no half pipeline under OUT
        pipe.save_pretrained(tmp, trainable_dtype=dtype)
        PCDMsPipeline.from_pretrained(tmp)  # what was written loads, before it takes the name
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"[assemble] {out}: {', '.join(f'{n} <- {f}' for n, f in folders.items())}; "
          f"sampling {pipe.config.get('sampling')}; {size / 2**20:.1f} MB")
    return 0
