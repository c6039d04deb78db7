"""Job configs as frozen dataclasses, with command-line flags generated from their fields.

A field ``segment_s`` becomes ``--segment-s``; a field of a nested dataclass ``models.kind`` becomes
``--models-kind``. Each field's help text is the comment after it in the class body, read with ``inspect``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from ``name: type = default  # comment`` lines of a dataclass body.

    Comment-only lines right below a field line continue its comment.
    """
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    field_line = re.compile(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$")
    continuation = re.compile(r"^\s+#\s*(.+)$")
    comments: dict[str, str] = {}
    last = None
    for line in source.splitlines():
        if m := field_line.match(line):
            last = m.group(1)
            comments[last] = m.group(2).strip()
        elif last and (c := continuation.match(line)):
            comments[last] += " " + c.group(1).strip()
        else:
            last = None
    return comments


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of an annotation like ``int``, ``str | None``, ``tuple[str, ...]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])[0], True
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    if origin in (tuple, list):
        return tuple, False
    return annotation, False


FLAG_TYPES = (str, int, float, bool, tuple)


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one flag per field of dataclass ``cls``, and per field of its dataclass-typed fields (one level deep).

    Help text is the field's ``metadata["help"]`` or the comment after it. Fields of other types (mappings) and
    dataclasses nested two levels deep get no flag; they keep their defaults.
    """
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not prefix:
                add_flags(parser, hint, prefix=f"{f.name}_")  # type: ignore[arg-type]
            continue
        base, _ = _base_type(hint)
        if base not in FLAG_TYPES:
            continue
        dest = f"{prefix}{f.name}"
        flag = "--" + dest.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f.metadata.get("help") or comments.get(f.name, "")
        help_text = f"{text} (default: {default!r})".strip()
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        if base is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif base is tuple:
            parser.add_argument(flag, dest=dest, default=None, help=help_text + "; comma-separated")
        else:
            parser.add_argument(flag, dest=dest, type=base, default=None, choices=choices, help=help_text)


def from_flags(cls: type[T], args: argparse.Namespace, prefix: str = "", base: T | None = None) -> T:
    """Build ``cls`` from parsed flags; fields whose flag was not given keep ``base``'s (or the class default)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        current = getattr(base, f.name) if base is not None else None
        if dataclasses.is_dataclass(hint):
            if prefix:  # two levels deep: no flags, keep the default
                if base is not None:
                    values[f.name] = current
                continue
            values[f.name] = from_flags(hint, args, prefix=f"{f.name}_", base=current)  # type: ignore[arg-type]
            continue
        given = getattr(args, f"{prefix}{f.name}", None)
        if given is None:
            if base is not None:
                values[f.name] = current
            continue
        if _base_type(hint)[0] is tuple:
            given = tuple(s.strip() for s in str(given).split(",") if s.strip())
        values[f.name] = given
    return cls(**values)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        hint, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)  # type: ignore[arg-type]
        elif _base_type(hint)[0] is tuple and value is not None:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def flags_markdown(cls: type) -> str:
    """A Markdown table of the flags ``add_flags`` makes for ``cls`` (used to keep the docs current)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_flags(parser, cls)
    lines = ["| flag | meaning |", "|---|---|"]
    for action in parser._actions:
        flag = " / ".join(f"`{o}`" for o in action.option_strings)
        lines.append(f"| {flag} | {(action.help or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"
