"""`pcdms-aug make-refine-inputs`: stage 3 trains on what stage 2 produces, so run stage 2 over training pairs.

The images are written as stage 2 decodes them (its ``image_size``: 512x256 at paper scale), not resized to
the source's size: stage 3 is given exactly that at inference. ``inputs.json`` records the size; training
refuses a folder without it (:func:`pcdms_aug.data.refine_inputs.check_refine_inputs`)."""
from __future__ import annotations

import json
from pathlib import Path

from pcdms_aug.data.layouts import open_dataset, pair_identities
from pcdms_aug.data.market import image_sizes, make_pairs
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_write_text
from pcdms_aug.data.pose import read_annotations, read_pairs, write_pairs
from pcdms_aug.utils.runtime import add_dtype_argument
from pcdms_aug.pipelines.pipeline import PCDMsPipeline
from pcdms_aug.stages.diffusion import SAMPLERS
from pcdms_aug.generation.pairs import synthesize
from pcdms_aug.data.refine_inputs import INFO

def configure(parser):
    from pcdms_aug.utils.argtypes import batch_int, finite_float, items_int, seed_int, steps_int

    parser.add_argument("--dataset", required=True, help="re-ID dataset folder (any layout pcdms_aug.data.layouts "
                                                          "reads)")
    parser.add_argument("--annotations", required=True, help="training annotation CSV")
    parser.add_argument("--weights", required=True,
                        help="pipeline folder with trained prior and inpaint stages ('tiny', a folder, or a YAML)")
    parser.add_argument("--out", required=True, help="folder for <from>_to_<to>.png, pairs.csv and inputs.json")
    parser.add_argument("--max-pairs", type=items_int, default=None, help="a seeded sample of the training pairs")
    parser.add_argument("--steps", type=steps_int, default=None, help="per stage (default: the pipeline's own)")
    parser.add_argument("--scheduler", default=None, choices=SAMPLERS,
                        help="default: the pipeline's own")
    parser.add_argument("--guidance", type=finite_float(0.0), default=None, help="default: the pipeline's own")
    parser.add_argument("--batch", type=batch_int, default=16)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default="auto")
    add_dtype_argument(parser)


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
    from pcdms_aug.utils.runtime import barrier, init_runtime

    if args.batch < 1:
        raise DataError(f"--batch must be at least 1, got {args.batch}")
    from pcdms_aug.utils.paths import check_out_dir

    out = check_out_dir(args.out, not_inside={"the dataset": args.dataset})
    rt = init_runtime(args.device, args.dtype)
    dataset = open_dataset(args.dataset)
    poses = read_annotations(args.annotations, image_sizes(dataset.train))
    pipe = PCDMsPipeline.load(args.weights, rt.device, args.dtype)
    pairs_file = out / "pairs.csv"
    if pairs_file.is_file():
        # The pair list is fixed by the first run, so a resumed run finishes exactly that list.
        pairs = read_pairs(pairs_file)
    else:
        names = {it.filename for it in dataset.train}
        pairs = make_pairs(poses, args.max_pairs, args.seed, names, pair_identities(dataset))
        if rt.is_main:
            write_pairs(pairs_file, pairs)
    if rt.is_main:
        _record_size(out, pipe, args)
    barrier()
    # Stage 1 predicts the target embedding here as it will at inference, and the images stay at the working
    # size stage 2 decodes at, so stage 3 learns to repair exactly the images it will be given.
    stages = ("prior", "inpaint")
    counts = synthesize(pipe, pairs, dataset, poses, out, batch=args.batch, steps=args.steps,
                        guidance=args.guidance, scheduler=args.scheduler, seed=args.seed, stages=stages,
                        write="coarse", rank=rt.rank, world=rt.world_size, progress=rt.is_main,
                        output_size="working")
    print(f"[make-refine-inputs] rank {rt.rank}: wrote {counts['written']}, skipped {counts['skipped']} "
          f"finished, of {counts['pairs']} pairs at stage 2's {pipe.stages['inpaint'].image_size} -> {out}")
    return 0
