"""The pipeline config (``pipeline.yaml``): the order of the stages, the keys the file may hold and the sampling
defaults where it names none. The only place that knows the order of the stages."""
from __future__ import annotations

import difflib

from pcdms_aug.config.schema import DEFAULT_SAMPLER, SAMPLERS
from pcdms_aug.utils.errors import DataError, shown

ORDER = ("prior", "inpaint", "refine")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = {"prior": 1.0, "inpaint": 2.0, "refine": 2.0}  # upstream: no guidance in stage 1
DEFAULT_BATCH = 16
READ_BY_LOADING = ("stages", "weights", "random_weights")  # stage YAMLs, pretrained folders, random frozen parts


def _steps(v, hi=1000):
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= hi


def _number(lo, hi, lo_open=False):
    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if lo_open else v >= lo) \
            and (hi is None or v <= hi)
    return ok


# The keys beside READ_BY_LOADING (what ``assemble KEY=VALUE`` may change), each with its check: one place for
# what a valid sampling default is.
CONFIG_KEYS = {
    "image_size": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_steps(x, 2048) for x in v),
                   "[height, width], each 1..2048"),
    "batch_size": (lambda v: _steps(v, 4096), "an integer in 1..4096"),
    "sampling.scheduler": (lambda v: isinstance(v, str) and v in SAMPLERS, "one of " + ", ".join(SAMPLERS)),
    **{f"sampling.steps.{n}": (_steps, "an integer in 1..1000") for n in ORDER},
    **{f"sampling.guidance.{n}": (_number(0.0, None), "a number >= 0") for n in ORDER},
    "sampling.refine_strength": (_number(0.0, 1.0, lo_open=True), "a number in (0, 1]"),
    "sampling.refine_noise": (_number(0.0, 1.0), "a number in [0, 1]"),
}


def check_pipeline_config(cfg: dict, where: str = "pipeline config") -> None:
    """A DataError naming the first unknown key or bad value of a pipeline config (``stages`` aside)."""
    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if key in READ_BY_LOADING:
                _check_section(key, v, where)
                continue
            if isinstance(v, dict) and key in ("sampling", "sampling.steps", "sampling.guidance"):
                walk(v, key + ".")
                continue
            if key not in CONFIG_KEYS:
                near = difflib.get_close_matches(key, list(CONFIG_KEYS) + list(READ_BY_LOADING), n=1, cutoff=0.6)
                raise DataError(f"unknown key {shown(key)} in {where}"
                                + (f"; did you mean {near[0]!r}?" if near else "")
                                + f" (known: {', '.join(CONFIG_KEYS)})")
            ok, what = CONFIG_KEYS[key]
            if not ok(v):
                raise DataError(f"{key}={shown(v)} in {where}: must be {what}")
    walk(cfg, "")


def _check_section(key: str, v, where: str) -> None:
    """``stages`` {stage: file name or mapping}, ``weights`` {name: folder or null}, ``random_weights``."""
    if key == "random_weights":
        ok, what = isinstance(v, bool), "true or false"
    elif key == "stages":
        ok = isinstance(v, dict) and all(k in ORDER and isinstance(x, (str, dict)) for k, x in v.items())
        what = f"a mapping of {', '.join(ORDER)} to a file name or a mapping"
    else:
        ok = v is None or isinstance(v, dict) and all(isinstance(x, (str, type(None))) for x in v.values())
        what = "a mapping of names to folders"
    if not ok:
        raise DataError(f"{key}={shown(v)} in {where}: must be {what}")


def sampling_defaults(cfg: dict) -> dict:
    """The config's sampling settings with the defaults filled in: ``scheduler`` (a shorthand), ``steps`` and
    ``guidance`` ({stage: value}), ``refine_strength``, ``refine_noise``."""
    samp = cfg.get("sampling") or {}
    return {"scheduler": samp.get("scheduler") or DEFAULT_SAMPLER,
            "steps": {n: (samp.get("steps") or {}).get(n, DEFAULT_STEPS) for n in ORDER},
            "guidance": {n: (samp.get("guidance") or {}).get(n, DEFAULT_GUIDANCE[n]) for n in ORDER},
            "refine_strength": samp.get("refine_strength", 1.0), "refine_noise": samp.get("refine_noise", 1.0)}
