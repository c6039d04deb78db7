"""The segment record: one :class:`Segment` per row as it moves between the extraction steps, its batches, and its
output tables.

A batch is a ``pyarrow.Table`` of :data:`BATCH_SCHEMA`: each row's key (``source_id``, ``segment_index``) as typed
columns, and the whole record pickled (protocol 5) in ``record``, so that arrays of any shape travel unchanged.
Executors see the keys and move the records as one binary column. Records were also tried as nested Arrow columns
(each array a ``struct<shape, data: large_list>``): on the null-stage benchmark that made the Ray job about 7x slower
(499 -> 65 segments/s, ``benchmarks/README.md``), its cost in building and reading the nested arrays and in Ray's
serialization of them, so the record travels pickled. The output Parquet sets are typed (``schemas.features``).

A row whose ``error`` is set is passed through untouched by later steps, so a failure in any stage becomes exactly one
error row and never takes good rows with it. :func:`feature_tables` maps finished rows onto the schemas in
``schemas.features``.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from hummingml.audio import (
    FEATURE_SAMPLE_RATE,
    DecodeError,
)
from hummingml.extract.sources import Source, printable
from hummingml.stages.augment import MonoVariant
from hummingml.stages.pitch import NoteEvent

F32 = npt.NDArray[np.float32]
I16 = npt.NDArray[np.int16]

Batch: TypeAlias = pa.Table  # a batch of segment records, of BATCH_SCHEMA
Summary = dict[str, np.ndarray]  # a commit's summary columns (hummingml.extract.steps.CommitStep)


@dataclass
class SegmentError:
    """Why a row failed."""

    stage: str  # the stage that failed: read, decode, separate, pitch, codec
    error_type: str  # the exception's class, with DecodeError's kind after a colon
    message: str  # what went wrong, in words


@dataclass
class MelodyStream:
    """The notes of one melodic stream (the mono reference or a stem) and their sine rendering."""

    stream: str  # "mono" or a stem name
    notes: list[NoteEvent]  # Basic Pitch notes
    midi: bytes  # the notes as a standard MIDI file
    sine: F32 | None = None  # the notes' sine rendering, float32 (1, samples) at 22.05 kHz; dropped by the codec step
    sine_codes: I16 | None = None  # DAC codes of ``sine``, int16 (1, n_codebooks, frames); set by the codec step


@dataclass(frozen=True)
class CodedVariant(MonoVariant):
    """One augmented copy of the mono reference: its parameters and its DAC codes."""

    codes: I16  # int16 (1, n_codebooks, frames)


@dataclass
class Segment:
    """One row of the pipeline: a source (``segment_index == -1``, before decoding) or one of its segments.

    The first batch has one source row per input (:func:`source_rows`); the decode step turns it into its segments
    (or one error or deferred row), and each later step sets its fields. Fields a stage has not reached are None.
    Audio is float32 ``(channels, samples)`` at 22.05 kHz; DAC codes are int16 ``(channels, n_codebooks, frames)``.
    """

    source_id: str  # stable id of the input
    segment_index: int  # 0-based segment, or -1 for a source row and an error of the whole source
    source_uri: str  # the input's canonical URI, stored in the output
    open_uri: str | None = None  # what to open (an object store's URI with its ?options); source rows only
    source_version: str = ""  # "<size>:<mtime ns>" as listed ("" when it could not be stat'ed)
    metadata: str = "{}"  # JSON object of the manifest's extra columns
    skip_segments: list[int] | None = None  # segments an earlier run committed; source rows only
    stem_uris: dict[str, str] | None = None  # stem -> what to open, for the stems the manifest gives; source rows only
    content_sha256: str | None = None  # sha256 of the input's bytes (hex), once read
    source_sample_rate: int | None = None  # Hz, of the decoded input
    source_channels: int | None = None  # channels in the input file
    downmix: str | None = None  # the rule that mixed a multichannel input down to stereo ("" when none)
    source_duration_s: float | None = None  # duration of the whole input
    n_segments: int | None = None  # segments of the source
    n_skipped: int | None = None  # of them, segments an earlier run committed (``skip_segments``)
    segment_start_s: float | None = None  # segment start within the source
    segment_duration_s: float | None = None  # segment duration (the last segment may be shorter)
    segment_samples: int | None = None  # samples of the segment at 22.05 kHz
    audio: F32 | None = None  # the segment's channels; dropped by the codec step
    mono: F32 | None = None  # the mono reference, (1, samples); dropped by the codec step
    stems: dict[str, F32] | None = None  # stem name -> (2, samples), in STEMS order: the given stems after decoding,
    # all six after separation; dropped by the codec step
    stem_origins: list[str] | None = None  # per stem in STEMS order: "given" or the separation model's id
    melody: list[MelodyStream] | None = None  # the mono reference first, then each melodic stem
    channel_codes: I16 | None = None  # codes of ``audio``
    stem_names: list[str] | None = None  # names of the stems in ``stem_codes`` order
    stem_codes: list[I16] | None = None  # codes of each stem (mono or stereo)
    mono_codes: I16 | None = None  # codes of ``mono``
    mono_variants: list[CodedVariant] | None = None  # augmented copies of the mono reference
    n_frames: int | None = None  # DAC frames of the segment
    error: SegmentError | None = None  # set: the row failed, and later steps pass it through
    deferred: str | None = None  # set: the input was unreadable for a transient reason; never committed

    @property
    def nbytes(self) -> int:
        """Bytes held by the row's arrays (audio, stems, sines, codes)."""
        arrays = [self.audio, self.mono, self.channel_codes, self.mono_codes, *(self.stem_codes or [])]
        arrays += list((self.stems or {}).values())
        arrays += [a for m in self.melody or [] for a in (m.sine, m.sine_codes)]
        arrays += [v.codes for v in self.mono_variants or []]
        return sum(a.nbytes for a in arrays if a is not None)


