"""The locks: the runtime lock is closed under its packages' requirements and holds no test or lint tool; the dev lock
holds the tools and only what they need; both Python lines agree on the split."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"


def pins(name: str) -> dict[str, str]:
    lines = (REQUIREMENTS / name).read_text().splitlines()
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines if line and line[0] != "#")}


def top_level(name: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in (REQUIREMENTS / name).read_text().splitlines())
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


@pytest.mark.parametrize(("runtime", "dev"), [("lock.txt", "dev-lock.txt"), ("lock-py310.txt", "dev-lock-py310.txt")])
def test_runtime_and_dev_locks_split_the_tools_from_the_runtime(runtime: str, dev: str) -> None:
    rt, tools = pins(runtime), pins(dev)
    assert not rt.keys() & tools.keys()  # a package is pinned once
    assert top_level("dev.in") <= tools.keys() and not top_level("dev.in") & rt.keys()
    assert top_level("base.in") <= rt.keys()


def test_every_runtime_package_finds_its_requirements_in_the_runtime_lock() -> None:
    """Checked with the installed packages' metadata, on the lock of this interpreter's line."""
    rt = pins("lock.txt" if sys.version_info >= (3, 11) else "lock-py310.txt")
    missing = []
    for name in sorted(rt):
        dist = metadata.distribution(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # another platform or Python, or an extra nobody asked for
            if canonicalize_name(req.name) not in rt:
                missing.append(f"{name} needs {req.name}")
    assert not missing, missing
