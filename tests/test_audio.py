from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hummingml.audio import DecodeError, decode, n_frames, resample, to_mono
from hummingml.testing.hostile import encode, float_wav
from hummingml.testing.signals import sine, stereo_distinct

RATES = [8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000, 192_000]


def dominant_hz(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sample_rate / len(x))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(RATES), st.sampled_from(RATES), st.integers(1, 50_000))
def test_resample_keeps_duration_within_one_sample(src: int, dst: int, n: int) -> None:
    audio = np.zeros((2, n), dtype=np.float32)
    out = resample(audio, src, dst)
    assert out.shape[0] == 2
    assert abs(out.shape[1] - n * dst / src) <= 1


def test_resample_keeps_a_1khz_tone() -> None:
    out = resample(sine(1000.0, seconds=1.0, sample_rate=44_100), 44_100, 22_050)
    assert out.dtype == np.float32
    assert abs(dominant_hz(out[0], 22_050) - 1000.0) <= 1.0
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.01)


def test_resample_removes_content_above_the_new_nyquist() -> None:
    out = resample(sine(15_000.0, seconds=1.0, sample_rate=44_100), 44_100, 22_050)
    body = out[0, 2000:-2000]  # away from the filter's edge transients
    assert np.sqrt(np.mean(body**2)) < 1e-3 * 0.5 / np.sqrt(2)  # more than 60 dB down


def test_mono_of_identical_channels_is_identity() -> None:
    mono = sine(440.0, channels=1)
    np.testing.assert_array_equal(to_mono(np.repeat(mono, 3, axis=0)), mono)


def test_mono_is_the_channel_mean() -> None:
    stereo = stereo_distinct(seconds=0.1)
    np.testing.assert_allclose(to_mono(stereo)[0], (stereo[0] + stereo[1]) / 2, atol=1e-7)
    assert to_mono(stereo).shape == (1, stereo.shape[1])


def test_n_frames_is_a_ceiling() -> None:
    assert [n_frames(n) for n in (0, 1, 256, 257, 512)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("sample_rate", [8_000, 44_100, 96_000])
@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"), [("WAV", "PCM_16", 1e-4), ("FLAC", None, 1e-4), ("WAV", "FLOAT", 0)]
)
def test_decode_round_trips_lossless_formats(
    channels: int, sample_rate: int, fmt: str, subtype: str | None, atol: float
) -> None:
    rng = np.random.default_rng(0)
    audio = (0.5 * rng.uniform(-1, 1, (channels, 1234))).astype(np.float32)
    out, rate = decode(encode(audio, sample_rate, fmt, subtype))
    assert rate == sample_rate
    assert out.dtype == np.float32 and out.shape == audio.shape
    np.testing.assert_allclose(out, audio, atol=atol)


def test_decode_reads_ogg_vorbis_and_paths(tmp_path) -> None:
    audio = stereo_distinct(seconds=0.5)
    path = tmp_path / "x.ogg"
    path.write_bytes(encode(audio, 44_100, "OGG", "VORBIS"))
    out, rate = decode(path)
    assert rate == 44_100 and out.shape[0] == 2
    assert abs(out.shape[1] - audio.shape[1]) <= 1024  # vorbis may pad to its block size
    assert abs(dominant_hz(out[1], rate) - 660.0) < 5


def _bad_inputs(tmp_path) -> dict[str, tuple[object, str]]:
    good = encode(sine(440.0, seconds=0.5), 16_000)
    flac = encode(sine(440.0, seconds=2.0), 16_000, "FLAC")
    data_size = struct.unpack("<I", good[40:44])[0]
    lying_header = good[:40] + struct.pack("<I", data_size * 2) + good[44:]
    directory = tmp_path / "dir.wav"
    directory.mkdir()
    broken = tmp_path / "broken.wav"
    os.symlink(tmp_path / "nowhere.wav", broken)
    return {
        "zero bytes": (b"", "empty"),
        "random bytes": (np.random.default_rng(1).bytes(4096), "not_audio"),
        "text": (b"hello, this is not audio\n" * 20, "not_audio"),
        "wav header only": (good[:44], "truncated"),
        "wav cut in half": (good[: len(good) // 2], "truncated"),
        "header claims more data": (lying_header, "truncated"),
        "flac cut in half": (flac[: len(flac) // 2], "truncated"),
        "zero-length wav": (encode(np.zeros((1, 0), np.float32), 16_000), "zero_length"),
        "nan samples": (float_wav(np.array([0.0, np.nan, 0.1])), "non_finite"),
        "inf samples": (float_wav(np.array([0.0, np.inf, 0.1])), "non_finite"),
        "missing path": (tmp_path / "missing.wav", "not_found"),
        "broken symlink": (broken, "not_found"),
        "directory": (directory, "unreadable"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "zero bytes",
        "random bytes",
        "text",
        "wav header only",
        "wav cut in half",
        "header claims more data",
        "flac cut in half",
        "zero-length wav",
        "nan samples",
        "inf samples",
        "missing path",
        "broken symlink",
        "directory",
    ],
)
def test_bad_inputs_raise_one_typed_error(tmp_path, case: str) -> None:
    source, kind = _bad_inputs(tmp_path)[case]
    with pytest.raises(DecodeError) as info:
        decode(source)  # type: ignore[arg-type]
    assert info.value.kind == kind, str(info.value)
    assert str(info.value).startswith(kind)
