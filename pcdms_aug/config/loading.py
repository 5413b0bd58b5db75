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

from pcdms_aug.utils.errors import DataError, shown

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


# A config is a few kilobytes. These bound the work any file can ask for before a value is looked at: YAML
# aliases share one node, so a few hundred bytes can stand for billions of values once walked or printed.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000  # values after alias expansion
MAX_BASE_DEPTH = 16
MAX_DEPTH = 64  # levels of nesting
MAX_STRING = 4096  # the longest path Linux accepts
MAX_NUMBER = 2**63  # no count, size or seed is larger; larger integers are refused, not rounded


def read_config_text(path: Path, limit: int = MAX_CONFIG_BYTES, what: str = "") -> str:
    """A config file's text, refused by name when it is too large to be a config or not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror})", path) from None
    if len(data) > limit:
        raise DataError(f"too large (over {limit} bytes)", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what}not UTF-8 text (byte {e.start})", path) from None


def _expanded_size(node, where) -> None:
    """Refuse a YAML node graph that expands to more than MAX_CONFIG_VALUES values, or holds a cycle; counted
    over the shared nodes (memoised), so the count itself costs the size of the file, not of the expansion."""
    size: dict[int, int] = {}
    stack = [(node, False)]
    on_path: set[int] = set()
    while stack:
        n, done = stack.pop()
        key = id(n)
        if done:
            on_path.discard(key)
            kids = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else n.value
            size[key] = 1 + sum(size[id(c)] for c in kids)
            if size[key] > MAX_CONFIG_VALUES:
                raise DataError(f"the YAML expands to over {MAX_CONFIG_VALUES} values (aliases of aliases); "
                                "refused before it is expanded", where)
            continue
        if key in size:
            continue
        if key in on_path:
            raise DataError("the YAML refers to itself (an alias inside its own anchor)", where)
        if not isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
            size[key] = 1
            continue
        on_path.add(key)
        stack.append((n, True))
        kids = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else n.value
        stack.extend((c, False) for c in kids if id(c) not in size)


def _flow_depth(text: str) -> int:
    """How deeply ``[`` and ``{`` nest outside quotes (PyYAML's scanner takes quadratic time over it: 3000
    levels take seconds before its parser gives up)."""
    depth = top = 0
    quote = None
    for c in text:
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
            top = max(top, depth)
        elif c in "]}":
            depth -= 1
    return top


def parse_yaml(text: str, where) -> Any:
    """YAML text as plain data (``yaml.SafeLoader``: no object is ever built from a tag), with its expansion
    bounded first; any problem is a one-line DataError naming ``where``."""
    if _flow_depth(text) > MAX_DEPTH:
        raise DataError(f"the YAML is nested too deeply (over {MAX_DEPTH} levels)", where)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise DataError(f"invalid YAML: {shown(problem, 120)}{at}", where) from None
    except RecursionError:
        raise DataError("the YAML is nested too deeply", where) from None
    finally:
        loader.dispose()


def read_json(path: str | Path, what: str = "file", limit: int = MAX_CONFIG_BYTES) -> Any:
    """A JSON file written by this program (a stage's config.json, a run's settings), read with the same bounds
    as a config: too large, not UTF-8, not JSON or nested too deeply is a DataError naming the file."""
    import json

    path = Path(path)
    try:
        return json.loads(read_config_text(path, limit, f"corrupt {what}: "))
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt {what}: {e.msg} (line {e.lineno}, column {e.colno})", path) from None
    except RecursionError:
        raise DataError(f"corrupt {what}: nested too deeply", path) from None


def load_yaml(path: str | Path, _chain: tuple = ()) -> dict:
    """Read a YAML file, following ``_base_`` (a path or list of paths relative to the file)."""
    path = resolve_config_path(path)
    real = path.resolve()
    if real in _chain:
        raise DataError("_base_ includes itself: " + " -> ".join(p.name for p in (*_chain, real)), path)
    if len(_chain) >= MAX_BASE_DEPTH:
        raise DataError(f"_base_ chain deeper than {MAX_BASE_DEPTH} files", path)
    data = parse_yaml(read_config_text(path), path) or {}
    if not isinstance(data, dict):
        raise DataError("a config must be a mapping at the top level", path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise DataError(f"_base_ must be a file name or a list of file names, got {shown(bases)}", path)
    merged: dict = {}
    for b in bases:
        merged = deep_merge(merged, load_yaml(path.parent / b, (*_chain, real)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise DataError(f"override {shown(text)} must look like key=value (e.g. train.lr=1e-4)")
    key, value = text.split("=", 1)
    if not key.strip() or any(not k for k in key.strip().split(".")):
        raise DataError(f"override {shown(text)}: empty key")
    if not value.strip():
        return key.strip().split("."), ""
    try:
        return key.strip().split("."), parse_yaml(value, f"override {shown(text)}")
    except DataError as e:
        raise DataError(f"override {shown(text)}: the value is not valid YAML ({e.reason})") from None


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise DataError(f"override {shown(text)}: {shown(k)} is not a section")
        node[keys[-1]] = value
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    return apply_overrides(load_yaml(path), overrides)


T = typing.TypeVar("T")


def unknown_key_error(key: str, known, where: str) -> DataError:
    """An unknown key, named with its path and the nearest valid one (``sheduler`` -> ``scheduler``)."""
    import difflib

    key = key if len(key) <= 80 else key[:80] + "..."
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    listing = f" (known: {', '.join(sorted(known))})" if len(known) <= 24 else ""
    return DataError(f"unknown key {where}.{key}{hint}{listing}")


def build(cls: type[T], data: Mapping | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping. An unknown key or a value of the wrong type is an error naming
    the key's path (and the nearest valid key); YAML's '3e-4' string is read as the number a float field wants."""
    if data is not None and not isinstance(data, Mapping):
        raise DataError(f"{where} must be a mapping of keys, got {shown(data)}")
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
            f"{where} must be {' or '.join(_describe(a) for a in args)}, got {shown(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise DataError(f"{where} must be one of {', '.join(map(repr, args))}, got {shown(value)}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise DataError(f"{where} must be true or false, got {shown(value)}")
        return value
    if hint in (int, float):
        return _number(hint, value, where)
    if hint is str:
        if not isinstance(value, str):
            quote = " (quote it: YAML reads no/yes/off/on as booleans)" if isinstance(value, bool) else ""
            raise DataError(f"{where} must be a string, got {shown(value)}{quote}")
        return _finite(value, where)
    if hint is tuple or origin is tuple or hint is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where} must be a list, got {shown(value)}")
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
            raise DataError(f"{where} must be a mapping, got {shown(value)}")
        if args and args[-1] is not typing.Any:
            return {k: _typed(args[-1], v, f"{where}.{k}") for k, v in value.items()}
        return {k: _finite(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _number(kind, value, where: str):
    if isinstance(value, str):
        try:
            value = kind(value)  # YAML 1.1 reads '3e-4' (no dot) as a string
        except ValueError:
            raise DataError(f"{where} must be {_describe(kind)}, got {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where} must be {_describe(kind)}, got {shown(value)}")
    if isinstance(value, int):
        if abs(value) > MAX_NUMBER:  # beyond a float (a 400-digit integer): no setting is that large
            raise DataError(f"{where} is out of range, got {shown(value)}")
        return kind(value)
    if not math.isfinite(value):
        raise DataError(f"{where} must be a finite number, got {shown(value)}")
    if kind is int and not value.is_integer():
        raise DataError(f"{where} must be {_describe(kind)}, got {shown(value)}")
    return kind(value)


def _finite(value, where: str):
    """Any value, but a NaN or infinity anywhere inside it is refused, and so is a string no setting holds
    (a NUL byte, which no path may contain, or thousands of characters)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where} must be a finite number, got {shown(value)}")
    if isinstance(value, str) and ("\0" in value or len(value) > MAX_STRING):
        raise DataError(f"{where}: {shown(value)} is not a setting "
                        f"({'a NUL byte' if chr(0) in value else f'over {MAX_STRING} characters'})")
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


def check_ranges(obj, ranges: Mapping[str, tuple], where: str) -> None:
    """Each named integer field of ``obj`` in its [lo, hi]: the one check of a count read from a config."""
    for key, (lo, hi) in ranges.items():
        v = getattr(obj, key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise DataError(f"{where}.{key} must be an integer in {lo}..{hi}, got {shown(v)}")


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
