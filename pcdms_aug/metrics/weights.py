"""Where the metric networks' weights come from: local files named in the metrics config, nothing downloaded.

A missing file refuses its metric with a one-line DataError naming the config key, the path and where to get
the file; files are read by :mod:`pcdms_aug.utils.torchfile` (``weights_only=True``, ``module.`` prefixes dropped).
"""
from __future__ import annotations

from pathlib import Path

from pcdms_aug.utils.errors import DataError


def resolve_weight_path(value, key: str, hint: str, special: dict | None = None) -> Path:
    """A configured weight file as a Path, or DataError(reason) saying what file is needed and where to get it.
    ``special`` maps names (e.g. ``lpips``) to functions that return an installed file or None."""
    if special and value in special:
        p = special[value]()
        if p is None:
            raise DataError(f"{key}={value!r} but no such file is installed; give a path to {hint}")
        return p
    if not value:
        raise DataError(f"{key} is not set; it must name a local copy of {hint}")
    p = Path(value).expanduser()
    if not p.is_file():
        raise DataError(f"{key}: file not found; it must be a local copy of {hint}", p)
    return p


def read_state(path: Path, what: str) -> dict:
    """The state dict in ``path`` (bare, or under ``state_dict`` / ``module``), ``module.`` prefixes removed."""
    from pcdms_aug.utils.torchfile import load, state_dict_of

    return state_dict_of(load(path, what=what), path)
