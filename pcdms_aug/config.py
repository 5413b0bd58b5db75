"""Configuration: YAML files with ``_base_`` inheritance, ``key=value`` overrides, typed dataclasses.

One place decides how a config is read; each module declares its own dataclass and calls :func:`build`.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import DataError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or relative to the shipped ``configs/`` folder (``tiny/pipeline.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (CONFIG_ROOT / p, CONFIG_ROOT / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise DataError("config file not found (also looked under the shipped configs/)", path)


def deep_merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file, following ``_base_`` (a path or list of paths relative to the file)."""
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"invalid YAML: {e}", path) from None
    if not isinstance(data, dict):
        raise DataError("a config must be a mapping at the top level", path)
    bases = data.pop("_base_", [])
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, load_yaml(path.parent / b))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise DataError(f"override {text!r} must look like key=value (e.g. train.lr=1e-4)")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise DataError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    return apply_overrides(load_yaml(path), overrides)


T = typing.TypeVar("T")


def build(cls: type[T], data: Mapping | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the key."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DataError(f"unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = build(hint, value, f"{where}.{name}")
        elif hint in (tuple, typing.Tuple) or typing.get_origin(hint) is tuple:
            value = tuple(value) if isinstance(value, (list, tuple)) else value
        elif _numeric(hint) and isinstance(value, str):
            # YAML 1.1 reads '3e-4' (no dot) as a string; a numeric field takes it as the number it says.
            try:
                value = _numeric(hint)(value)
            except ValueError:
                raise DataError(f"{where}.{name} must be a number, got {value!r}") from None
        kwargs[name] = value
    return cls(**kwargs)


def _numeric(hint):
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else (hint,)
    for t in (float, int):
        if t in args:
            return t
    return None


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-friendly data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)
