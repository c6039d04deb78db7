from __future__ import annotations

import numpy as np
import pytest

from hummingml.audio import FEATURE_SAMPLE_RATE, n_frames, resample
from hummingml.stages.codec import (
    Codec,
    CodecConfig,
    CodecTokens,
    _encode_streams,
    decode,
    encode,
    encode_batch,
    receptive_field_frames,
)
from hummingml.testing.corpus import make_song
from hummingml.testing.signals import sine, stereo_distinct
from hummingml.weights.config import ModelsConfig


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> Codec:
    """The tiny DAC (random weights, 4 codebooks, the 44 kHz strides), prepared in a temp cache."""
    cache = tmp_path_factory.mktemp("models")
    return Codec(CodecConfig(device="cpu", models=ModelsConfig(kind="tiny", cache_dir=str(cache))))


@pytest.fixture(scope="module")
def song_22k() -> np.ndarray:
    return resample(make_song(0, seed=0, seconds=3.0).mix, 44_100, FEATURE_SAMPLE_RATE)


@pytest.mark.parametrize("n_samples", [1, 255, 256, 257, 22_050, 3 * 22_050 + 17])
def test_frame_count_is_ceil_samples_over_256_at_22k(codec, n_samples) -> None:
    audio = sine(440.0, seconds=n_samples / FEATURE_SAMPLE_RATE, sample_rate=FEATURE_SAMPLE_RATE, channels=2)
    assert audio.shape[1] == n_samples
    tokens = codec.encode(audio, FEATURE_SAMPLE_RATE)
    assert isinstance(tokens, CodecTokens)
    assert tokens.codes.dtype == np.int16
    assert tokens.codes.shape == (2, 4, n_frames(n_samples))
    assert tokens.frame_rate == pytest.approx(FEATURE_SAMPLE_RATE / 256)
    assert tokens.codes.min() >= 0 and tokens.codes.max() < 1024


def test_other_rates_are_resampled_to_the_codec_rate(codec) -> None:
    assert codec.encode(sine(440.0, 1.0, 44_100), 44_100).codes.shape == (1, 4, -(-44_100 // 512))
    assert codec.encode(sine(440.0, 1.0, 48_000), 48_000).codes.shape == (1, 4, -(-44_100 // 512))


def test_same_audio_gives_the_same_codes(codec, song_22k) -> None:
    a = codec.encode(song_22k, FEATURE_SAMPLE_RATE).codes
    b = codec.encode(song_22k.copy(), FEATURE_SAMPLE_RATE).codes
    np.testing.assert_array_equal(a, b)


def test_each_channel_is_its_own_mono_stream(codec) -> None:
    stereo = stereo_distinct(1.0, FEATURE_SAMPLE_RATE)
    both = codec.encode(stereo, FEATURE_SAMPLE_RATE).codes
    np.testing.assert_array_equal(both[0], codec.encode(stereo[:1], FEATURE_SAMPLE_RATE).codes[0])
    np.testing.assert_array_equal(both[1], codec.encode(stereo[1:], FEATURE_SAMPLE_RATE).codes[0])
    assert not np.array_equal(both[0], both[1])


def test_the_context_covers_the_encoder_receptive_field(codec) -> None:
    # 7 convolutions per strided block over 4 blocks plus 2; about 8 000 samples at 44.1 kHz -> 16 frames of 512
    assert receptive_field_frames(codec.model) == 16


def test_chunked_encoding_equals_unchunked(codec, song_22k) -> None:
    """Windows of 0.5 s with the default context vs one window over the whole 3 s clip.

    Every output frame of a window sees a full receptive field of real audio, so the encoder latents are the same
    numbers; they may differ only by float32 rounding (convolutions over different lengths may sum in a different
    order), hence atol 1e-4. A code could flip only where two codebook entries are nearly equidistant (a difference of
    ~1e-7 decides), so codes must agree in at least 99 % of positions; on the reference machine they are identical.
    """
    at_44k = list(resample(song_22k, FEATURE_SAMPLE_RATE, 44_100))
    whole_codes, whole_z = _encode_streams(at_44k, codec.model, CodecConfig(chunk_s=1e6), return_latents=True)
    chunk_codes, chunk_z = _encode_streams(at_44k, codec.model, CodecConfig(chunk_s=0.5), return_latents=True)
    np.testing.assert_allclose(chunk_z[0], whole_z[0], atol=1e-4)
    assert (chunk_codes[0] == whole_codes[0]).mean() >= 0.99
    public = encode(song_22k, FEATURE_SAMPLE_RATE, codec.model, CodecConfig(chunk_s=0.5, batch_size=3))
    assert (public.codes == codec.encode(song_22k, FEATURE_SAMPLE_RATE).codes).mean() >= 0.99
    # without context the windows' edges see zero padding instead of audio: visibly different latents
    _, no_context = _encode_streams(at_44k, codec.model, CodecConfig(chunk_s=0.5, context_frames=0), True)
    assert np.abs(no_context[0] - whole_z[0]).max() > 1e-3


def test_batched_clips_equal_separate_calls(codec, song_22k) -> None:
    clips = [song_22k, song_22k[:, :30_000], sine(330.0, 0.7, FEATURE_SAMPLE_RATE)]
    batched = encode_batch(clips, FEATURE_SAMPLE_RATE, codec.model, CodecConfig(chunk_s=1.0, batch_size=4))
    for clip, tokens in zip(clips, batched, strict=True):
        alone = codec.encode(clip, FEATURE_SAMPLE_RATE).codes
        assert tokens.codes.shape == alone.shape
        assert (tokens.codes == alone).mean() >= 0.99  # batch size changes only float rounding


def test_fewer_codebooks_are_the_first_ones(codec, song_22k) -> None:
    full = codec.encode(song_22k, FEATURE_SAMPLE_RATE).codes
    two = encode(song_22k, FEATURE_SAMPLE_RATE, codec.model, CodecConfig(n_codebooks=2)).codes
    np.testing.assert_array_equal(two, full[:, :2])
    with pytest.raises(ValueError, match="n_codebooks"):
        encode(song_22k, FEATURE_SAMPLE_RATE, codec.model, CodecConfig(n_codebooks=5))


def test_decode_round_trip_shapes(codec) -> None:
    audio = stereo_distinct(0.5, FEATURE_SAMPLE_RATE)
    tokens = codec.encode(audio, FEATURE_SAMPLE_RATE)
    decoded, rate = decode(tokens, codec.model)
    assert rate == 44_100
    assert decoded.dtype == np.float32 and decoded.shape == (2, tokens.codes.shape[-1] * 512)
    assert np.isfinite(decoded).all() and np.abs(decoded).max() <= 1.0  # DAC's decoder ends in tanh


def test_empty_audio_has_zero_frames(codec) -> None:
    assert codec.encode(np.zeros((2, 0), np.float32), FEATURE_SAMPLE_RATE).codes.shape == (2, 4, 0)
