"""Command-line flags declared once, on the fields of a config dataclass.

A field made with :func:`option` is a config key (YAML) and a flag: its help, type and choices live in the
field's metadata. :func:`add_options` adds a flag per such field (the fields of a nested config dataclass get
its name as prefix: ``filter.top`` is ``--filter-top``); :func:`given_options` reads back what the command line
set. A plain field is a YAML key only. Every flag defaults to None (not given), so a YAML value stands unless a
flag replaces it; the field's own default is the default of both.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

_KEY = "option"


class later:
    """A flag argument that needs a heavy import (torch): computed when the parser is built, not at import."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make


def option(default: Any = None, *, help: str | None = None, flag: str | None = None, group: str | None = None,
           default_factory: Callable[[], Any] | None = None, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line flag. ``flag``: its name when not ``--<field-name>``;
    ``group``: flags of one group name are mutually exclusive; ``argparse_kwargs`` (type, choices, nargs,
    action, metavar) go to ``add_argument``, where a :class:`later` value is computed first."""
    meta = {_KEY: dict(help=help, flag=flag, group=group, **argparse_kwargs)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _flag_fields(cls, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict]]:
    """(key path, flag metadata) of every option field of ``cls`` and of its nested config dataclasses."""
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested):
            yield from _flag_fields(nested, path)
        elif _KEY in f.metadata:
            yield path, f.metadata[_KEY]


def _dest(path: tuple[str, ...]) -> str:
    return "_".join(path)


def add_options(parser, cls) -> None:
    """One flag per option field of ``cls`` (in field order), each defaulting to None."""
    groups: dict[str, Any] = {}
    for path, meta in _flag_fields(cls):
        meta = dict(meta)
        flag = meta.pop("flag") or "--" + _dest(path).replace("_", "-")
        group = meta.pop("group")
        kwargs = {k: v.make() if isinstance(v, later) else v for k, v in meta.items() if v is not None}
        target = parser
        if group is not None:
            if group not in groups:
                groups[group] = parser.add_mutually_exclusive_group()
            target = groups[group]
        target.add_argument(flag, dest=_dest(path), default=None, **kwargs)


def given_options(args, cls) -> list[tuple[tuple[str, ...], Any]]:
    """(key path, value) of every option flag given on the command line (``args`` from :func:`add_options`)."""
    given = [(path, getattr(args, _dest(path), None)) for path, _ in _flag_fields(cls)]
    return [(path, value) for path, value in given if value is not None]
