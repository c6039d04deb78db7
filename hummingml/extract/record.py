"""The segment record: one row per segment that travels between the extraction steps, and its output tables.

A batch is ``{"source_id": [...], "segment_index": [...], "payload": [...]}`` where ``payload`` is a pickled dict per
row, so arrays of varying shapes travel through Ray's object store unchanged. A row whose payload has ``error`` set is
passed through untouched by later steps, so a failure in any stage becomes exactly one error row and never takes good
rows with it. :func:`feature_tables` maps finished rows onto the schemas in ``schemas.features``.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import numpy as np
import pyarrow as pa

from hummingml.audio import (
    FEATURE_SAMPLE_RATE,
    DecodeError,
)
from hummingml.extract.sources import Source, printable

Batch = dict[str, Any]


def pack(row: dict[str, Any]) -> bytes:
    """Serialise one row's payload."""
    return pickle.dumps(row, protocol=5)


def unpack(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    return pickle.loads(blob)


def unpack_batch(batch: Batch) -> list[dict[str, Any]]:
    """The rows of a batch, each unpickled."""
    return [unpack(b) for b in batch["payload"]]


def pack_batch(rows: list[dict[str, Any]]) -> Batch:
    """Rows -> a batch: key columns in the clear, each row pickled into ``payload``."""
    return {
        "source_id": np.array([r["source_id"] for r in rows], dtype=object),
        "segment_index": np.array([r["segment_index"] for r in rows], dtype=np.int64),
        "payload": np.array([pack(r) for r in rows], dtype=object),
    }


def batch_table(batch: Batch) -> pa.Table:
    """A packed batch as an Arrow table (a Ray Data block): key columns, and each row's pickled payload as binary."""
    return pa.table({
        "source_id": pa.array(list(batch["source_id"]), pa.string()),
        "segment_index": pa.array(batch["segment_index"], pa.int64()),
        "payload": pa.array(list(batch["payload"]), pa.binary()),
    })


def fail_row(row: dict[str, Any], stage: str, exc: BaseException) -> None:
    """Turn ``row`` into an error row of ``stage`` in place (its audio arrays dropped)."""
    kind = f":{exc.kind}" if isinstance(exc, DecodeError) else ""
    row["error"] = {"stage": stage, "error_type": type(exc).__name__ + kind, "message": str(exc) or repr(exc)}
    if not isinstance(exc, DecodeError | FileNotFoundError):
        row["error"]["message"] += "\n" + "".join(traceback.format_exception(exc)[-3:])
    for key in [k for k, v in row.items() if isinstance(v, np.ndarray)]:
        del row[key]  # an error row carries no audio


def source_rows(sources: list[Source], skip: dict[str, list[int]] | None = None) -> Batch:
    """The first batch of the pipeline: one row per source (``skip``: segments already committed, per source)."""
    rows = [
        {
            "source_id": s.source_id,
            "segment_index": -1,
            "source_uri": s.canonical or s.uri,  # the identity, stored in the output
            "open_uri": s.uri,  # what to open (an object store's URI keeps its ?options)
            "source_version": s.version,
            "metadata": s.metadata,
            "skip_segments": sorted((skip or {}).get(s.source_id, [])),
        }
        for s in sources
    ]
    return pack_batch(rows)


def _codes(array: np.ndarray) -> list:
    """int16 (channels, n_codebooks, frames) -> nested lists for Arrow."""
    return np.asarray(array, dtype=np.int16).tolist()


PROVENANCE_KEYS = (
    "source_id",
    "segment_index",
    "source_uri",
    "source_version",
    "content_sha256",
    "source_sample_rate",
    "source_channels",
    "source_duration_s",
    "segment_start_s",
    "segment_duration_s",
    "n_segments",
    "n_frames",
    "metadata",
)


def feature_tables(rows: list[dict[str, Any]], frame_rate: float) -> dict[str, pa.Table]:
    """The three output tables of a batch of finished rows (feature rows and error rows)."""
    from schemas.features import SCHEMAS

    audio, sine, errors = [], [], []
    for row in rows:
        if row.get("error"):
            errors.append(
                {
                    "source_id": row["source_id"],
                    "segment_index": row["segment_index"],
                    "source_uri": printable(row["source_uri"]),
                    "source_version": row.get("source_version", ""),
                    **row["error"],
                    "message": printable(row["error"]["message"]),
                }
            )
            continue
        common = {k: row[k] for k in PROVENANCE_KEYS}
        common["source_uri"] = printable(common["source_uri"])
        common.update(sample_rate=FEATURE_SAMPLE_RATE, frame_rate=frame_rate)
        audio.append(
            {
                **common,
                "channel_codes": _codes(row["channel_codes"]),
                "stem_names": row["stem_names"],
                "stem_codes": [_codes(c) for c in row["stem_codes"]],
            }
        )
        melody = [
            {"stream": m["stream"], "notes": m["notes"], "midi": m["midi"], "sine_codes": _codes(m["sine_codes"])}
            for m in row["melody"]
        ]
        variants = [{**v, "codes": _codes(v["codes"])} for v in row.get("mono_variants", [])]
        sine.append({**common, "mono_codes": _codes(row["mono_codes"]), "mono_variants": variants, "melody": melody})
    return {
        "audio-feature": pa.Table.from_pylist(audio, schema=SCHEMAS["audio-feature"]),
        "sine-audio-feature": pa.Table.from_pylist(sine, schema=SCHEMAS["sine-audio-feature"]),
        "errors": pa.Table.from_pylist(errors, schema=SCHEMAS["errors"]),
    }
