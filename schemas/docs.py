"""Render docs/schemas.md from the schemas' field metadata: ``python -m schemas.docs > docs/schemas.md``."""

from __future__ import annotations

import pyarrow as pa

from schemas.commit_log import COMMIT_LOG_SCHEMA, COMMIT_LOG_VERSION
from schemas.features import SCHEMA_VERSION, SCHEMAS
from schemas.remix import REMIX_SCHEMA, REMIX_SCHEMA_VERSION

REMIX_INTRO = f"""
## The batch remix's output (version {REMIX_SCHEMA_VERSION})

`python -m ray_jobs.remix` (docs/serving.md) writes an output root with the same commit log, lease and staging as
an extraction, and two sets: `remix/` (below) and `errors/` (the extraction's `errors` schema above; `stage` is
`read`, `decode` or `remix`, `segment_index` is -1), keyed by (`source_id`, `segment_index`). Generated from
`schemas/remix.py`."""

LOG_INTRO = f"""
## The rolled-up commit log (version {COMMIT_LOG_VERSION})

Every output (extraction and batch remix) commits each batch with a JSON marker, `_commits/<batch>.json`. At the
start and the end of each extraction run the lease holder rolls the markers up (when there are at least 64) into one
Parquet file, `_commits/log/<time ns>-<id>.parquet`, one row per marker, and then deletes the JSON markers it holds;
past 16 such files, a roll-up merges them into one. Readers (`hummingml.output.read_markers`) read the JSON markers
first, then the log, and count a batch found in both once. Generated from `schemas/commit_log.py`."""

INTRO = f"""# Output schemas (version {SCHEMA_VERSION})

Generated from `schemas/features.py` by `python -m schemas.docs > docs/schemas.md`; a test keeps the two equal.

An extraction writes three Parquet sets (zstd) under its output root, keyed by (`source_id`, `segment_index`):
`audio-feature/`, `sine-audio-feature/` and `errors/`. Every file's key-value metadata holds `hummingml.schema`
(the set's name), `hummingml.schema_version`, and `hummingml.run`: JSON with the run's config, the identity of
every model (kind, name, sha256 of the weights file, library version, and whether the weights are random), library
versions, and the creation time. Features made with random-weight models (`tiny`, `random-full`) say so there
(`"random_weights": true`). A run also writes `summary.json` at the root: this run's inputs (ok, failed,
unaccounted, changed) and, under `output`, the whole output rebuilt from the commit log (sources, complete, failed,
incomplete, feature and error rows, superseded rows, committed sources the input no longer lists).

**Identity.** `source_id` is the sha256 of the input's canonical URI (`source_uri`): a local file's absolute path
with `.`/`..` removed and symlinks resolved (`file://` URIs understood), or `scheme://bucket/key` for an object store
(without `?options`). Every spelling of a file (relative, absolute, through a symlinked folder, `file://`) is one
source. `source_version` is the input's size and modification time when it was listed; a rerun that lists another
value processes the input again.

**Current rows.** The files hold every committed row; readers take the current ones through the commit log
(`hummingml.output.read_set`, used by `inspect`, training and evaluation): the newest commit of a key wins, and a
changed input's older rows are superseded. A plain `pyarrow.dataset` over a set's folder also sees superseded rows
(none unless an input changed, a damaged marker was set aside, or the output predates version 2.0).

**Version 2.0** (from 1.1): `source_id` hashes the canonical URI instead of the path as typed, `source_uri` holds
that canonical URI, and `source_version` is new (in all three sets). Outputs written before keep their ids; an
extraction into such an output is refused unless `--allow-config-change`. Extract into a new output instead: with
the flag, every older source counts as changed (its rows have no version), and an older source whose path was not
typed in canonical form keeps its rows under its old id beside the new ones (and is reported as not in the input).
Readers read older outputs as before, newest commit winning.

**Version 2.1** (from 2.0): `downmix` is new in both feature sets. An input of more than two channels, refused
before (`DecodeError:channels`), is mixed down to stereo by its channel layout (ITU-R BS.775 coefficients, README's
"Extraction"); `source_channels` keeps the input's count and `downmix` names the rule. Outputs written before have no
`downmix` column: readers see null there.

DAC codes are stored as nested lists `(channels, n_codebooks, frames)` of int16; frame `k` covers samples
`[256 k, 256 (k + 1))` of the segment at 22.05 kHz (86.13 frames/s).
"""


def _rows(fields: list[pa.Field], prefix: str = "") -> list[str]:
    lines = []
    for f in fields:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        lines.append(f"| `{prefix}{f.name}` | `{f.type}` | {meta.get('unit', '')} | {meta.get('doc', '')} |")
        inner = f.type
        while pa.types.is_list(inner):
            inner = inner.value_type
        if pa.types.is_struct(inner):
            lines.extend(_rows(list(inner), prefix=f"{prefix}{f.name}[].") if pa.types.is_list(f.type)
                         else _rows(list(inner), prefix=f"{prefix}{f.name}."))
    return lines


def render() -> str:
    """The whole document."""
    parts = [INTRO]
    for name, schema in SCHEMAS.items():
        parts.append(f"\n## `{name}`\n\n| field | type | unit | meaning |\n|---|---|---|---|")
        parts.extend(_rows(list(schema)))
    parts.append(LOG_INTRO)
    parts.append("\n### `_commits/log/*.parquet`\n\n| field | type | unit | meaning |\n|---|---|---|---|")
    parts.extend(_rows(list(COMMIT_LOG_SCHEMA)))
    parts.append(REMIX_INTRO)
    parts.append("\n### `remix`\n\n| field | type | unit | meaning |\n|---|---|---|---|")
    parts.extend(_rows(list(REMIX_SCHEMA)))
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
