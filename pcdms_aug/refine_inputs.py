"""`pcdms-aug make-refine-inputs`: stage 3 trains on what stage 2 produces, so run stage 2 over training pairs.

The images are written as stage 2 decodes them (its ``image_size``: 512x256 at paper scale), not resized to
the source's size: stage 3 is given exactly that at inference. ``inputs.json`` records the size; training
refuses a folder without it (:func:`check_refine_inputs`: made by the old, source-size command)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from .data.market import MarketDataset, make_pairs
from .errors import DataError
from .io import atomic_write_text
from .pose import read_annotations, read_pairs, write_pairs
from .runtime import add_dtype_argument
from .pipeline import PCDMsPipeline
from .synthesize import synthesize

INFO = "inputs.json"


def configure(parser):
    from .argtypes import finite_float, positive_int

    parser.add_argument("--dataset", required=True, help="Market-1501-layout folder")
    parser.add_argument("--annotations", required=True, help="training annotation CSV")
    parser.add_argument("--weights", required=True,
                        help="pipeline folder with trained prior and inpaint stages ('tiny', a folder, or a YAML)")
    parser.add_argument("--out", required=True, help="folder for <from>_to_<to>.png, pairs.csv and inputs.json")
    parser.add_argument("--max-pairs", type=positive_int, default=None, help="a seeded sample of the training pairs")
    parser.add_argument("--steps", type=positive_int, default=None, help="per stage (default: the pipeline's own)")
    parser.add_argument("--scheduler", default=None, choices=["ddim", "unipc", "dpmsolver++"],
                        help="default: the pipeline's own")
    parser.add_argument("--guidance", type=finite_float(0.0), default=None, help="default: the pipeline's own")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    add_dtype_argument(parser)


def check_refine_inputs(folder: str | Path, image_size) -> list:
    """Stage 3 must train on what it refines at inference: stage-2 outputs at stage 2's size, loaded at
    ``image_size`` (data.image_size) and resized by stage 3 as its input is at inference. Refuses a folder of
    unknown size, and one made larger than the training size (it would be shrunk: not what inference gives).
    Returns the size the images were made at."""
    info = Path(folder) / INFO
    if not Path(folder).is_dir():
        raise DataError("stage-2 outputs folder not found (data.refine_inputs; make it with pcdms-aug "
                        "make-refine-inputs)", folder)
    if not info.is_file():
        raise DataError(f"no {INFO}: made by an older make-refine-inputs (images at the source size); run "
                        "pcdms-aug make-refine-inputs again", folder)
    try:
        recorded = json.loads(info.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"corrupt {INFO}: {e}; run pcdms-aug make-refine-inputs again", info) from None
    made = list(recorded.get("image_size", []) if isinstance(recorded, dict) else [])
    if len(made) != 2 or not all(isinstance(v, int) and v > 0 for v in made):
        raise DataError(f"corrupt {INFO}: image_size must be [height, width], got {made}; run pcdms-aug "
                        "make-refine-inputs again", info)
    if made[0] > image_size[0] or made[1] > image_size[1]:
        raise DataError(f"stage-2 outputs are {made}, larger than data.image_size {list(image_size)}: stage 3 "
                        "would train on shrunk images; set data.image_size to the pipeline's image_size", info)
    return made


def _record_size(out: Path, pipe, args) -> None:
    info = out / INFO
    size = list(pipe.stages["inpaint"].image_size)
    if info.is_file():
        made = json.loads(info.read_text()).get("image_size")
        if made != size:
            raise DataError(f"this folder holds stage-2 outputs at {made}, the pipeline works at {size}; "
                            "use a new --out", info)
        return
    atomic_write_text(info, json.dumps({"image_size": size, "weights": str(args.weights),
                                        "steps": args.steps, "seed": args.seed}, indent=2))


def run(args):
    from .runtime import barrier, init_runtime

    if args.batch < 1:
        raise DataError(f"--batch must be at least 1, got {args.batch}")
    from .paths import check_out_dir

    out = check_out_dir(args.out, not_inside={"the dataset": args.dataset})
    rt = init_runtime(args.device, args.dtype)
    dataset = MarketDataset(args.dataset)
    poses = read_annotations(args.annotations)
    pipe = PCDMsPipeline.load(args.weights, rt.device, args.dtype)
    pairs_file = out / "pairs.csv"
    if pairs_file.is_file():
        # The pair list is fixed by the first run, so a resumed run finishes exactly that list.
        pairs = read_pairs(pairs_file)
    else:
        names = {it.filename for it in dataset.train}
        pairs = make_pairs(poses, args.max_pairs, args.seed, names)
        if rt.is_main:
            write_pairs(pairs_file, pairs)
    if rt.is_main:
        _record_size(out, pipe, args)
    barrier()
    # Stage 1 predicts the target embedding here as it will at inference, and the images stay at the working
    # size stage 2 decodes at, so stage 3 learns to repair exactly the images it will be given.
    stages = ("prior", "inpaint")
    working = functools.partial(pipe, output_size="working")
    counts = synthesize(working, pairs, dataset, poses, out, batch=args.batch, steps=args.steps,
                        guidance=args.guidance, scheduler=args.scheduler, seed=args.seed, stages=stages,
                        write="coarse", rank=rt.rank, world=rt.world_size, progress=rt.is_main)
    print(f"[make-refine-inputs] rank {rt.rank}: wrote {counts['written']}, skipped {counts['skipped']} "
          f"finished, of {counts['pairs']} pairs at stage 2's {pipe.stages['inpaint'].image_size} -> {out}")
    return 0
