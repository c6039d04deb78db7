from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hummingml.audio import (
    AudioReader,
    DecodeError,
    channel_layout,
    decode,
    downmix_matrix,
    downmix_to_stereo,
    n_frames,
    resample,
    to_mono,
    wav_channel_mask,
)
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


# --- downmix of more than two channels to stereo ------------------------------------------------------------------

C = 0.7071  # ITU-R BS.775's centre and surround coefficient


def distinct_sines(channels: int, seconds: float = 0.5, sample_rate: int = 44_100) -> np.ndarray:
    """One sine per channel, each of its own frequency and level: float32 (channels, samples)."""
    return np.concatenate(
        [sine(220.0 * (k + 1), seconds, sample_rate, amplitude=0.9 - 0.08 * k) for k in range(channels)]
    )


def read_stereo(data: bytes, block_frames: int = 1000) -> tuple[np.ndarray, AudioReader]:
    """The file decoded through a streaming ``to_stereo`` reader, in small blocks."""
    import io

    reader = AudioReader(io.BytesIO(data), len(data), block_frames=block_frames, to_stereo=True)
    return np.concatenate(list(reader.blocks()), axis=1), reader


def with_channel_mask(wavex: bytes, mask: int) -> bytes:
    """A WAVE_FORMAT_EXTENSIBLE file with its dwChannelMask replaced by ``mask``."""
    fmt = wavex.index(b"fmt ") + 8
    assert struct.unpack("<H", wavex[fmt : fmt + 2])[0] == 0xFFFE
    return wavex[: fmt + 20] + struct.pack("<I", mask) + wavex[fmt + 24 :]


def bs775(front_l, front_r, centre=None, surrounds_l=(), surrounds_r=()) -> np.ndarray:
    """Lo/Ro by the written-out BS.775 equations, scaled so each output's coefficients sum to 1."""
    zero = np.zeros_like(front_l, dtype=np.float64)
    c = zero if centre is None else C * centre.astype(np.float64)
    lo = front_l + c + sum((C * s.astype(np.float64) for s in surrounds_l), zero)
    ro = front_r + c + sum((C * s.astype(np.float64) for s in surrounds_r), zero)
    return np.stack([lo, ro]) / (1 + C * ((centre is not None) + len(surrounds_l)))


def test_six_channel_wav_is_mixed_as_5_1() -> None:
    x = distinct_sines(6)  # WAV/SMPTE order: L R C LFE Ls Rs
    out, reader = read_stereo(encode(x, 44_100, "WAV", "FLOAT"))
    assert (reader.channels, reader.source_channels, reader.downmix) == (2, 6, "itu-r-bs775-5.1")
    assert reader.channel_mask is None  # a plain WAV: the layout comes from the count
    expected = bs775(x[0], x[1], x[2], [x[4]], [x[5]])  # LFE (x[3]) dropped
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.corrcoef(out[0], expected[0])[0, 1] > 0.99999 and np.corrcoef(out[1], expected[1])[0, 1] > 0.99999
    assert np.abs(out).max() <= 1.0


def test_eight_channel_wav_is_mixed_as_7_1() -> None:
    x = distinct_sines(8)  # L R C LFE Lb Rb Ls Rs
    out, reader = read_stereo(encode(x, 44_100, "WAV", "FLOAT"))
    assert (reader.channels, reader.source_channels, reader.downmix) == (2, 8, "itu-r-bs775-7.1")
    np.testing.assert_allclose(out, bs775(x[0], x[1], x[2], [x[4], x[6]], [x[5], x[7]]), atol=1e-6)


def test_an_extensible_wav_is_mixed_by_its_channel_mask() -> None:
    x = distinct_sines(4)
    wavex = encode(x, 44_100, "WAVEX", "FLOAT")  # libsndfile writes the default mask of 4 channels, quad (0x33)
    out, reader = read_stereo(with_channel_mask(wavex, 0x0F))  # FL FR FC LFE: 3.1, not quad
    assert reader.channel_mask == 0x0F and reader.downmix == "itu-r-bs775-3.1"
    np.testing.assert_allclose(out, bs775(x[0], x[1], x[2]), atol=1e-6)  # x[3] is the LFE: dropped
    quad, reader = read_stereo(wavex)
    assert reader.channel_mask == 0x33 and reader.downmix == "itu-r-bs775-quad"
    np.testing.assert_allclose(quad, bs775(x[0], x[1], None, [x[2]], [x[3]]), atol=1e-6)


def test_an_extensible_wav_with_an_unusual_mask_keeps_every_positioned_channel() -> None:
    x = distinct_sines(5)
    data = with_channel_mask(encode(x, 44_100, "WAVEX", "FLOAT"), 0x1 | 0x2 | 0x200 | 0x400 | 0x800)  # FL FR SL SR TC
    out, reader = read_stereo(data)
    assert reader.downmix == "itu-r-bs775-FL+FR+SL+SR+TC"
    np.testing.assert_allclose(out, bs775(x[0], x[1], x[4], [x[2]], [x[3]]), atol=1e-6)  # top centre as a centre