BATCH_SCHEMA = pa.schema(
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("segment_index", pa.int64(), nullable=False),
        pa.field("record", pa.binary(), nullable=False),  # the Segment, pickled (protocol 5)
    ]
)


def to_table(segments: Iterable[Segment]) -> Batch:
    """A batch holding ``segments`` in order: their keys as columns, each record pickled (:func:`from_table`)."""
    rows = list(segments)
    return pa.table(
        {
            "source_id": pa.array([s.source_id for s in rows], pa.string()),
            "segment_index": pa.array([s.segment_index for s in rows], pa.int64()),
            "record": pa.array([pickle.dumps(s, protocol=5) for s in rows], pa.binary()),
        },
        schema=BATCH_SCHEMA,
    )


def from_table(table: Batch) -> list[Segment]:
    """The segments of a batch made by :func:`to_table` (also a slice or a concatenation of batches), in order."""
    return [pickle.loads(blob) for blob in table.column("record").to_pylist()]


def fail_row(row: Segment, stage: str, exc: BaseException) -> None:
    """Turn ``row`` into an error row of ``stage`` in place (its audio and features dropped)."""
    kind = f":{exc.kind}" if isinstance(exc, DecodeError) else ""
    message = str(exc) or repr(exc)
    if not isinstance(exc, DecodeError | FileNotFoundError):
        message += "\n" + "".join(traceback.format_exception(exc)[-3:])
    row.error = SegmentError(stage, type(exc).__name__ + kind, message)
    row.audio = row.mono = row.stems = row.channel_codes = row.mono_codes = None  # an error row carries no audio
    row.melody = row.stem_codes = row.mono_variants = None


def source_rows(sources: list[Source], skip: dict[str, list[int]] | None = None) -> Batch:
    """The first batch of the pipeline: one row per source (``skip``: segments already committed, per source)."""
    return to_table(
        Segment(
            source_id=s.source_id,
            segment_index=-1,
            source_uri=s.canonical or s.uri,  # the identity, stored in the output
            open_uri=s.uri,  # what to open (an object store's URI keeps its ?options)
            stem_uris=dict(s.stems) or None,
            source_version=s.version,
            metadata=s.metadata,
            skip_segments=sorted((skip or {}).get(s.source_id, [])),
        )
        for s in sources
    )


def _codes(array: npt.NDArray[np.integer]) -> list[Any]:
    """int16 (channels, n_codebooks, frames) -> nested lists for Arrow."""
    return np.asarray(array, dtype=np.int16).tolist()


_T = TypeVar("_T")


def required(row: Segment, value: _T | None, name: str) -> _T:
    """``value``, the field ``name`` of ``row``, which the row must have by now; raises ValueError when it is None."""
    if value is None:
        raise ValueError(f"segment {row.source_id}/{row.segment_index} has no error but no {name}")
    return value


PROVENANCE_KEYS = (
    "source_id",
    "segment_index",
    "source_uri",
    "source_version",
    "content_sha256",
    "source_sample_rate",
    "source_channels",
    "downmix",
    "source_duration_s",
    "segment_start_s",
    "segment_duration_s",
    "n_segments",
    "n_frames",
    "metadata",
)


def feature_tables(rows: list[Segment], frame_rate: float) -> dict[str, pa.Table]:
    """The three output tables of a batch of finished rows (feature rows and error rows)."""
    from schemas.features import SCHEMAS

    audio, sine, errors = [], [], []
    for row in rows:
        if row.error is not None:
            errors.append(
                {
                    "source_id": row.source_id,
                    "segment_index": row.segment_index,
                    "source_uri": printable(row.source_uri),
                    "source_version": row.source_version,
                    "stage": row.error.stage,
                    "error_type": row.error.error_type,
                    "message": printable(row.error.message),
                }
            )
            continue
        common = {k: getattr(row, k) for k in PROVENANCE_KEYS}
        common["source_uri"] = printable(common["source_uri"])
        common.update(sample_rate=FEATURE_SAMPLE_RATE, frame_rate=frame_rate)
        audio.append(
            {
                **common,
                "channel_codes": _codes(required(row, row.channel_codes, "channel_codes")),
                "stem_names": row.stem_names,
                "stem_codes": [_codes(c) for c in required(row, row.stem_codes, "stem_codes")],
                "stem_origins": row.stem_origins,
            }
        )
        melody = [
            {
                "stream": m.stream,
                "notes": [asdict(n) for n in m.notes],
                "midi": m.midi,
                "sine_codes": _codes(required(row, m.sine_codes, f"sine_codes of {m.stream}")),
            }
            for m in required(row, row.melody, "melody")
        ]
        variants = [
            {**{f.name: getattr(v, f.name) for f in fields(MonoVariant)}, "codes": _codes(v.codes)}
            for v in row.mono_variants or []
        ]
        mono_codes = _codes(required(row, row.mono_codes, "mono_codes"))
        sine.append({**common, "mono_codes": mono_codes, "mono_variants": variants, "melody": melody})
    return {
        "audio-feature": pa.Table.from_pylist(audio, schema=SCHEMAS["audio-feature"]),
        "sine-audio-feature": pa.Table.from_pylist(sine, schema=SCHEMAS["sine-audio-feature"]),
        "errors": pa.Table.from_pylist(errors, schema=SCHEMAS["errors"]),
    }
