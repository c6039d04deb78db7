"""The segment record travels in Arrow batches and comes back exactly: dtypes, shapes, bits, nested records."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from hummingml.audio import STEMS
from hummingml.extract.record import (
    BATCH_SCHEMA,
    CodedVariant,
    MelodyStream,
    Segment,
    SegmentError,
    feature_tables,
    from_table,
    source_rows,
    to_table,
)
from hummingml.extract.sources import Source
from hummingml.stages.pitch import NoteEvent


def assert_same(a: Any, b: Any, where: str = "segment") -> None:
    """``a`` and ``b`` are equal field by field, arrays in dtype, shape and bytes, scalars in type and value."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.tobytes() == b.tobytes(), where
    elif is_dataclass(a):
        assert type(a) is type(b), where
        for f in fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def _audio(rng: np.random.Generator, channels: int, samples: int) -> np.ndarray:
    audio = rng.standard_normal((channels, samples)).astype(np.float32)
    audio[0, :3] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max]  # a signed zero, a subnormal, the largest
    return audio


def _codes(rng: np.random.Generator, channels: int, frames: int) -> np.ndarray:
    return rng.integers(-(2**15), 2**15, (channels, 9, frames)).astype(np.int16)


def full_segment(seed: int = 0, samples: int = 1000) -> Segment:
    """A segment with every field set, arrays of several shapes (one of them empty)."""
    rng = np.random.default_rng(seed)
    audio = _audio(rng, 2, samples)
    frames = -(-samples // 256)
    notes = [NoteEvent(0.125, 0.5, 60, 0.75), NoteEvent(0.1, 1 / 3, 127, 1e-9)]
    return Segment(
        source_id=f"id{seed}",
        segment_index=3,
        source_uri="s3://bucket/ä/x.wav",
        open_uri="s3://bucket/ä/x.wav?region=eu",
        source_version="123:456",
        metadata='{"artist": "x", "n": 1.5}',
        skip_segments=[0, 2],
        content_sha256="ab" * 32,
        source_sample_rate=44_100,
        source_channels=6,
        downmix="5.1 (ITU-R BS.775)",
        source_duration_s=7.3,
        n_segments=8,
        n_skipped=2,
        segment_start_s=3.0,
        segment_duration_s=1 / 3,
        segment_samples=samples,
        audio=audio,
        mono=audio.mean(axis=0, keepdims=True),
        stems={stem: _audio(rng, 2, samples) for stem in STEMS},
        melody=[
            MelodyStream("mono", notes, b"MThd\x00\x00", _audio(rng, 1, samples), _codes(rng, 1, frames)),
            MelodyStream("vocals", [], b"", sine=np.zeros((1, 0), np.float32), sine_codes=None),
        ],
        channel_codes=_codes(rng, 2, frames),
        stem_names=list(STEMS),
        stem_codes=[_codes(rng, 1, frames) for _ in STEMS],
        mono_codes=_codes(rng, 1, frames),
        mono_variants=[CodedVariant(-3.5, 20.0, 1000.0, 4.5, 0.7, 12345, _codes(rng, 1, frames))],
        n_frames=frames,
        error=SegmentError("codec", "RuntimeError", "line one\nline two"),
        deferred="timed out",
    )


def test_a_batch_has_the_keys_as_columns() -> None:
    segments = [full_segment(seed=i) for i in range(2)]
    table = to_table(segments)
    assert table.schema.equals(BATCH_SCHEMA)
    assert table["source_id"].to_pylist() == [s.source_id for s in segments]
    assert table["segment_index"].to_pylist() == [s.segment_index for s in segments]


def test_a_fully_populated_segment_round_trips_exactly() -> None:
    segment = full_segment()
    (back,) = from_table(to_table([segment]))
    assert_same(segment, back)
    assert back.audio.dtype == np.float32 and back.channel_codes.dtype == np.int16


def test_an_error_segment_round_trips_exactly() -> None:
    error = Segment(
        source_id="e",
        segment_index=-1,
        source_uri="/data/bad.wav",
        open_uri="/data/bad.wav",
        source_version="10:20",
        skip_segments=[],
        content_sha256="00" * 32,
        error=SegmentError("decode", "DecodeError:corrupt", "not a RIFF file"),
    )
    (back,) = from_table(to_table([error]))
    assert_same(error, back)
    assert back.audio is None and back.melody is None and back.skip_segments == []


def test_the_first_batch_round_trips() -> None:
    sources = [
        Source("/a/x.wav", "ida", '{"k": "v"}', "/a/x.wav", "1:2"),
        Source("s3://b/y.flac?region=eu", "idb", "{}", "s3://b/y.flac", ""),
    ]
    table = source_rows(sources, {"idb": [4, 1]})
    rows = from_table(table)
    expected = [
        Segment("ida", -1, "/a/x.wav", "/a/x.wav", "1:2", '{"k": "v"}', skip_segments=[]),
        Segment("idb", -1, "s3://b/y.flac", "s3://b/y.flac?region=eu", "", "{}", skip_segments=[1, 4]),
    ]
    assert_same(expected, rows)
    assert to_table(rows).equals(table)


def test_slices_and_concatenations_read_back() -> None:
    """An executor hands a step slices of a block (one row) and concatenations of blocks."""
    segments = [full_segment(seed=i, samples=500 + 300 * i) for i in range(3)]
    segments[1].error, segments[1].audio, segments[1].stems = None, None, None
    table = to_table(segments)
    for i in range(3):
        assert_same(segments[i], from_table(table.slice(i, 1))[0])
    joined = pa.concat_tables([table.slice(2, 1), table.slice(0, 2), to_table([])])
    assert_same([segments[2], *segments[:2]], from_table(joined))
    assert_same(segments, from_table(joined.combine_chunks().take([1, 2, 0])))


def test_the_output_tables_do_not_change_when_rows_travel_as_tables() -> None:
    good = full_segment(seed=1)
    good.error = good.deferred = None
    good.melody[1].sine_codes = np.zeros((1, 9, 0), np.int16)
    bad = Segment("e", -1, "/bad.wav", error=SegmentError("read", "DecodeError:not_found", "gone"))
    before = feature_tables([good, bad], 86.13)
    after = feature_tables(from_table(to_table([good, bad])), 86.13)
    for name, table in before.items():
        assert after[name].equals(table, check_metadata=True), name
    assert before["audio-feature"].num_rows == before["errors"].num_rows == 1


def test_a_file_name_that_is_not_utf8_travels_unchanged() -> None:
    """A name's bytes that are not UTF-8 (held as surrogates, as os.fsdecode gives them) come back as they were."""
    name = b"/music/caf\xe9 \xff.wav".decode("utf-8", "surrogateescape")
    source = Source(uri=name, source_id="f" * 64, canonical=name, version="1:1")
    (back,) = from_table(source_rows([source]))
    assert back.source_uri == name and back.open_uri == name
    assert back.source_uri.encode("utf-8", "surrogateescape") == b"/music/caf\xe9 \xff.wav"
