"""`pcdms-aug` command line: one subcommand per module, imported only when it runs.

Each module named below exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int | None``; so
does each module an installed plugin names in the entry point group ``pcdms_aug.commands`` (the reid package's
``reid-experiment`` and ``demo``), whose help is its docstring's first line.
Every failure prints one line naming the command and what is wrong; ``pcdms-aug --debug COMMAND ...`` (or
``PCDMS_AUG_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import math
import os
import sys
from importlib.metadata import entry_points

from pcdms_aug.utils.errors import DataError

COMMANDS = {
    "synth-market": ("pcdms_aug.data.synthetic_layouts",
                     "build the synthetic Market-1501 (the embedded default; other layouts and crop sizes too)"),
    "inspect": ("pcdms_aug.data.doctor", "check a Market-1501-layout dataset and its annotations"),
    "annotate": ("pcdms_aug.data.annotate", "pose annotations for every image of a dataset or folder, by ViTPose"),
    "pose-agreement": ("pcdms_aug.data.pose_agreement", "PCK of one annotation CSV against another, per joint"),
    "render-pose": ("pcdms_aug.data.viz", "draw poses (or skeletons over images) and contact sheets as PNG"),
    "train": ("pcdms_aug.training.loop", "train one stage (prior, inpaint or refine)"),
    "cache-features": ("pcdms_aug.training.cache_features", "compute a training run's frozen features once"),
    "export-checkpoint": ("pcdms_aug.training.checkpoints", "a stage folder (EMA weights) from a training checkpoint"),
    "assemble": ("pcdms_aug.pipelines.assemble", "one pipeline folder from separately trained stage folders"),
    "make-refine-inputs": ("pcdms_aug.generation.refine_inputs", "run a trained stage 2 over the training pairs"),
    "synthesize-pairs": ("pcdms_aug.generation.pairs", "generate the target image of every pair of a pairs CSV"),
    "metrics": ("pcdms_aug.metrics", "SSIM, PSNR, LPIPS, FID of generated images against ground truth"),
    "generate": ("pcdms_aug.generation", "generate new-pose views of the training identities"),
    "import-official": ("pcdms_aug.pipelines.import_official", "convert an upstream PCDMs checkpoint into our format"),
    "bench": ("pcdms_aug.perf.bench", "images per second of the three-stage generation"),
}
PLUGIN_COMMANDS = "pcdms_aug.commands"  # entry point group (setup.cfg): name = module


def _plugin_help(name: str, module: str) -> str:
    """The first line of a plugin module's docstring, less its "`pcdms-aug NAME`: " lead, read from the source
    without importing it: a plugin module may take seconds to import, and --help lists every command."""
    spec = importlib.util.find_spec(module)
    source = spec.loader.get_source(module) if spec is not None and spec.loader is not None else None
    doc = ast.get_docstring(ast.parse(source)) if source else None
    return (doc or "").split("\n")[0].removeprefix(f"`pcdms-aug {name}`: ").rstrip(".")


def commands() -> dict[str, tuple[str, str]]:
    """name -> (module, help): this package's own commands, then the installed plugins' (an own name wins)."""
    table = dict(COMMANDS)
    for ep in entry_points(group=PLUGIN_COMMANDS):
        if ep.name not in table:
            table[ep.name] = (ep.module, _plugin_help(ep.name, ep.module))
    return table


class _StoreOnce(argparse._StoreAction):
    """Every single-value flag of every command: given twice, the first value would be dropped silently, so a
    repeat is refused; a non-finite number (nan, inf) is refused for every float flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_flags", set())
        if self.dest in seen:
            parser.error(f"argument {option_string}: given more than once (give it once)")
        seen.add(self.dest)
        for v in values if isinstance(values, list) else [values]:
            if isinstance(v, float) and not math.isfinite(v):
                parser.error(f"argument {option_string}: {v!r} is not a finite number")
        super().__call__(parser, namespace, values, option_string)


def _strict(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if type(action) is argparse._StoreAction and action.option_strings:
            action.__class__ = _StoreOnce
        elif isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                _strict(p)
    for group in parser._mutually_exclusive_groups:
        for action in group._group_actions:
            if type(action) is argparse._StoreAction:
                action.__class__ = _StoreOnce


def _command_parser(name: str, sub) -> argparse.ArgumentParser:
    module, help_text = commands()[name]
    parser = sub.add_parser(name, help=help_text, description=help_text)
    importlib.import_module(module).configure(parser)
    _strict(parser)
    return parser


def _one_line(e: BaseException) -> str:
    """An exception as one line: DataError already names the file, row or key; others get their class."""
    text = " ".join(str(e).split()) or repr(e)
    if isinstance(e, DataError):
        return text
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or text}"
    if len(text) > 400:
        text = text[:400] + " ..."
    return f"{type(e).__name__}: {text}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("PCDMS_AUG_DEBUG"))
    while argv and argv[0] == "--debug":
        debug = True
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="pcdms-aug", description=__doc__.splitlines()[0],
                                     epilog="pcdms-aug --debug COMMAND ...: a traceback instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    table = commands()
    for name, (_, help_text) in table.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Only the chosen command's module is imported; the others stay unloaded.
    if argv and argv[0] in table:
        parser = argparse.ArgumentParser(prog="pcdms-aug")
        sub = parser.add_subparsers(dest="command")
        _command_parser(argv[0], sub)
    args = parser.parse_args(argv)
    args.__dict__.pop("_given_flags", None)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(table[args.command][0])
    try:
        rc = module.run(args)
    except KeyboardInterrupt:
        print(f"pcdms-aug {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line; --debug shows the traceback
        if debug:
            raise
        hint = "" if isinstance(e, DataError) else " (pcdms-aug --debug ... shows the traceback)"
        print(f"pcdms-aug {args.command}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return 2 if isinstance(e, (DataError, OSError)) else 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
