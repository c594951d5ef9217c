"""Dataclass configs on the command line: every field becomes ``--field-name VALUE`` (tyro-style)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, group: str | None = None) -> None:
    """Add one option per field of dataclass ``cls``; defaults stay the dataclass's (argparse sees None)."""
    target = parser.add_argument_group(group or cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    docs = field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{docs.get(f.name, '')} (default: {default})".strip().replace("%", "%%")
        if kind is bool:
            target.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            target.add_argument(
                flag,
                dest=f.name,
                type=_parser_for(kind),
                default=None,
                metavar=f.name.upper(),
                help=help_text,
            )


def field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field in the class source: robocl documents config fields that way."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    pattern = re.compile(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", re.MULTILINE)
    return {name: text.strip() for name, text in pattern.findall(source)}


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from the parsed options that were given (others keep their defaults)."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if getattr(args, f.name, None) is not None
    }
    return cls(**{**values, **overrides})


def _parser_for(kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        (item, *_) = typing.get_args(kind) or (str,)
        convert = _parser_for(item)
        return lambda text: tuple(convert(x) for x in text.split(",") if x)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = _parser_for(options[0])
        return lambda text: None if text.lower() == "none" else inner(text)
    if kind in (int, float, str):
        return kind
    if origin is typing.Literal:
        return str
    raise TypeError(f"no command-line parser for a config field of type {kind}")
