"""The remix pipeline on a synthesized song: cleaning, loudness, the mix, the command and its sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hummingml.audio import STEMS
from hummingml.serve.config import RemixConfig
from hummingml.serve.model import HumModel, load_hum_model
from hummingml.serve.presets import preset_clip
from hummingml.serve.remix import clean_vocals, loudness_db, mix, remix
from hummingml.stages.separate import SeparateConfig, Separator, Stems
from hummingml.testing.corpus import Song, make_song
from hummingml.testing.signals import sine
from hummingml.weights.config import ModelsConfig

RATE = 44_100


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the channel means."""
    x, y = a.mean(axis=0, dtype=np.float64), b.mean(axis=0, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / np.sqrt((x @ x) * (y @ y)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelsConfig:
    return ModelsConfig(kind="tiny", cache_dir=str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def hum_model(models: ModelsConfig) -> HumModel:
    return load_hum_model("", models)


@pytest.fixture(scope="module")
def song() -> Song:
    return make_song(0, seed=3, seconds=4.0)


def test_clean_vocals_removes_noise_and_gates_what_is_far_below_the_voice(song: Song) -> None:
    rng = np.random.default_rng(0)
    voice = song.stems["vocals"][:1]
    noise = (0.02 * rng.standard_normal(voice.shape)).astype(np.float32)
    silent = np.abs(voice[0]) < 1e-4  # between the phrases
    assert 0.2 < silent.mean() < 0.8
    denoised = clean_vocals(voice + noise, RATE, RemixConfig(gate_db=0.0))
    assert denoised.shape == voice.shape
    floor_db = 10 * np.log10(np.mean(denoised[0, silent] ** 2) / np.mean(noise[0, silent] ** 2))
    assert floor_db < -6.0  # the noise between phrases is down by more than 6 dB
    assert corr(denoised[:, ~silent], voice[:, ~silent]) > 0.95  # and the voice is kept
    tone = np.concatenate([sine(330.0, 1.0, RATE, amplitude=0.5), np.zeros((1, RATE), np.float32)], axis=1)
    gated = clean_vocals(tone + noise[:, : tone.shape[1]], RATE)
    assert np.abs(gated[:, RATE + RATE // 10 :]).max() < 1e-6  # the silent second is gated shut
    assert np.array_equal(clean_vocals(tone, RATE, RemixConfig(denoise=0.0, gate_db=0.0)), tone)


def test_mix_brings_each_part_and_the_sum_to_its_loudness_without_clipping() -> None:
    loud = np.tile(sine(110.0, 2.0, RATE, amplitude=0.9), (2, 1))
    quiet = np.tile(sine(880.0, 2.0, RATE, amplitude=0.01), (2, 1))
    cfg = RemixConfig(target_lufs=-14.0)
    out, parts, report = mix({"a": loud, "b": quiet}, RATE, {"a": 0.0, "b": -6.0}, cfg)
    assert np.abs(out).max() <= cfg.peak + 1e-6
    assert np.allclose(out, parts["a"] + parts["b"], atol=1e-5)
    assert loudness_db(parts["a"], RATE) - loudness_db(parts["b"], RATE) == pytest.approx(6.0, abs=0.1)
    assert report["loudness_db"] == pytest.approx(-14.0, abs=0.2) or report["limiter_gain_db"] < 0
    hot, _, hot_report = mix({"a": loud}, RATE, {"a": 0.0}, RemixConfig(target_lufs=-1.0))
    assert hot_report["limiter_gain_db"] < 0 and np.abs(hot).max() == pytest.approx(0.98, abs=1e-4)


@pytest.mark.slow
def test_a_remix_keeps_the_songs_vocals_and_reports_what_it_did(song: Song, hum_model: HumModel) -> None:
    stems = Stems(**song.stems, sample_rate=RATE)
    result = remix(song.mix, RATE, preset_clip("flute"), RATE, hum_model, stems=stems)
    n = song.mix.shape[1]
    assert result.sample_rate == RATE and result.audio.shape == (2, n) and result.audio.dtype == np.float32
    assert np.abs(result.audio).max() <= 0.98 + 1e-6
    assert np.allclose(result.audio, sum(result.parts.values()), atol=1e-5)
    assert corr(result.parts["vocals"], song.stems["vocals"]) > 0.9
    assert corr(result.audio, song.stems["vocals"]) > corr(result.audio, song.stems["lead"])
    report = result.report
    assert report["stems"] == "given" and report["output"] == {"seconds": 4.0, "sample_rate": RATE, "channels": 2}
    assert len(report["notes"]) >= 3 and report["model"]["trained"] is False
    assert "UNTRAINED" in report["model"]["label"] and set(report["mix"]["parts"]) == {
        "vocals",
        "instrument",
        "backing",
    }
    json.dumps(report)  # the sidecar is JSON as it is


@pytest.mark.slow
def test_a_remix_separates_with_demucs_when_no_stems_are_given(song: Song, hum_model: HumModel,
                                                                models: ModelsConfig) -> None:  # fmt: skip
    separator = Separator(SeparateConfig(models=models))
    mono = song.mix[:1, : RATE * 2]  # any channel count: mono is doubled
    result = remix(mono, RATE, preset_clip("organ"), RATE, hum_model, separate=separator.separate)
    assert result.audio.shape == (2, RATE * 2) and result.report["stems"] == "demucs"
    assert result.report["input"]["channels"] == 1 and np.isfinite(result.audio).all()
    with pytest.raises(ValueError, match="separate function or the song's stems"):
        remix(mono, RATE, preset_clip("organ"), RATE, hum_model)


@pytest.mark.slow
def test_the_remix_command_writes_the_wav_its_sidecar_and_the_parts(tmp_path: Path, song: Song,
                                                                    models: ModelsConfig) -> None:  # fmt: skip
    from hummingml.cli import main

    sf.write(tmp_path / "song.wav", song.mix.T, RATE, subtype="PCM_16")
    (tmp_path / "stems").mkdir()
    for stem in STEMS:
        sf.write(tmp_path / "stems" / f"{stem}.wav", song.stems[stem].T, RATE, subtype="FLOAT")
    code = main(["remix", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out.wav"), "--instrument", "marimba",
                 "--stems", str(tmp_path / "stems"), "--parts", str(tmp_path / "parts"),
                 "--models-cache-dir", models.cache_dir])  # fmt: skip
    assert code == 0
    audio, rate = sf.read(tmp_path / "out.wav", always_2d=True)
    assert rate == RATE and audio.shape == (song.mix.shape[1], 2)
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["instrument"] == "marimba" and sidecar["stems"] == "given" and sidecar["notes"]
    vocals, _ = sf.read(tmp_path / "parts" / "vocals.wav", always_2d=True)
    assert corr(vocals.T, song.stems["vocals"]) > 0.9


def test_a_failure_is_one_line_and_verbose_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:  # fmt: skip
    from hummingml.audio import DecodeError
    from hummingml.cli import main

    (tmp_path / "song.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    argv = ["remix", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out.wav")]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("hummingml remix: error: ") and "--verbose" in err[0], err
    with pytest.raises(DecodeError):
        main(["--verbose", *argv])
    assert not (tmp_path / "out.wav").exists()
