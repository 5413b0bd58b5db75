"""`pcdms-aug` command line: one subcommand per module, imported only when it runs.

Each module named below exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int | None``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DataError

COMMANDS = {
    "synth-market": ("pcdms_aug.data.synthetic", "build the synthetic Market-1501 (the embedded default)"),
    "inspect": ("pcdms_aug.doctor", "check a Market-1501-layout dataset and its annotations"),
    "render-pose": ("pcdms_aug.viz", "draw poses (or skeletons over images) and contact sheets as PNG"),
    "train": ("pcdms_aug.train", "train one stage (prior, inpaint or refine)"),
    "export-checkpoint": ("pcdms_aug.export", "a stage folder (EMA weights) from a training checkpoint"),
    "assemble": ("pcdms_aug.assemble", "one pipeline folder from separately trained stage folders"),
    "make-refine-inputs": ("pcdms_aug.refine_inputs", "run a trained stage 2 over the training pairs"),
    "synthesize-pairs": ("pcdms_aug.synthesize", "generate the target image of every pair of a pairs CSV"),
    "metrics": ("pcdms_aug.metrics", "SSIM, PSNR, LPIPS, FID of generated images against ground truth"),
    "generate": ("pcdms_aug.augment", "generate new-pose views of the training identities"),
    "import-official": ("pcdms_aug.checkpoints", "convert an upstream PCDMs checkpoint into our format"),
    "bench": ("pcdms_aug.bench", "images per second of the three-stage generation"),
    "reid-experiment": ("reid.experiment", "baseline versus augmented re-ID over fractions and seeds"),
    "demo": ("pcdms_aug.demo", "the whole loop on the synthetic Market-1501 in minutes"),
}


def _command_parser(name: str, sub) -> argparse.ArgumentParser:
    module, help_text = COMMANDS[name]
    parser = sub.add_parser(name, help=help_text, description=help_text)
    importlib.import_module(module).configure(parser)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pcdms-aug", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Only the chosen command's module is imported; the others stay unloaded.
    if argv and argv[0] in COMMANDS:
        parser = argparse.ArgumentParser(prog="pcdms-aug")
        sub = parser.add_subparsers(dest="command")
        _command_parser(argv[0], sub)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        rc = module.run(args)
    except DataError as e:
        print(f"pcdms-aug {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcdms-aug {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
