"""Job configs as frozen dataclasses, with command-line flags generated from their fields.

A field ``segment_s`` becomes ``--segment-s``; a field of a nested dataclass ``models.kind`` becomes
``--models-kind``. Each field's help text is the comment after it in the class body, read with ``inspect``.

Flags are checked before anything runs: :func:`from_flags` gathers every problem (a config that refuses its values,
and the lines of the config's ``problems()``) into one :class:`ConfigError`, and :func:`exit_on_config_error` prints
it as one ``PROG: error: ...`` line per problem on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class OperatorError(Exception):
    """A failure the operator fixes outside the code (weights that cannot be loaded offline, a checksum that does not
    match): :func:`one_line_errors` reports it as one line. ``hummingml.weights.config.ModelError`` is one."""


class ConfigError(ValueError):
    """A problem with a job's flags or with the state of its output that the operator must fix.

    The command-line entry points print it as one line (each line of the message is one problem) and exit with 2.
    """


def exit_on_problems(prog: str, problems: Sequence[str]) -> None:
    """Print ``{prog}: error: {problem}`` on stderr for each problem, then exit with 2; return when there are none."""
    if not problems:
        return
    for problem in problems:
        print(f"{prog}: error: {problem}", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def exit_on_config_error(prog: str) -> Iterator[None]:
    """Turn a :class:`ConfigError` raised in the block into :func:`exit_on_problems` (one line per message line)."""
    try:
        yield
    except ConfigError as exc:
        exit_on_problems(prog, str(exc).splitlines() or [type(exc).__name__])


def at_least(flag: str, value: float, low: float) -> list[str]:
    """``[problem]`` when ``value`` is not a finite number ``>= low``, else ``[]``."""
    if not math.isfinite(value):
        return [f"{flag} must be a finite number (got {value!r})"]
    return [] if value >= low else [f"{flag} must be >= {low:g} (got {value!r})"]


def above(flag: str, value: float, low: float) -> list[str]:
    """``[problem]`` when ``value`` is not a finite number ``> low``, else ``[]``."""
    if not math.isfinite(value):
        return [f"{flag} must be a finite number (got {value!r})"]
    return [] if value > low else [f"{flag} must be > {low:g} (got {value!r})"]


def within(flag: str, value: float, low: float, high: float) -> list[str]:
    """``[problem]`` when ``value`` is not in ``[low, high]`` (NaN is not), else ``[]``."""
    return [] if low <= value <= high else [f"{flag} must be in [{low:g}, {high:g}] (got {value!r})"]


def names_in(flag: str, names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Problems of a list flag whose values must be distinct names out of ``allowed``."""
    problems = []
    if unknown := [n for n in names if n not in allowed]:
        problems.append(f"{flag}: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{flag}: {', '.join(map(repr, repeated))} given more than once")
    return problems


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
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc, operator]
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
    """Build ``cls`` from parsed flags; fields whose flag was not given keep ``base``'s (or the class default).

    Raises:
        ConfigError: one line per problem: a config (or sub-config) whose ``__post_init__`` refused the values, and
            each line of the built config's ``problems()`` when it has that method (sub-configs are the parent's
            ``problems()``'s to check). A refused sub-config is replaced by its ``base`` or default to look further.
    """
    problems: list[str] = []
    cfg = _build(cls, args, prefix, base, problems)
    if (check := getattr(cfg, "problems", None)) is not None:
        problems += check(prefix.replace("_", "-")) if prefix else check()
    if problems or cfg is None:
        raise ConfigError("\n".join(problems))
    return cfg


