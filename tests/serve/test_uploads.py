"""Uploads: size, format by magic bytes, duration, then a full decode; each refusal a status and a stable reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from hummingml.serve.presets import CLIP_PEAK, preset_clip, preset_names
from hummingml.serve.uploads import UploadError, UploadLimits, read_upload, sniff
from hummingml.testing.signals import sine


def encoded(audio: np.ndarray, sample_rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.T, sample_rate, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_each_format_is_sniffed_and_decoded(fmt: str) -> None:
    data = encoded(sine(440.0, seconds=1.0, sample_rate=22_050), 22_050, fmt)
    assert sniff(data) == fmt.lower()
    audio, rate = read_upload(data)
    assert rate == 22_050 and audio.shape[0] == 1 and abs(audio.shape[1] - 22_050) <= 1


def test_more_than_two_channels_are_mixed_down_to_stereo() -> None:
    audio, _ = read_upload(encoded(np.tile(sine(440.0, 1.0, 16_000), (6, 1)), 16_000))
    assert audio.shape == (2, 16_000)


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", 400, "empty"),
        (b"<html><script>alert(1)</script></html>", 415, "not_audio"),
        (b"\x80\x04\x95pickle", 415, "not_audio"),
        (b"RIFF\x00\x00\x00\x00WAVEjunkjunk", 422, "corrupt"),  # a WAV header and nothing behind it
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, status: int, reason: str | None) -> None:
    with pytest.raises(UploadError) as exc:
        read_upload(data)
    assert exc.value.status == status and exc.value.message
    if reason:
        assert exc.value.reason == reason


def test_size_and_duration_limits() -> None:
    data = encoded(sine(440.0, seconds=3.0, sample_rate=8_000), 8_000)
    with pytest.raises(UploadError) as exc:
        read_upload(data, UploadLimits(max_bytes=len(data) - 1))
    assert (exc.value.status, exc.value.reason) == (413, "too_big")
    with pytest.raises(UploadError) as exc:
        read_upload(data, UploadLimits(max_seconds=2.0))
    assert (exc.value.status, exc.value.reason) == (413, "too_long")
    with pytest.raises(UploadError) as exc:
        read_upload(encoded(sine(440.0, seconds=0.1, sample_rate=8_000), 8_000))
    assert (exc.value.status, exc.value.reason) == (422, "too_short")
    truncated = data[: len(data) // 2]  # the header still says 3 s
    with pytest.raises(UploadError) as exc:
        read_upload(truncated)
    assert (exc.value.status, exc.value.reason) == (422, "truncated")


def test_presets_are_deterministic_clips_of_the_corpus_instruments() -> None:
    assert {"flute", "organ", "marimba"} <= set(preset_names())
    a, b = preset_clip("flute", seconds=2.0), preset_clip("flute", seconds=2.0)
    assert a.shape == (1, 88_200) and np.array_equal(a, b)
    assert np.isclose(np.abs(a).max(), CLIP_PEAK)
    assert not np.allclose(preset_clip("organ", seconds=2.0), a)
    with pytest.raises(KeyError, match="flute"):
        preset_clip("tuba")