@pytest.mark.parametrize(
    ("channels", "rule"), [(3, "itu-r-bs775-3.0"), (4, "itu-r-bs775-quad"), (5, "itu-r-bs775-5.0")]
)
def test_three_four_and_five_channels_follow_the_default_layouts(channels: int, rule: str) -> None:
    x = distinct_sines(channels)
    out, reader = read_stereo(encode(x, 44_100, "FLAC"))  # FLAC orders channels as WAV's defaults
    assert reader.downmix == rule
    expected = {
        3: lambda: bs775(x[0], x[1], x[2]),  # L R C
        4: lambda: bs775(x[0], x[1], None, [x[2]], [x[3]]),  # L R Ls Rs
        5: lambda: bs775(x[0], x[1], x[2], [x[3]], [x[4]]),  # L R C Ls Rs
    }[channels]()
    np.testing.assert_allclose(out, expected, atol=2e-4)  # 16-bit FLAC


def test_ogg_vorbis_channels_are_taken_in_vorbis_order() -> None:
    x = distinct_sines(6, seconds=1.0)  # Vorbis order: L C R Ls Rs LFE
    out, reader = read_stereo(encode(x, 44_100, "OGG", "VORBIS"))
    assert reader.downmix == "itu-r-bs775-5.1"
    n = min(out.shape[1], x.shape[1])
    expected = bs775(x[0], x[2], x[1], [x[3]], [x[4]])[:, :n]
    wav_order = bs775(x[0], x[1], x[2], [x[4]], [x[5]])[:, :n]  # what a WAV-order mix would wrongly give
    for side in (0, 1):
        assert np.corrcoef(out[side, :n], expected[side])[0, 1] > 0.99
        assert np.corrcoef(out[side, :n], wav_order[side])[0, 1] < 0.9


def test_mono_and_stereo_are_not_mixed() -> None:
    for audio in (sine(440.0, 0.2, 44_100), stereo_distinct(0.2)):
        out, reader = read_stereo(encode(audio, 44_100, "WAV", "FLOAT"))
        assert (reader.channels, reader.source_channels, reader.downmix) == (audio.shape[0], audio.shape[0], "")
        np.testing.assert_array_equal(out, audio)
        same, rule = downmix_to_stereo(audio)
        assert same is audio and rule == ""


def test_more_channels_than_any_default_layout_alternate_left_and_right() -> None:
    x = distinct_sines(10, seconds=0.1)
    out, rule = downmix_to_stereo(x)
    assert rule == "alternate-lr"
    np.testing.assert_allclose(out, np.stack([x[0::2].mean(axis=0), x[1::2].mean(axis=0)]), atol=1e-6)
    streamed, reader = read_stereo(encode(x, 44_100, "WAV", "FLOAT"), block_frames=333)
    assert reader.downmix == "alternate-lr"
    np.testing.assert_array_equal(streamed, out)  # block by block equals the whole, bit for bit


def test_downmix_matrices_follow_the_documented_rules() -> None:
    for channels in range(3, 12):
        for order in ("wav", "vorbis"):
            matrix, _ = downmix_matrix(channels, order=order)
            assert matrix.shape == (2, channels) and (matrix >= 0).all()
            assert matrix.sum(axis=1).max() == pytest.approx(1.0)  # scaled so that no output can clip
            if channels <= 8:  # a layout: symmetric, so both outputs sum alike
                assert matrix[0].sum() == pytest.approx(matrix[1].sum())
    matrix, rule = downmix_matrix(6)
    assert rule == "itu-r-bs775-5.1" and matrix[:, 3].tolist() == [0.0, 0.0]  # LFE dropped
    assert matrix[0, 2] / matrix[0, 0] == pytest.approx(C) and matrix[0, 4] / matrix[0, 0] == pytest.approx(C)
    assert downmix_matrix(6, 0x60F)[1] == "itu-r-bs775-5.1"  # side surrounds mix as back ones
    assert downmix_matrix(8, 0xFF)[1] == "itu-r-bs775-7.1-wide"  # libsndfile's WAVEX default for 8 channels
    assert channel_layout(8, 0x63F) == ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")
    assert channel_layout(4, 0x7) == ("FL", "FR", "FC", "X")  # a channel beyond the mask: unassigned
    matrix, rule = downmix_matrix(4, 0x7)
    assert rule == "itu-r-bs775-FL+FR+FC+X" and matrix[0, 3] == matrix[1, 3] == matrix[0, 2]  # mixed as a centre
    assert channel_layout(12) is None and downmix_matrix(12)[1] == "alternate-lr"
    assert np.array_equal(downmix_matrix(2)[0], np.eye(2)) and downmix_matrix(1)[1] == ""


def test_wav_channel_mask_reads_only_extensible_headers() -> None:
    import io

    x = distinct_sines(6, seconds=0.01)
    for data, mask in [(encode(x, 44_100, "WAV"), None), (encode(x, 44_100, "WAVEX"), 0x3F),
                       (with_channel_mask(encode(x, 44_100, "WAVEX"), 0), None), (encode(x, 44_100, "FLAC"), None)]:
        assert wav_channel_mask(io.BytesIO(data), len(data)) == mask