def _build(cls: type[T], args: argparse.Namespace, prefix: str, base: T | None, problems: list[str]) -> T | None:
    """``cls`` from flags, or None when it refused its values; refusals are appended to ``problems``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    given_flags = []  # "--flag value" of each flag of this config that was given
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        current = getattr(base, f.name) if base is not None else None
        if dataclasses.is_dataclass(hint):
            if prefix:  # two levels deep: no flags, keep the default
                if base is not None:
                    values[f.name] = current
                continue
            sub = _build(hint, args, f"{f.name}_", current, problems)  # type: ignore[arg-type]
            if sub is None:  # refused: the base's or the default, so that the parent's problems() still runs
                sub = current if current is not None else hint()  # type: ignore[operator]
            values[f.name] = sub
            continue
        given = getattr(args, f"{prefix}{f.name}", None)
        if given is None:
            if base is not None:
                values[f.name] = current
            continue
        given_flags.append("--" + f"{prefix}{f.name}".replace("_", "-") + f" {given}")
        if _base_type(hint)[0] is tuple:
            given = tuple(s.strip() for s in str(given).split(",") if s.strip())
        values[f.name] = given
    try:
        return cls(**values)
    except (ValueError, ZeroDivisionError) as exc:
        problems.append(_name_flags(cls, prefix, str(exc), given_flags))
        return None


def _name_flags(cls: type, prefix: str, message: str, given_flags: list[str]) -> str:
    """``message`` with the field names of ``cls`` it mentions (``n_heads``, ``--kind``) written as their flags
    (``--model-n-heads``, ``--models-kind``). One that mentions none is prefixed with the flags given
    (``--model-n-heads 0: integer modulo by zero``), else with ``--{prefix}*``."""
    named = message
    for f in dataclasses.fields(cls):
        flag = "--" + f"{prefix}{f.name}".replace("_", "-")
        pattern = rf"(?<![\w-])(?:--)?(?:{f.name}|{f.name.replace('_', '-')})(?![\w-])"
        named = re.sub(pattern, flag, named)
    if named != message:
        return named
    if given_flags:
        return f"{' '.join(given_flags)}: {message}"
    return f"--{prefix.replace('_', '-')}*: {message}" if prefix else message


DRY_RUN_HELP = (
    "check every flag and print the run's plan (config, placement, what it would read and write) as JSON, then exit 0"
    " without reading the input, writing anything or starting Ray"
)


VERBOSE_HELP = "show the traceback of a failure instead of one line"


def job_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The parser every job starts from: its docstring as the description, ``--version``, ``--dry-run`` and
    ``--verbose``."""
    from hummingml import __version__

    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hummingml {__version__}")
    parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser


def verbose_requested(argv: Sequence[str] | None) -> bool:
    """Whether a job's command line asks for ``--verbose`` (read before its flags are parsed, so that a failure
    while parsing or checking them is reported the same way)."""
    return "--verbose" in (sys.argv[1:] if argv is None else argv)


def one_line_errors(prog: str, work: typing.Callable[[], object], verbose: bool = False) -> int:
    """Run ``work``; return what it returns when that is an exit code (an int), else 0.

    An expected failure (a model that cannot be loaded, a file that cannot be read, audio that cannot be decoded, a
    value a library refuses) becomes one line on stderr and exit code 1; ``verbose`` re-raises it for the traceback.
    A ``ConfigError`` passes through (one line, exit 2, from :func:`exit_on_config_error`); anything else is a bug and
    keeps its traceback.
    """
    import pyarrow as pa

    try:
        result = work()
    except ConfigError:
        raise
    except (OperatorError, OSError, ValueError, pa.ArrowException) as exc:  # DecodeError is a ValueError
        if verbose:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message} (--verbose shows the traceback)", file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def parse_job_flags(
    cls: type[T], prog: str, description: str | None, argv: list[str] | None = None
) -> tuple[T, bool]:
    """A job's command line -> (its config, whether ``--dry-run`` was given): :func:`job_parser` plus one flag per
    field of ``cls`` (:func:`add_flags`).

    Raises:
        ConfigError: one line per invalid flag value (``cls.problems()``).
    """
    parser = job_parser(prog, description)
    add_flags(parser, cls)
    args = parser.parse_args(argv)
    return from_flags(cls, args), bool(args.dry_run)


def print_plan(prog: str, plan: dict[str, Any], out: typing.TextIO | None = None) -> None:
    """The ``--dry-run`` output: one line saying nothing ran, then ``plan`` as indented JSON."""
    import json

    out = out or sys.stdout
    print(f"{prog}: dry run: the flags are valid; nothing was read, written or started", file=out)
    print(json.dumps(plan, indent=2, default=str), file=out, flush=True)


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
