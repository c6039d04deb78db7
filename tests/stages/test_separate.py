from __future__ import annotations

import numpy as np
import pytest
import torch

from hummingml.audio import STEMS
from hummingml.stages.separate import (
    DEFAULT_SOURCE_TO_STEM,
    HTDEMUCS_6S_SOURCES,
    SeparateConfig,
    Separator,
    Stems,
    separate,
    stem_mapping,
)
from hummingml.testing.corpus import make_song
from hummingml.testing.signals import sine, stereo_distinct
from hummingml.weights.config import ModelsConfig


class ScalingDemucs(torch.nn.Module):
    """A stand-in with Demucs' interface: source ``k`` is ``(k + 1) * mix``. Linear, so every output is known."""

    def __init__(self, sources=HTDEMUCS_6S_SOURCES, segment: float = 1.0) -> None:
        super().__init__()
        self.sources = list(sources)
        self.samplerate, self.audio_channels, self.segment = 44_100, 2, segment
        self.gain = torch.nn.Parameter(torch.arange(1, len(self.sources) + 1, dtype=torch.float32))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:  # (B, 2, T) -> (B, sources, 2, T)
        return self.gain[None, :, None, None] * mix[:, None]


@pytest.fixture(scope="module")
def separator(tmp_path_factory) -> Separator:
    """The tiny 6-source HTDemucs (random weights, 2 s segment), prepared in a temp cache."""
    cache = tmp_path_factory.mktemp("models")
    return Separator(SeparateConfig(device="cpu", models=ModelsConfig(kind="tiny", cache_dir=str(cache))))


@pytest.fixture(scope="module")
def song_mix() -> np.ndarray:
    return make_song(1, seed=0, seconds=3.0).mix  # stereo 44.1 kHz, longer than one 2 s segment


def test_default_mapping_for_htdemucs_6s_and_for_our_own_stems() -> None:
    assert stem_mapping(HTDEMUCS_6S_SOURCES) == {
        "drums": "drums", "bass": "bass", "other": "other", "vocals": "vocals", "guitar": "lead", "piano": "chordal",
    }
    assert stem_mapping(list(STEMS)) == {stem: stem for stem in STEMS}
    assert set(DEFAULT_SOURCE_TO_STEM.values()) == set(STEMS)


def test_several_sources_may_feed_one_stem_and_unfed_stems_must_be_declared_silent() -> None:
    four = ["drums", "bass", "other", "vocals"]  # demucs htdemucs
    with pytest.raises(ValueError, match=r"\['lead', 'chordal'\] get no source.*silent_stems"):
        stem_mapping(four)
    cfg = SeparateConfig(silent_stems=("lead", "chordal"))
    assert stem_mapping(four, cfg) == {s: s for s in four}
    merged = {"drums": "drums", "bass": "bass", "other": "other", "vocals": "vocals", "guitar": "other",
              "piano": "chordal"}
    assert stem_mapping(HTDEMUCS_6S_SOURCES, SeparateConfig(source_to_stem=merged, silent_stems=("lead",))) == merged


@pytest.mark.parametrize(
    ("mapping", "silent", "message"),
    [
        ({"drums": "drums", "bass": "bass", "other": "other", "vocals": "vocals", "guitar": "lead"}, (),
         r"\['piano'\] are not mapped"),
        ({**dict.fromkeys(STEMS), "drums": "drums"}, (), "which the model does not have"),
        ({"drums": "drums", "bass": "bass", "other": "other", "vocals": "vocals", "guitar": "lead", "piano": "keys"},
         (), r"\['keys'\], which are not stems"),
        ({"drums": "drums", "bass": "bass", "other": "other", "vocals": "vocals", "guitar": "lead", "piano": "chordal"},
         ("lead",), "in silent_stems but fed"),
        ({"drums": "drums", "bass": "bass", "other": "other", "vocals": "vocals", "guitar": "lead", "piano": "lead"},
         ("piano",), "not stems"),
    ],
)
def test_bad_mappings_are_refused(mapping, silent, message) -> None:
    with pytest.raises(ValueError, match=message):
        stem_mapping(HTDEMUCS_6S_SOURCES, SeparateConfig(source_to_stem=mapping, silent_stems=silent))


def test_a_source_listed_twice_by_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        stem_mapping(["drums", "drums", "bass", "vocals", "lead", "chordal", "other"])


