"""`pcdms-aug export-checkpoint`: a stage folder (EMA weights) from a training checkpoint, e.g. to measure step
N of a run that is still going (`pcdms-aug assemble` takes the result like any OUT/final)."""
from __future__ import annotations


def configure(parser):
    parser.add_argument("checkpoint", help="OUT/checkpoint-<step>/ of `pcdms-aug train`")
    parser.add_argument("--out", required=True, help="new stage folder (refused if it exists and is not empty)")


def run(args):
    from pcdms_aug.training.loop import export_checkpoint

    print(f"[export-checkpoint] wrote {export_checkpoint(args.checkpoint, args.out)}")
    return 0
