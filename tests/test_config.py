from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from hummingml.config import add_flags, from_dict, from_flags


@dataclass(frozen=True)
class Inner:
    kind: str = "tiny"  # which models
    seed: int = 0  # random seed


@dataclass(frozen=True)
class Outer:
    input: str = ""  # where audio comes from
    rate: float = 1.5  # a rate
    stems: tuple[str, ...] = ("a", "b")  # names
    retry: bool = False  # retry errors
    limit: int | None = None  # optional cap
    inner: Inner = field(default_factory=Inner)


def parse(argv: list[str]) -> Outer:
    parser = argparse.ArgumentParser()
    add_flags(parser, Outer)
    return from_flags(Outer, parser.parse_args(argv))


def test_defaults_when_no_flags() -> None:
    assert parse([]) == Outer()


def test_flags_of_every_kind() -> None:
    cfg = parse(["--input", "x", "--rate", "2", "--stems", "c, d", "--retry", "--limit", "3", "--inner-kind", "full"])
    assert cfg == Outer("x", 2.0, ("c", "d"), True, 3, Inner("full", 0))


def test_help_comes_from_field_comments(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, Outer)
    help_text = parser.format_help()
    assert "where audio comes from" in help_text and "--inner-seed" in help_text and "random seed" in help_text


def test_round_trip_through_asdict() -> None:
    cfg = Outer("x", 2.0, ("c",), True, None, Inner("full", 4))
    assert from_dict(Outer, dataclasses.asdict(cfg)) == cfg


def test_flags_docs_are_current() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "docs" / "render_flags.py"
    spec = importlib.util.spec_from_file_location("render_flags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (path.parent / "extract-flags.md").read_text() == module.render()
    assert (path.parent / "serve-flags.md").read_text() == module.render_serve()
    assert (path.parent / "study-flags.md").read_text() == module.render_study()
