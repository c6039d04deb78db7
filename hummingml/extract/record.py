"""The segment record: one :class:`Segment` per row as it moves between the extraction steps, its Arrow batches, and
its output tables.

A batch is a ``pyarrow.Table`` of :data:`SEGMENT_SCHEMA`: one column per field of :class:`Segment`, in its order.
Scalars are typed columns (a field that a stage has not set yet is null), ``error`` a struct, ``melody`` and
``mono_variants`` lists of structs, ``stems`` a struct with one field per stem, and ``metadata`` the manifest's JSON
string as it came. Every numpy array is a *tensor*: ``struct<shape: list<int64>, data: large_list<dtype>>``, its shape
and its values flattened in C order, so arrays whose shapes vary from row to row (segment lengths, channel counts,
frame counts) share a column, also inside lists and structs. Arrow's fixed-shape tensor type holds one shape per
column, and a variable-shape tensor type would tie the batches to one executor's extension types; a plain struct is
read by any Arrow consumer. :func:`to_table` makes a batch (a C-contiguous array is wrapped without a copy when it is
the only one of its column in the batch; otherwise the column's arrays are copied once into it) and :func:`from_table`
reads one back exactly (dtype, shape and bits), its arrays read-only views of the table's buffers. An executor sees
the schema and moves the columns as they are; nothing is pickled.

A row whose ``error`` is set is passed through untouched by later steps, so a failure in any stage becomes exactly one
error row and never takes good rows with it. :func:`feature_tables` maps finished rows onto the schemas in
``schemas.features``.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from hummingml.audio import (
    FEATURE_SAMPLE_RATE,
    STEMS,
    DecodeError,
)
from hummingml.extract.sources import Source, printable
from hummingml.stages.augment import MonoVariant
from hummingml.stages.pitch import NoteEvent

F32 = npt.NDArray[np.float32]
I16 = npt.NDArray[np.int16]

Batch = pa.Table  # a batch of segment records, of SEGMENT_SCHEMA
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
    stems: dict[str, F32] | None = None  # stem name -> (2, samples), in STEMS order; dropped by the codec step
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


# --- the Arrow schema --------------------------------------------------------------------------------------------


def tensor_type(dtype: pa.DataType) -> pa.StructType:
    """The Arrow type of a numpy array of ``dtype`` whose shape varies by row: its shape and its values in C order."""
    return pa.struct(
        [
            pa.field("shape", pa.list_(pa.int64()), nullable=False),
            pa.field("data", pa.large_list(dtype), nullable=False),
        ]
    )


AUDIO = tensor_type(pa.float32())
CODES = tensor_type(pa.int16())
NOTE = pa.struct(
    [("start_s", pa.float64()), ("end_s", pa.float64()), ("pitch", pa.int64()), ("amplitude", pa.float64())]
)
MELODY_STREAM = pa.struct(
    [("stream", pa.string()), ("notes", pa.list_(NOTE)), ("midi", pa.binary()), ("sine", AUDIO), ("sine_codes", CODES)]
)
STEMS_TYPE = pa.struct([(stem, AUDIO) for stem in STEMS])
VARIANT = pa.struct(
    [
        *[(f.name, pa.int64() if f.name == "noise_seed" else pa.float64()) for f in fields(MonoVariant)],
        ("codes", CODES),
    ]
)
ERROR = pa.struct([("stage", pa.string()), ("error_type", pa.string()), ("message", pa.string())])


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


SEGMENT_SCHEMA = pa.schema(
    [
        _f("source_id", pa.string(), "stable id of the input", nullable=False),
        _f("segment_index", pa.int64(), "0-based segment, -1 for a source row or an error of the whole source", False),
        _f("source_uri", pa.binary(), "the input's canonical URI (UTF-8; other bytes of a name as they are)", False),
        _f("open_uri", pa.binary(), "what to open, with an object store's ?options (source rows; bytes as source_uri)"),
        _f("source_version", pa.string(), "'<bytes>:<mtime ns>' as listed", nullable=False),
        _f("metadata", pa.string(), "JSON object of the manifest's extra columns", nullable=False),
        _f("skip_segments", pa.list_(pa.int64()), "segments an earlier run committed (source rows)"),
        _f("content_sha256", pa.string(), "sha256 of the input's bytes (hex)"),
        _f("source_sample_rate", pa.int64(), "sample rate of the decoded input (Hz)"),
        _f("source_channels", pa.int64(), "channel count of the input file"),
        _f("downmix", pa.string(), "the rule that mixed a multichannel input down to stereo ('' when none)"),
        _f("source_duration_s", pa.float64(), "duration of the whole input (s)"),
        _f("n_segments", pa.int64(), "segments of the source"),
        _f("n_skipped", pa.int64(), "segments of the source an earlier run committed"),
        _f("segment_start_s", pa.float64(), "segment start within the source (s)"),
        _f("segment_duration_s", pa.float64(), "segment duration (s)"),
        _f("segment_samples", pa.int64(), "samples of the segment at 22.05 kHz"),
        _f("audio", AUDIO, "float32 (channels, samples) at 22.05 kHz"),
        _f("mono", AUDIO, "the mono reference, float32 (1, samples)"),
        _f("stems", STEMS_TYPE, "each stem float32 (2, samples)"),
        _f("melody", pa.list_(MELODY_STREAM), "notes, MIDI, sine and sine codes per melodic stream"),
        _f("channel_codes", CODES, "int16 DAC codes of the channels, (channels, n_codebooks, frames)"),
        _f("stem_names", pa.list_(pa.string()), "names of the stems in stem_codes order"),
        _f("stem_codes", pa.list_(CODES), "int16 DAC codes per stem"),
        _f("mono_codes", CODES, "int16 DAC codes of the mono reference"),
        _f("mono_variants", pa.list_(VARIANT), "augmented copies of the mono reference and their codes"),
        _f("n_frames", pa.int64(), "DAC frames of the segment"),
        _f("error", ERROR, "set when the row failed: stage, error type, message"),
        _f("deferred", pa.string(), "set when the input was unreadable for a transient reason"),
    ]
)


def _is_tensor(type_: pa.DataType) -> bool:
    return pa.types.is_struct(type_) and [f.name for f in type_] == ["shape", "data"]


def _member(value: Any, name: str) -> Any:
    return value[name] if isinstance(value, dict) else getattr(value, name)


def _encode(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """Python values (None for null) as an Arrow array of ``type_``; structs from dataclasses or dicts."""
    nulls = [v is None for v in values]
    mask = pa.array(nulls, pa.bool_()) if any(nulls) else None
    if _is_tensor(type_):
        return _encode_tensors(values, type_, mask)
    if pa.types.is_struct(type_):
        children = [_encode([None if v is None else _member(v, f.name) for v in values], f.type) for f in type_]
        return pa.StructArray.from_arrays(children, fields=list(type_), mask=mask)
    if pa.types.is_list(type_):
        offsets = np.cumsum([0, *(0 if v is None else len(v) for v in values)], dtype=np.int32)
        items = [item for v in values if v is not None for item in v]
        return pa.ListArray.from_arrays(pa.array(offsets), _encode(items, type_.value_type), type=type_, mask=mask)
    return pa.array(values, type_)


def _encode_tensors(values: Sequence[Any], type_: pa.StructType, mask: pa.Array | None) -> pa.StructArray:
    data_type = type_.field("data").type
    dtype = np.dtype(data_type.value_type.to_pandas_dtype())
    for v in values:
        if v is not None and (not isinstance(v, np.ndarray) or v.dtype != dtype):
            raise TypeError(f"expected a numpy array of {dtype}, got {getattr(v, 'dtype', type(v).__name__)}")
    flat = [np.ascontiguousarray(v).reshape(-1) for v in values if v is not None]
    data = flat[0] if len(flat) == 1 else np.concatenate(flat) if flat else np.empty(0, dtype)
    offsets = np.cumsum([0, *(0 if v is None else v.size for v in values)], dtype=np.int64)
    shapes = pa.array([[] if v is None else [int(n) for n in v.shape] for v in values], pa.list_(pa.int64()))
    data_array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(data), type=data_type)
    return pa.StructArray.from_arrays([shapes, data_array], fields=list(type_), mask=mask)


def _decode(array: pa.Array) -> list[Any]:
    """The values of an Arrow array made by :func:`_encode` (structs as dicts, tensors as read-only numpy views)."""
    type_ = array.type
    valid = array.is_valid().to_pylist() if array.null_count else [True] * len(array)
    if _is_tensor(type_):
        shapes = _decode(array.field("shape"))
        data = array.field("data")
        offsets = data.offsets.to_numpy()
        flat = data.values.to_numpy(zero_copy_only=True)
        return [flat[offsets[i] : offsets[i + 1]].reshape(shapes[i]) if ok else None for i, ok in enumerate(valid)]
    if pa.types.is_struct(type_):
        names = [f.name for f in type_]
        columns = [_decode(array.field(i)) for i in range(len(names))]
        rows = zip(*columns, strict=True)
        return [dict(zip(names, row, strict=True)) if ok else None for ok, row in zip(valid, rows, strict=True)]
    if pa.types.is_list(type_):
        offsets = array.offsets.to_numpy()
        first = int(offsets[0])
        items = _decode(array.values.slice(first, int(offsets[-1]) - first))
        return [items[offsets[i] - first : offsets[i + 1] - first] if ok else None for i, ok in enumerate(valid)]
    return array.to_pylist()


# Fields that hold file names: a name's bytes that are not UTF-8 travel as they are (Python holds them as surrogates,
# as os.fsdecode does, which an Arrow string cannot carry).
NAME_FIELDS = ("source_uri", "open_uri")


def _name_bytes(name: str | None) -> bytes | None:
    return None if name is None else name.encode("utf-8", "surrogateescape")


def _segment(values: dict[str, Any]) -> Segment:
    """A :class:`Segment` from the decoded values of one row, its nested records typed."""
    for name in NAME_FIELDS:
        if values[name] is not None:
            values[name] = values[name].decode("utf-8", "surrogateescape")
    if values["error"] is not None:
        values["error"] = SegmentError(**values["error"])
    if values["melody"] is not None:
        values["melody"] = [
            MelodyStream(**{**m, "notes": [NoteEvent(**n) for n in m["notes"]]}) for m in values["melody"]
        ]
    if values["mono_variants"] is not None:
        values["mono_variants"] = [CodedVariant(**v) for v in values["mono_variants"]]
    return Segment(**values)


def to_table(segments: Iterable[Segment]) -> Batch:
    """A batch of :data:`SEGMENT_SCHEMA` holding ``segments`` in order (:func:`from_table` reads it back exactly).

    Raises:
        TypeError: an array field does not hold a numpy array of its column's dtype (float32 audio, int16 codes).
    """
    rows = list(segments)
    values = {f.name: [getattr(s, f.name) for s in rows] for f in SEGMENT_SCHEMA}
    for name in NAME_FIELDS:
        values[name] = [_name_bytes(v) for v in values[name]]
    columns = [_encode(values[f.name], f.type) for f in SEGMENT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=SEGMENT_SCHEMA)


def from_table(table: Batch) -> list[Segment]:
    """The segments of a batch made by :func:`to_table` (also a slice or a concatenation of batches), in order.

    Arrays are read-only views of the table's buffers, with the dtype and shape they were written with.
    """
    names = [f.name for f in fields(Segment)]
    columns = [[v for chunk in table.column(name).chunks for v in _decode(chunk)] for name in names]
    return [_segment(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)]


def fail_row(row: Segment, stage: str, exc: BaseException) -> None:
    """Turn ``row`` into an error row of ``stage`` in place (its audio and features dropped)."""
    kind = f":{exc.kind}" if isinstance(exc, DecodeError) else ""
    message = printable(str(exc) or repr(exc))  # a file name in it may hold bytes that are not UTF-8
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
            source_version=s.version,
            metadata=s.metadata,
            skip_segments=sorted((skip or {}).get(s.source_id, [])),
        )
        for s in sources
    )


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
                "channel_codes": _codes(row.channel_codes),
                "stem_names": row.stem_names,
                "stem_codes": [_codes(c) for c in row.stem_codes],
            }
        )
        melody = [
            {
                "stream": m.stream,
                "notes": [asdict(n) for n in m.notes],
                "midi": m.midi,
                "sine_codes": _codes(m.sine_codes),
            }
            for m in row.melody
        ]
        variants = [
            {**{f.name: getattr(v, f.name) for f in fields(MonoVariant)}, "codes": _codes(v.codes)}
            for v in row.mono_variants or []
        ]
        sine.append({**common, "mono_codes": _codes(row.mono_codes), "mono_variants": variants, "melody": melody})
    return {
        "audio-feature": pa.Table.from_pylist(audio, schema=SCHEMAS["audio-feature"]),
        "sine-audio-feature": pa.Table.from_pylist(sine, schema=SCHEMAS["sine-audio-feature"]),
        "errors": pa.Table.from_pylist(errors, schema=SCHEMAS["errors"]),
    }
