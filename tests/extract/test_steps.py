"""The decode step streams: its segments equal decoding the whole file, resampling it and cutting it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from hummingml.audio import FEATURE_SAMPLE_RATE, AudioReader, decode, resample, resampled_pieces
from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import Segment, SegmentError, from_table, source_rows, to_table
from hummingml.extract.sources import Source
from hummingml.extract.steps import CommitStep, DecodeStep
from hummingml.testing.hostile import encode


def _noise(channels: int, seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (channels, round(seconds * rate))).astype(np.float32)


def decoded(path: Path, segment_s: float, skip: list[int] | None = None) -> list[Segment]:
    batch = source_rows([Source(str(path), "x")], {"x": skip or []})
    return from_table(DecodeStep(ExtractConfig(segment_s=segment_s))(batch))


@pytest.mark.parametrize(
    ("fmt", "subtype", "channels", "rate", "seconds"),
    [("WAV", "PCM_16", 2, 44_100, 7.3), ("FLAC", "PCM_24", 1, 48_000, 5.0), ("WAV", "FLOAT", 2, 96_000, 3.01),
     ("WAV", "PCM_16", 1, 22_050, 4.0), ("OGG", "VORBIS", 2, 44_100, 2.5)],
)  # fmt: skip
def test_streamed_segments_equal_whole_file_decoding(tmp_path, fmt, subtype, channels, rate, seconds) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encode(_noise(channels, seconds, rate), rate, fmt, subtype))
    whole, source_rate = decode(path)
    expected = resample(whole, source_rate, FEATURE_SAMPLE_RATE)
    seg = round(1.0 * FEATURE_SAMPLE_RATE)
    rows = decoded(path, 1.0)
    assert [r.segment_index for r in rows] == list(range(-(-expected.shape[1] // seg)))
    for r in rows:
        i = r.segment_index
        assert r.n_segments == len(rows) and r.source_channels == channels and r.source_sample_rate == rate
        np.testing.assert_array_equal(r.audio, expected[:, i * seg : (i + 1) * seg])
    assert rows[0].source_duration_s == whole.shape[1] / rate


def test_blocks_and_pieces_of_any_size_give_the_same_samples(tmp_path) -> None:
    data = encode(_noise(2, 3.0, 44_100, seed=1), 44_100)
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    whole = resample(decode(path)[0], 44_100, FEATURE_SAMPLE_RATE)
    for block_frames in (1, 1000, 4096, 1 << 20):
        with path.open("rb") as f:
            reader = AudioReader(f, len(data), block_frames=block_frames)
            assert reader.frames == 3 * 44_100 and reader.channels == 2
            for piece_samples in (777, 22_050, 10**6):
                pieces = list(resampled_pieces(reader, FEATURE_SAMPLE_RATE, piece_samples))
                assert all(p.shape[1] == piece_samples for p in pieces[:-1])
                np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole)


def test_skipped_segments_are_not_emitted(tmp_path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(encode(_noise(2, 4.5, 44_100), 44_100))
    assert [r.segment_index for r in decoded(path, 1.0, skip=[0, 2])] == [1, 3, 4]


def test_a_six_channel_file_becomes_stereo_segments_that_record_the_downmix(tmp_path) -> None:
    """More than two channels are mixed down (ITU-R BS.775 for 5.1), not refused; the row says so."""
    from hummingml.audio import downmix_to_stereo

    path = tmp_path / "surround.wav"
    path.write_bytes(encode(_noise(6, 2.5, 44_100), 44_100, "WAV", "FLOAT"))
    whole, rate = decode(path)
    stereo, rule = downmix_to_stereo(whole)
    expected = resample(stereo, rate, FEATURE_SAMPLE_RATE)
    seg = round(1.0 * FEATURE_SAMPLE_RATE)
    rows = decoded(path, 1.0)
    assert [r.segment_index for r in rows] == [0, 1, 2] and all(r.error is None for r in rows)
    for r in rows:
        assert (r.source_channels, r.downmix) == (6, "itu-r-bs775-5.1") and rule == r.downmix
        i = r.segment_index
        assert r.audio.shape[0] == 2
        np.testing.assert_array_equal(r.audio, expected[:, i * seg : (i + 1) * seg])
    path.write_bytes(encode(_noise(2, 0.5, 44_100), 44_100))
    assert [(r.source_channels, r.downmix) for r in decoded(path, 1.0)] == [(2, "")]  # stereo: nothing mixed


def test_a_failure_on_the_second_reading_accounts_for_every_remaining_segment(tmp_path, monkeypatch) -> None:
    """The file is checked end to end first; if it still fails later (changed, I/O error), nothing goes missing."""
    from hummingml.extract import steps

    path = tmp_path / "x.wav"
    path.write_bytes(encode(_noise(2, 4.5, 44_100), 44_100))
    real = steps.resampled_pieces

    def breaks_after_two(*args, **kwargs):
        for n, piece in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise OSError(5, "Input/output error")
            yield piece

    monkeypatch.setattr(steps, "resampled_pieces", breaks_after_two)
    rows = decoded(path, 1.0, skip=[3])
    assert [(r.segment_index, r.error is not None) for r in rows] == [(0, False), (1, False), (2, True), (4, True)]
    assert rows[2].error.stage == "decode" and "Input/output error" in rows[2].error.message
    assert rows[2].audio is None and rows[2].mono is None


def test_the_reader_names_the_hash_of_what_it_read(tmp_path) -> None:
    import hashlib

    from hummingml.extract.sources import open_source

    data = encode(_noise(1, 0.5, 16_000), 16_000)
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    with open_source(str(path)) as source:
        assert (source.size, source.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert source.file.read() == data
    assert source.file.closed


def test_a_commit_run_again_writes_no_row_twice(tmp_path) -> None:
    """Ray Data re-runs a commit whose process died; rows already in the output must not be written again."""
    def error_row(source: str) -> Segment:
        error = SegmentError("decode", "DecodeError:corrupt", "bad")
        return Segment(source_id=source, segment_index=-1, source_uri=f"/x/{source}.wav", error=error)

    cfg = ExtractConfig(output=str(tmp_path / "out"))
    commit = CommitStep(cfg, {"models": []}, 86.13)
    first = commit(to_table([error_row("a")]))
    again = commit(to_table([error_row("a"), error_row("b")]))  # "a" delivered twice, "b" new
    restarted = CommitStep(cfg, {"models": []}, 86.13)(to_table([error_row("b")]))  # a writer started anew
    assert list(first["source_id"]) == ["a"] and list(again["source_id"]) == ["b"]
    assert len(restarted["source_id"]) == 0
    table = pads.dataset(str(tmp_path / "out" / "errors"), format="parquet").to_table()
    assert sorted(table["source_id"].to_pylist()) == ["a", "b"]
