"""`pcdms-aug make-refine-inputs`: stage 3 trains on what stage 2 produces, so run stage 2 over training pairs.

The images are written as stage 2 decodes them (its ``image_size``: 512x256 at paper scale), not resized to
the source's size: stage 3 is given exactly that at inference. ``inputs.json`` records the size; training
refuses a folder without it (:func:`pcdms_aug.data.refine_inputs.check_refine_inputs`)."""
from __future__ import annotations

from pathlib import Path

from pcdms_aug.data.layouts import open_dataset, pair_identities
from pcdms_aug.data.market import image_sizes, make_pairs
from pcdms_aug.utils.errors import DataError
from pcdms_aug.generation import run_folder
from pcdms_aug.generation.run_folder import Protocol
from pcdms_aug.data.pose import read_annotations, read_pairs, write_pairs
from pcdms_aug.utils.runtime import add_dtype_argument
from pcdms_aug.pipelines.pipeline import PCDMsPipeline
from pcdms_aug.stages.diffusion import SAMPLERS
from pcdms_aug.generation.pairs import synthesize
from pcdms_aug.data.refine_inputs import INFO

PAIRS = "pairs.csv"


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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of other settings in --out (its pair list and the images it names)")
    add_dtype_argument(parser)


def _own_files(out: Path) -> list[Path]:
    """The previous run's pair list and the images it names (their names made by pair_image_name)."""
    from pcdms_aug.data.pairs import pair_image_name

    pairs_file = out / PAIRS
    try:
        pairs = read_pairs(pairs_file) if pairs_file.is_file() else []
    except DataError:
        pairs = []
    return [out / pair_image_name(f, t) for f, t in pairs] + [pairs_file]


PROTOCOL = Protocol("make-refine-inputs", INFO, "pcdms-aug make-refine-inputs v1", _own_files,
                    legacy=lambda d: "image_size" in d and "format" not in d)


def run(args):
    import contextlib

    from pcdms_aug.generation.inputs import weights_fingerprint
    from pcdms_aug.utils.io import folder_lock
    from pcdms_aug.utils.paths import check_out_dir
    from pcdms_aug.utils.runtime import barrier, init_runtime

    out = check_out_dir(args.out, inputs=[("the dataset", args.dataset), ("the annotations", args.annotations),
                                          ("the weights", args.weights)],
                        command=PROTOCOL.command, own=run_folder.owns(PROTOCOL))
    rt = init_runtime(args.device, args.dtype)
    dataset = open_dataset(args.dataset)
    poses = read_annotations(args.annotations, image_sizes(dataset.train))
    pipe = PCDMsPipeline.load(args.weights, rt.device, args.dtype)
    size = list(pipe.stages["inpaint"].image_size)
    # The image size is what training checks (data.refine_inputs); the rest decides what the images are.
    settings = {"weights": weights_fingerprint(args.weights, pipe), "image_size": size, "steps": args.steps,
                "scheduler": args.scheduler, "guidance": args.guidance, "seed": args.seed,
                "max_pairs": args.max_pairs, "dtype": str(pipe.dtype).replace("torch.", "")}
    if rt.is_main:  # refused here, before anything is written (the lock makes the folder)
        run_folder.check(out, PROTOCOL, settings, args.overwrite)
    with folder_lock(out) if rt.is_main else contextlib.nullcontext():
        if rt.is_main:
            mode = run_folder.check(out, PROTOCOL, settings, args.overwrite)
            run_folder.begin(out, PROTOCOL, settings, mode, {"image_size": size})
            if not (out / PAIRS).is_file():
                names = {it.filename for it in dataset.train}
                write_pairs(out / PAIRS, make_pairs(poses, args.max_pairs, args.seed, names,
                                                    pair_identities(dataset)))
        barrier()
        # The pair list is fixed by the first run, so a resumed run finishes exactly that list.
        pairs = read_pairs(out / PAIRS)
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
