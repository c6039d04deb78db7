"""The dataset card of an output root: ``README.md``, whose front matter lets Hugging Face ``datasets`` load each set.

``OutputStore.write_summary`` rewrites the card after every run (atomically, from the commit markers, so the same
output gives the same card). Its YAML front matter has one entry under ``configs:`` per set with current rows, named
after the set, the store's first set (``audio-feature``; ``remix`` for the batch remix) the default::

    datasets.load_dataset(root)                        # audio-feature
    datasets.load_dataset(root, "sine-audio-feature")  # or "errors"

Each config's ``data_files`` are the committed files of its set that are in place (paths relative to the root, in
commit order): files that no marker names, staging and temporary files are never listed. A committed file all of
whose rows a newer commit superseded is left out, so ``load_dataset`` returns exactly the current rows of
``hummingml.output.read_set`` unless a file holds current and superseded rows together; the card then says how
many superseded rows ``load_dataset`` returns with them (files are never rewritten).

The body says what the sets are, their schema version and row counts, the run's models (with a RANDOM WEIGHTS
warning when any of them has random weights), the last run's summary and config, and where the columns are
documented (docs/schemas.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hummingml.output import CurrentView, current_view, join, open_root, read_markers
from schemas.features import SCHEMA_VERSION, SCHEMAS

CARD = "README.md"
SUMMARY = "summary.json"
RANDOM_KINDS = ("tiny", "random-full")  # model kinds whose weights are random (hummingml.weights.config.KINDS)
RANDOM_WARNING = "RANDOM WEIGHTS (features are not meaningful)"
SET_DESCRIPTIONS = {
    "audio-feature": "DAC codes of every channel of each segment and of each of its six stems",
    "sine-audio-feature": (
        "DAC codes of each segment's mono reference and of its augmented variants, and per melodic stream "
        "(the mono reference, then the melodic stems) the Basic Pitch notes, a MIDI file and the DAC codes of "
        "the notes' sine rendering"
    ),
    "errors": "one row per input (segment_index -1) or segment that failed: the stage, the error type and why",
    "remix": "one remixed upload per row: the FLAC bytes and a JSON report",
}


@dataclass
class SetFiles:
    """What the card lists of one set."""

    name: str
    files: list[str] = field(default_factory=list)  # committed files in place, relative to the root, oldest first
    rows: int = 0  # current rows in ``files``
    superseded_rows: int = 0  # superseded rows that ``files`` still hold (load_dataset returns them)
    superseded_files: int = 0  # committed files whose rows are all superseded: not listed
    missing_files: int = 0  # committed files with current rows that are not in their set's folder: not listed


def card_files(fs: pafs.FileSystem, path: str, current: CurrentView, name: str) -> SetFiles:
    """The files of the set ``name`` that the card lists, with their row counts (from ``current``'s markers).

    Unlike ``hummingml.output.set_files`` it lists only files in their set's folder, never staging: the card's paths
    must stay valid for readers that know nothing of the commit log.

    A marker's ok rows are in every set but ``errors``; its error rows are in ``errors``.
    """
    out = SetFiles(name)
    candidates: list[tuple[str, int, int]] = []  # (visible path, current rows, superseded rows)
    ok = name != "errors"
    for marker in current.markers:
        for final in marker.files.values():
            if not final.startswith(f"{name}/"):
                continue
            live = len(current.current_keys(marker, ok))
            if live:
                candidates.append((final, live, sum(r.ok == ok for r in marker.rows) - live))
            else:
                out.superseded_files += 1
    infos = fs.get_file_info([join(path, final) for final, _, _ in candidates])
    for (final, live, dead), info in zip(candidates, infos, strict=True):
        if info.type != pafs.FileType.File:
            out.missing_files += 1
            continue
        out.files.append(final)
        out.rows += live
        out.superseded_rows += dead
    return out


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing or not a JSON object."""
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_run(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """The run metadata (``hummingml.run``) and schema version a Parquet file's footer records ({} if none)."""
    with fs.open_input_file(path) as f:
        meta = pq.read_schema(f).metadata or {}
    run = json.loads(meta.get(b"hummingml.run", b"{}"))
    if b"hummingml.schema_version" in meta:
        run["schema_version"] = meta[b"hummingml.schema_version"].decode()
    return run


def recorded_run(root: str, newest_file: str | None = None) -> dict[str, Any]:
    """What an output records about its last run: ``summary.json``, with ``models``, ``config`` and ``versions`` filled
    in from the footer of ``newest_file`` (a path in the root's filesystem, as ``hummingml.output.set_files`` gives)
    where the summary lacks them (the batch remix's summary has none)."""
    fs, path = open_root(root)
    run = read_json(fs, join(path, SUMMARY))
    if newest_file is not None:
        for key, value in file_run(fs, newest_file).items():
            run.setdefault(key, value)
    return run


def random_models(run: Mapping[str, Any]) -> list[str]:
    """The models of a run (``recorded_run``) whose weights are random, as ``name (kind)``; [] for trained ones.

    A run records each model's identity under ``models`` (``random_weights`` per model) and the models' kind under
    ``config.models.kind`` (``tiny`` and ``random-full`` are random); either one saying so counts.
    """
    models = run.get("models") or []
    found = [f"{m.get('name')} ({m.get('kind')})" for m in models if isinstance(m, dict) and m.get("random_weights")]
    config_models = (run.get("config") or {}).get("models") or {}
    kind = config_models.get("kind") if isinstance(config_models, dict) else None
    if not found and kind in RANDOM_KINDS:
        found = [f"every model (kind {kind})"]
    if not found and run.get("random_weights"):
        found = ["the run's models"]
    return found


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def front_matter(sets: list[SetFiles], default: str) -> str:
    """The card's YAML front matter: one ``configs:`` entry per set with listed files."""
    lines = ["---", "configs:"]
    for s in sets:
        if not s.files:
            continue
        lines += [f"- config_name: {_yaml_str(s.name)}", "  data_files:", "  - split: train", "    path:"]
        lines += [f"    - {_yaml_str(f)}" for f in s.files]
        if s.name == default:
            lines.append("  default: true")
    if lines[-1] == "configs:":
        lines[-1] = "configs: []"
    return "\n".join([*lines, "---", ""])


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_card(
    root: str,
    summary: Mapping[str, Any],
    schemas: Mapping[str, pa.Schema] = SCHEMAS,
    schema_version: str = SCHEMA_VERSION,
) -> str:
    """The card of the output at ``root`` (read from its commit markers) after a run whose summary is ``summary``.

    ``schemas`` are the output's sets, the first one the default config; ``schema_version`` is their version.
    """
    fs, path = open_root(root)
    current = current_view(read_markers(fs, path, log=None)[0])
    sets = [card_files(fs, path, current, name) for name in schemas]
    default = next(iter(schemas))
    listed = [f for s in sets for f in s.files]
    run: dict[str, Any] = dict(summary)
    if listed:
        for key, value in file_run(fs, join(path, listed[-1])).items():
            run.setdefault(key, value)
    randoms = random_models(run)
    kind = "batch remix" if "remix" in schemas else "extraction"
    body = [f"# hummingml {kind} output", ""]
    if randoms:
        body += [
            f"> **{RANDOM_WARNING}.** These rows were made with random-weight models: {', '.join(randoms)}. "
            "The files, keys and accounting are real; what the models made (codes, stems, notes, audio) carries no "
            "musical meaning. "
            "Do not train or evaluate on them.",
            "",
        ]
    body += [
        "Written by hummingml after every run (the next run rewrites it). "
        f"Schema version {schema_version}: every column is documented in docs/schemas.md of the hummingml "
        "repository (one section per set), and in each field's `doc` and `unit` metadata.",
        "",
        "## Sets",
        "",
        "| set | what it holds | current rows | files listed |",
        "|---|---|---|---|",
    ]
    for s in sets:
        body.append(f"| `{s.name}` | {SET_DESCRIPTIONS.get(s.name, '')} | {s.rows} | {len(s.files)} |")
    empty = [s.name for s in sets if not s.files]
    body += [
        "",
        "Rows are keyed by (`source_id`, `segment_index`). "
        + (f"Sets without rows have no config: {', '.join(f'`{n}`' for n in empty)}." if empty else ""),
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'root = "path/to/this/folder"  # on a local disk (copy an object-store output down first)',
        *[
            f'load_dataset(root{"" if s.name == default else f", {_yaml_str(s.name)}"})["train"]'
            for s in sets
            if s.files
        ],
        "```",
        "",
        "Or, with hummingml: `hummingml.output.read_set(root, set_name)` (a pyarrow Table of the current rows).",
        "",
        "The configs name only committed Parquet files (each named by a commit marker in `_commits/`) that are in "
        "their set's folder; staging, temporary and marker files are never listed.",
    ]
    superseded = sum(s.superseded_rows for s in sets)
    dropped = sum(s.superseded_files for s in sets)
    missing = sum(s.missing_files for s in sets)
    if dropped:
        body.append(f"{dropped} committed file(s) whose rows were all superseded by newer commits are not listed.")
    if superseded:
        parts = ", ".join(f"{s.superseded_rows} in `{s.name}`" for s in sets if s.superseded_rows)
        body.append(
            f"**Superseded rows:** {superseded} superseded row(s) ({parts}) share files with current rows; "
            "`load_dataset` returns them too (drop all but the newest row of each key), `read_set` does not."
        )
    else:
        body.append("No listed file holds a superseded row: `load_dataset` returns exactly the current rows.")
    if missing:
        body.append(
            f"{missing} committed file(s) are not in their set's folder and not listed (a writer stopped before "
            "moving them): rerun the same command to finish them."
        )
    body += ["", "## Models", ""]
    models = [m for m in run.get("models") or [] if isinstance(m, dict)]
    if models:
        body += ["| model | kind | weights | sha256 |", "|---|---|---|---|"]
        for m in models:
            weights = "RANDOM" if m.get("random_weights") else ("none" if m.get("kind") == "null" else "trained")
            body.append(f"| {m.get('name')} | {m.get('kind')} | {weights} | `{str(m.get('sha256', ''))[:16]}` |")
    else:
        body.append("The run recorded no model identities.")
    versions = run.get("versions") or {}
    if versions:
        body += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v) + "."]
    scalars = {k: v for k, v in sorted(summary.items()) if isinstance(v, bool | int | float | str)}
    body += ["", "## Last run", "", "| field | value |", "|---|---|"]
    body += [f"| {k} | {_value(v)} |" for k, v in scalars.items()]
    body += ["", "Everything the run recorded is in `summary.json`. Its config:", "", "```json"]
    body += [json.dumps(run.get("config") or {}, indent=2, sort_keys=True, default=str), "```", ""]
    return front_matter(sets, default) + "\n" + "\n".join(body)
