"""Configuration: YAML files with ``_base_`` inheritance, ``key=value`` overrides, typed dataclasses.

One place decides how a config is read; each module declares its own dataclass and calls :func:`build`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pcdms_aug.utils.errors import DataError

# Installed from a wheel the configs sit inside the package (setup.py copies them); in the repository they are
# the top-level configs/ folder.
_PACKAGED = Path(__file__).resolve().parents[1] / "configs"
CONFIG_ROOT = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "configs"


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
    if not key.strip() or any(not k for k in key.strip().split(".")):
        raise DataError(f"override {text!r}: empty key")
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DataError(f"override {text!r}: the value is not valid YAML ({problem})") from None


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


def unknown_key_error(key: str, known, where: str) -> DataError:
    """An unknown key, named with its path and the nearest valid one (``sheduler`` -> ``scheduler``)."""
    import difflib

    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    listing = f" (known: {', '.join(sorted(known))})" if len(known) <= 24 else ""
    return DataError(f"unknown key {where}.{key}{hint}{listing}")


def build(cls: type[T], data: Mapping | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping. An unknown key or a value of the wrong type is an error naming
    the key's path (and the nearest valid key); YAML's '3e-4' string is read as the number a float field wants."""
    if data is not None and not isinstance(data, Mapping):
        raise DataError(f"{where} must be a mapping of keys, got {data!r}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise unknown_key_error(str(key), fields, where)
    hints = typing.get_type_hints(cls)
    return cls(**{name: _typed(hints.get(name, typing.Any), value, f"{where}.{name}")
                  for name, value in data.items()})


_NONE = type(None)


def _typed(hint, value, where: str):
    """``value`` as type ``hint`` says, or a DataError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return _finite(value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in (a for a in args if a is not _NONE):
            try:
                return _typed(arg, value, where)
            except DataError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else DataError(
            f"{where} must be {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise DataError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise DataError(f"{where} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        return _number(hint, value, where)
    if hint is str:
        if not isinstance(value, str):
            quote = " (quote it: YAML reads no/yes/off/on as booleans)" if isinstance(value, bool) else ""
            raise DataError(f"{where} must be a string, got {value!r}{quote}")
        return value
    if hint is tuple or origin is tuple or hint is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where} must be a list, got {value!r}")
        items = [_finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise DataError(f"{where} must have {len(args)} items, got {len(items)}")
            items = [_typed(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items))]
        elif args:
            items = [_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(items) if (hint is tuple or origin is tuple) else items
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise DataError(f"{where} must be a mapping, got {value!r}")
        return {k: _finite(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _number(kind, value, where: str):
    if isinstance(value, str):
        try:
            value = kind(value)  # YAML 1.1 reads '3e-4' (no dot) as a string
        except ValueError:
            raise DataError(f"{where} must be {_describe(kind)}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise DataError(f"{where} must be {_describe(kind)}, got {value!r}")
    if not math.isfinite(value):
        raise DataError(f"{where} must be a finite number, got {value!r}")
    return kind(value)


def _finite(value, where: str):
    """Any value, but a NaN or infinity anywhere inside it is refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")
    return value


def _describe(hint) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", _NONE: "null"}.get(
        hint, getattr(hint, "__name__", str(hint)))


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
