"""`pcdms-aug make-refine-inputs`: stage 3 trains on what stage 2 produces, so run stage 2 over training pairs."""
from __future__ import annotations

from pathlib import Path

from .data.market import MarketDataset, make_pairs
from .pose import read_annotations, read_pairs, write_pairs
from .synthesize import load_pipeline, synthesize


def configure(parser):
    parser.add_argument("--dataset", required=True, help="Market-1501-layout folder")
    parser.add_argument("--annotations", required=True, help="training annotation CSV")
    parser.add_argument("--weights", required=True,
                        help="pipeline folder with trained prior and inpaint stages ('tiny', a folder, or a YAML)")
    parser.add_argument("--out", required=True, help="folder for <from>_to_<to>.png and pairs.csv")
    parser.add_argument("--max-pairs", type=int, default=None, help="a seeded sample of the training pairs")
    parser.add_argument("--steps", type=int, default=None, help="per stage (default: the pipeline's own)")
    parser.add_argument("--scheduler", default=None, choices=["ddim", "unipc", "dpmsolver++"],
                        help="default: the pipeline's own")
    parser.add_argument("--guidance", type=float, default=None, help="default: the pipeline's own")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def run(args):
    from .runtime import barrier, init_runtime

    rt = init_runtime(args.device, "fp32")
    out = Path(args.out)
    dataset = MarketDataset(args.dataset)
    poses = read_annotations(args.annotations)
    pairs_file = out / "pairs.csv"
    if pairs_file.is_file():
        # The pair list is fixed by the first run, so a resumed run finishes exactly that list.
        pairs = read_pairs(pairs_file)
    else:
        names = {it.filename for it in dataset.train}
        pairs = make_pairs(poses, args.max_pairs, args.seed, names)
        if rt.is_main:
            write_pairs(pairs_file, pairs)
        barrier()
    pipe = load_pipeline(args.weights, rt.device)
    # Stage 1 predicts the target embedding here as it will at inference, so stage 3 learns to repair
    # exactly the images it will be given.
    stages = ("prior", "inpaint")
    counts = synthesize(pipe, pairs, dataset, poses, out, batch=args.batch, steps=args.steps,
                        guidance=args.guidance, scheduler=args.scheduler, seed=args.seed, stages=stages,
                        write="coarse", rank=rt.rank, world=rt.world_size, progress=rt.is_main)
    print(f"[make-refine-inputs] rank {rt.rank}: wrote {counts['written']}, skipped {counts['skipped']} "
          f"finished, of {counts['pairs']} pairs -> {out}")
    return 0
