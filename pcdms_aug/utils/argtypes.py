"""Argument types and actions shared by every command: a value out of range is refused by argparse with a
one-line message naming the flag, never reinterpreted (``--batch 0``, ``--guidance nan``) or left to fail
later with a traceback."""
from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    if len(text) > 30:
        raise argparse.ArgumentTypeError(f"{text[:20]}... ({len(text)} characters) is out of range")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_in(lo: int, hi: int):
    """An integer in [lo, hi]: every count has a maximum, so a huge value is refused before anything is sized
    by it (``--views 1000000000`` would allocate gigabytes first)."""
    def parse(text: str) -> int:
        v = _int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be an integer in {lo}..{hi}")
        return v
    parse.__name__ = f"integer in {lo}..{hi}"
    return parse


# The maxima of the counts every command shares (one place): far beyond any real use, far below exhaustion.
MAX_STEPS = 1000  # sampling steps of a stage (a scheduler's training timesteps)
MAX_BATCH = 4096
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds stop here
MAX_ITEMS = 10**9  # how many rows, pairs or images to take from a list (a sample, not an allocation)
steps_int = int_in(1, MAX_STEPS)
batch_int = int_in(1, MAX_BATCH)
seed_int = int_in(0, MAX_SEED)
items_int = int_in(1, MAX_ITEMS)


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """A finite number in [lo, hi] (``lo_open``: (lo, hi]); NaN and infinities are always refused."""
    left = "(" if lo_open else "["
    span = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v:g} is out of range {span}")
        return v
    parse.__name__ = f"number in {span}"
    return parse


def choice_list(choices: tuple[str, ...]):
    """A comma list of distinct names from ``choices`` (``--stages prior,inpaint``)."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"{bad[0] if bad else text!r} is not one of {', '.join(choices)}")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"{text!r} names a stage twice")
        return names
    parse.__name__ = "comma list"
    return parse


def size_hw(max_side: int = 4096):
    """``HxW`` (e.g. 128x64), each side 1..max_side: a huge canvas is refused, not allocated."""
    def parse(text: str) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH (e.g. 128x64)") from None
        if not (1 <= h <= max_side and 1 <= w <= max_side):
            raise argparse.ArgumentTypeError(f"{text!r}: each side must be 1..{max_side}")
        return h, w
    parse.__name__ = "HxW"
    return parse


def add_annotations_argument(parser, help_text: str) -> None:
    """``--annotations A B`` or ``--annotations A --annotations B`` (both read); a bare flag is refused."""
    parser.add_argument("--annotations", nargs="+", action="extend", default=None, metavar="CSV", help=help_text)
