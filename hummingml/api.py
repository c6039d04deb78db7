"""The Python API, for notebooks and scripts; the package root re-exports it (``hummingml.read_features``).

- :func:`run_extraction`: the extraction job (``hummingml extract``) from Python;
- :func:`read_features`: the current rows of an output's set as a ``ray.data.Dataset``;
- :func:`read_codes`, :func:`load_codec`, :func:`decode_codes`: one stored stream back to audio, as
  ``hummingml decode`` does it (:mod:`hummingml.eval.decode`).

Importing this module imports neither torch nor Ray; each function imports what it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import TYPE_CHECKING, Any, TextIO

from hummingml.config import from_flags
from hummingml.eval.decode import StoredCodes, decode_codes, load_codec, read_codes
from hummingml.extract.config import ExtractConfig

if TYPE_CHECKING:
    import ray.data

__all__ = ["StoredCodes", "decode_codes", "extract_config", "load_codec", "read_codes", "read_features",
           "run_extraction"]  # fmt: skip


def read_features(
    root: str | os.PathLike[str], set_name: str = "audio-feature", columns: list[str] | None = None
) -> ray.data.Dataset:
    """The current rows of one set of an extraction output, as a Ray Dataset (lazy: nothing is read yet).

    The files are the ones the output's commit markers name, and rows that a newer commit replaced are dropped
    (:mod:`hummingml.output`), as training reads them. Connects to Ray first (the cluster in ``RAY_ADDRESS``, else a
    local instance; nothing happens when this process is already connected).

    Args:
        root: the output root (local path or pyarrow URI such as ``s3://bucket/features``).
        set_name: ``audio-feature``, ``sine-audio-feature`` or ``errors`` (columns: docs/schemas.md).
        columns: the columns to read (all when None).

    Raises:
        ValueError: ``set_name`` is not one of the three sets.
        FileNotFoundError: the output has no committed file of that set (or ``root`` holds no output).
    """
    from schemas.features import SCHEMAS

    if set_name not in SCHEMAS:
        raise ValueError(f"set_name must be one of {', '.join(SCHEMAS)} (got {set_name!r})")
    from hummingml.cluster import connect
    from hummingml.train.ray import read_current

    connect()
    return read_current(os.fspath(root), set_name, columns)


def extract_config(input: str, output: str, **flags: Any) -> ExtractConfig:
    """The :class:`ExtractConfig` of ``hummingml extract --input INPUT --output OUTPUT`` with ``flags``.

    ``flags`` are the command's flags spelled as Python names, with Python values: ``segment_s=4.0``,
    ``melodic_stems=["vocals"]`` (any list or tuple for a list flag), ``models_kind="tiny"``,
    ``codec_n_codebooks=4``; a whole sub-config is taken too (``models=ModelsConfig(kind="tiny")``), with its own
    flags on top. A flag given as None keeps its default.

    Raises:
        hummingml.config.ConfigError: one line per bad value, naming its flag (:meth:`ExtractConfig.problems`).
        TypeError: a name that is no flag (the message names it).
    """
    hints = typing.get_type_hints(ExtractConfig)
    whole: dict[str, Any] = {}
    given: dict[str, Any] = {"input": input, "output": output}
    known: set[str] = set()
    for f in dataclasses.fields(ExtractConfig):
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub):
            known.update(f"{f.name}_{g.name}" for g in dataclasses.fields(sub))  # type: ignore[arg-type]
        else:
            known.add(f.name)
    for name, value in flags.items():
        if dataclasses.is_dataclass(hints.get(name)):
            if not isinstance(value, hints[name]):
                wanted, got = hints[name].__name__, type(value).__name__
                raise TypeError(f"run_extraction(): {name} must be a {wanted}, got {got}")
            whole[name] = value
        elif name in known - {"input", "output"}:
            # from_flags reads list flags as the command line gives them: comma-separated
            given[name] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        else:
            raise TypeError(f"run_extraction() got an unexpected keyword argument {name!r}")
    base = dataclasses.replace(ExtractConfig(), **whole)
    return from_flags(ExtractConfig, argparse.Namespace(**given), base=base)


def run_extraction(input: str, output: str, *, log: TextIO = sys.stdout, **flags: Any) -> dict[str, Any]:
    """Run the extraction job (``hummingml extract``) and return its summary (what ``summary.json`` holds).

    Named ``run_extraction``, not ``extract``: ``hummingml.extract`` is the extraction's subpackage, and a function
    of that name on the package root would be replaced by the subpackage as soon as it is imported.

    Args:
        input: what ``--input`` takes: a directory, glob, file, pyarrow URI, manifest or ``sqlite:///`` database.
        output: the output root; a rerun into the same root resumes (``--output``).
        log: where the job prints its config, plan and progress.
        flags: any other flag, see :func:`extract_config` (``segment_s=4.0``, ``models_kind="tiny"``).

    Raises:
        hummingml.config.ConfigError: one line per bad value (or a problem with the output, such as another
            driver's lease), raised before anything is written.
        TypeError: an unknown flag name.
    """
    cfg = extract_config(input, output, **flags)
    from hummingml.extract.job import run  # imports Ray

    return run(cfg, log=log)