def test_sources_sum_into_stems_across_overlapping_segments() -> None:
    """With a linear stand-in, split=True over 1 s segments must return each source's gain times the input exactly
    (the cross-fade weights are normalised), and the mapping must route guitar to lead and piano to chordal."""
    model = ScalingDemucs()
    mix = stereo_distinct(2.6, 44_100)  # three overlapping segments
    stems = separate(mix, 44_100, model, SeparateConfig())
    gains = dict(zip(HTDEMUCS_6S_SOURCES, range(1, 7), strict=True))
    expected = {"drums": "drums", "bass": "bass", "vocals": "vocals", "lead": "guitar", "chordal": "piano",
                "other": "other"}
    for stem, source in expected.items():
        np.testing.assert_allclose(getattr(stems, stem), gains[source] * mix, atol=1e-4)
    merged = {**{s: s for s in ("drums", "bass", "vocals", "other")}, "guitar": "other", "piano": "other"}
    cfg = SeparateConfig(source_to_stem=merged, silent_stems=("lead", "chordal"))
    merged_stems = separate(mix, 44_100, model, cfg)
    np.testing.assert_allclose(merged_stems.other, (3 + 5 + 6) * mix, atol=1e-4)
    assert not merged_stems.lead.any() and not merged_stems.chordal.any()


def test_mono_input_is_duplicated_and_rates_round_trip() -> None:
    mono = sine(440.0, 1.3, 22_050)
    stems = separate(mono, 22_050, ScalingDemucs(), SeparateConfig())
    assert stems.sample_rate == 22_050 and stems.drums.shape == (2, mono.shape[1])
    np.testing.assert_allclose(stems.drums[0], stems.drums[1])
    np.testing.assert_allclose(stems.drums[0, 2000:-2000], mono[0, 2000:-2000], atol=2e-3)  # 22.05 -> 44.1 -> 22.05 kHz
    at_16k = separate(mono, 22_050, ScalingDemucs(), SeparateConfig(output_sample_rate=16_000))
    assert at_16k.sample_rate == 16_000 and at_16k.bass.shape == (2, round(mono.shape[1] * 16_000 / 22_050))


def test_more_than_two_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="mono or stereo"):
        separate(np.zeros((3, 1000), np.float32), 44_100, ScalingDemucs(), SeparateConfig())


def test_tiny_model_gives_six_stereo_stems_of_the_input_length(separator, song_mix) -> None:
    stems = separator.separate(song_mix, 44_100)
    assert isinstance(stems, Stems) and stems.sample_rate == 44_100
    assert list(stems.as_dict()) == list(STEMS)
    assert stems.stacked().shape == (6, 2, song_mix.shape[1])
    for wave in stems.as_dict().values():
        assert wave.dtype == np.float32 and wave.shape == song_mix.shape and np.isfinite(wave).all()
    assert separator.identity is not None and separator.identity.random_weights


def test_tiny_model_is_deterministic(separator, song_mix) -> None:
    a = separator.separate(song_mix, 44_100).stacked()
    b = separator.separate(song_mix.copy(), 44_100).stacked()
    np.testing.assert_array_equal(a, b)
    cfg = SeparateConfig(shifts=1, seed=3)
    c = separate(song_mix, 44_100, separator.model, cfg).stacked()
    d = separate(song_mix, 44_100, separator.model, cfg).stacked()
    np.testing.assert_array_equal(c, d)  # random shifts are seeded


def test_equal_length_clips_are_batched_like_single_calls(separator, song_mix) -> None:
    other = make_song(2, seed=0, seconds=3.0).mix
    short = song_mix[:, :50_000]
    batched = separator.separate_batch([song_mix, other, short], 44_100)
    for clip, stems in zip([song_mix, other, short], batched, strict=True):
        alone = separator.separate(clip, 44_100).stacked()
        np.testing.assert_allclose(stems.stacked(), alone, atol=1e-4)  # batch size changes only float rounding


def test_segment_longer_than_the_transformer_allows_is_refused(separator, song_mix) -> None:
    with pytest.raises(ValueError, match="maximum segment"):
        separate(song_mix, 44_100, separator.model, SeparateConfig(segment_s=2.5))


def test_separator_refuses_a_model_the_mapping_does_not_fit() -> None:
    with pytest.raises(ValueError, match="get no source"):
        Separator(SeparateConfig(device="cpu"), model=ScalingDemucs(sources=["drums", "bass", "other", "vocals"]))


@pytest.mark.parametrize("n_samples", [0, 1, 100])
def test_very_short_clips_give_stems_of_their_length(separator, n_samples) -> None:
    stems = separator.separate(np.full((2, n_samples), 0.1, np.float32), 44_100)
    assert stems.stacked().shape == (6, 2, n_samples) and np.isfinite(stems.stacked()).all()
