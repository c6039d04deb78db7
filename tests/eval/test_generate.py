"""Checkpoints back into models, and humming -> instrument generation with the tiny DAC and Basic Pitch."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from hummingml.audio import FEATURE_SAMPLE_RATE
from hummingml.eval.generate import CodecMismatchError, check_codec, generate, timbre_frames
from hummingml.model.batch import make_batch
from hummingml.model.lm import HummingLM, NARUpsampler
from hummingml.testing.signals import sine
from hummingml.train.checkpoint import load_checkpoint, load_train_config, resolve_checkpoint
from hummingml.train.config import from_preset
from hummingml.train.data import DataConfig, examples_from_row
from hummingml.weights.config import ModelsConfig
from hummingml.weights.load import load_dac


@pytest.fixture(scope="module")
def debug_run(trained_run) -> tuple[Path, dict[str, Any]]:
    return trained_run("debug")


@pytest.fixture(scope="module")
def tiny_dac(demo_features):
    """The tiny DAC the demo features were extracted with (same cache directory)."""
    return load_dac(ModelsConfig(kind="tiny", cache_dir=str(demo_features.parent / "models")))


@pytest.fixture(scope="module")
def pitch_detector():
    from hummingml.stages.pitch import PitchDetector

    return PitchDetector()


def melody(notes_hz: list[float], note_s: float, sample_rate: int) -> np.ndarray:
    """A hummed-like melody: consecutive sines, float32 (1, samples)."""
    return np.concatenate([sine(f, note_s, sample_rate, amplitude=0.4) for f in notes_hz], axis=1)


# --- checkpoints ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_checkpoint_equals_the_saved_weights(debug_run, demo_features, tmp_path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run_dir, metrics = debug_run
    directory = resolve_checkpoint(run_dir)
    assert resolve_checkpoint(directory) == directory and directory.parent == run_dir
    cfg, ar, nar = load_checkpoint(run_dir)
    assert cfg.preset == "debug" and cfg.steps == 10 and cfg.data.frames == 64
    assert cfg.model == from_preset("debug").model
    assert cfg.data.parts == ("vocals", "lead") and isinstance(cfg.optim.betas, tuple)
    # the same tensors through another reader: DCP's own conversion to a torch.save file
    dcp_to_torch_save(directory, tmp_path / "full.pt")
    saved = torch.load(tmp_path / "full.pt", weights_only=False)
    for key, model in (("ar", ar), ("nar", nar)):
        state = model.state_dict()
        assert set(state) == set(saved[key]["model"])
        for name, tensor in state.items():
            assert torch.equal(tensor, saved[key]["model"][name]), (key, name)
    # the loaded AR model does what the trained one did: loss far below an untrained model's ln(1024)
    import pyarrow.parquet as pq

    data = dataclasses.replace(cfg.data, augment=False)
    def read(name: str) -> list[dict[str, Any]]:
        return pq.read_table(demo_features / name).to_pylist()

    sine_rows = {(r["source_id"], r["segment_index"]): r for r in read("sine-audio-feature")}
    rows = [{**r, **sine_rows[r["source_id"], r["segment_index"]]} for r in read("audio-feature")]
    examples = [ex for row in rows for ex in examples_from_row(row, data, 2, 1024, split="all")]
    batch = make_batch(examples, cfg.model, 32, 64)
    with torch.no_grad():
        loaded_loss = float(ar(batch)[0])
        fresh_loss = float(HummingLM(cfg.model)(batch)[0])
    assert loaded_loss < 0.5 * math.log(1024) < fresh_loss
    assert metrics["ar_loss"] < 0.5 * math.log(1024)  # the training report agrees on the order of magnitude


@pytest.mark.slow
def test_checkpoint_without_stored_config_needs_one(debug_run, tmp_path) -> None:
    run_dir, _ = debug_run
    copy = tmp_path / "old_checkpoint"
    shutil.copytree(resolve_checkpoint(run_dir), copy)
    cfg = load_train_config(copy)
    (copy / "train_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_config\.json"):
        load_checkpoint(copy)
    loaded_cfg, ar, _ = load_checkpoint(copy, cfg)
    assert loaded_cfg == cfg and not ar.training
    narrow = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_ff=128))
    with pytest.raises(ValueError, match=r"does not fit .*Size mismatch .*feed_forward"):
        load_checkpoint(copy, narrow)
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        resolve_checkpoint(tmp_path / "nothing")
    neuron = tmp_path / "neuron_run" / "checkpoint_0"
    neuron.mkdir(parents=True)
    neuron_cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend="neuron"))
    (neuron / "train_config.json").write_text(json.dumps(dataclasses.asdict(neuron_cfg), default=str))
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):  # NxD's files missing
        load_checkpoint(neuron.parent)


# --- generation ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generation_is_as_long_as_the_hum_and_finite(debug_run, tiny_dac, pitch_detector) -> None:
    cfg, ar, nar = load_checkpoint(debug_run[0])
    dac, _ = tiny_dac
    # 16 kHz, 1.23 s: not a whole number of frames, and longer than one 64-frame window (0.74 s)
    hum = melody([440.0, 523.25, 392.0], 0.41, 16_000)
    timbre = sine(220.0, 2.0, 44_100, channels=2)
    generated = generate(hum, 16_000, timbre, 44_100, ar, nar, cfg, dac, pitch_detector)
    audio, rate = generated.audio, generated.sample_rate
    assert rate == 44_100 and audio.dtype == np.float32
    assert audio.shape == (1, round(hum.shape[1] * rate / 16_000))
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # top-k sampling is reproducible with a seed; a 20 ms hum (one partial frame window, too short for a note)
    # keeps its length too, and says that its sine stream is silence
    short = sine(330.0, 0.02, 48_000)
    with pytest.warns(UserWarning, match="no notes"):
        a = generate(short, 48_000, timbre, 44_100, ar, nar, cfg, dac, pitch_detector, top_k=5, seed=3).audio
    with pytest.warns(UserWarning, match="no notes"):
        b = generate(short, 48_000, timbre, 44_100, ar, nar, cfg, dac, pitch_detector, top_k=5, seed=3).audio
    assert a.shape == (1, round(short.shape[1] * 44_100 / 48_000)) and np.array_equal(a, b)


def test_timbre_prompt_is_capped_by_the_config_and_max_seq_len() -> None:
    cfg = from_preset("debug", data=DataConfig(frames=64, timbre_max_frames=32))
    assert timbre_frames(cfg, 5.0) == 32  # timbre_max_frames
    assert timbre_frames(cfg, 0.1) == round(0.1 * FEATURE_SAMPLE_RATE / 256)
    long_window = from_preset("debug", data=DataConfig(frames=100, timbre_max_frames=431))
    room = long_window.model.max_seq_len - (3 + 2 * 100)  # what max_seq_len leaves beside the window
    assert timbre_frames(long_window, 5.0) == min(431, room)
    too_long = long_window.model.max_seq_len // 2  # 3 + 2 x frames > max_seq_len: no room for a prompt
    with pytest.raises(ValueError, match="max_seq_len"):
        timbre_frames(from_preset("debug", data=DataConfig(frames=too_long)), 1.0)


def test_a_codec_that_does_not_match_the_checkpoint_is_refused(tmp_path, pitch_detector) -> None:
    dac, identity = load_dac(ModelsConfig(kind="tiny", cache_dir=str(tmp_path / "models")))  # 4 x 1024
    cfg = from_preset("debug")
    check_codec(cfg.model, dac, identity)  # matches
    three = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_codebooks=3))
    with pytest.raises(CodecMismatchError, match="n_codebooks: DAC 4, checkpoint 3"):
        check_codec(three.model, dac)
    ar, nar = HummingLM(three.model), NARUpsampler(three.model)
    hum = sine(440.0, 0.5, 16_000)
    with pytest.raises(CodecMismatchError, match="n_codebooks"):
        generate(hum, 16_000, hum, 16_000, ar, nar, three, dac, pitch_detector)
    with pytest.raises(CodecMismatchError, match="codebook_size: DAC 1024, checkpoint 512"):
        check_codec(dataclasses.replace(cfg.model, codebook_size=512), dac)
    other = {"models": [{"library": "descript-audio-codec", "kind": "tiny", "name": "dac_tiny", "sha256": "0" * 64}]}
    with pytest.raises(CodecMismatchError, match="weights"):
        check_codec(cfg.model, dac, identity, other)


@pytest.mark.slow
def test_generate_command_writes_the_wav_and_checks_the_codec(debug_run, tmp_path, capsys) -> None:
    from hummingml.cli import main

    sf.write(tmp_path / "hum.wav", melody([392.0, 440.0], 0.3, 48_000).T, 48_000)
    sf.write(tmp_path / "clip.wav", sine(196.0, 1.5, 22_050).T, 22_050)
    out = tmp_path / "out.wav"
    args = ["generate", "--hum", str(tmp_path / "hum.wav"), "--timbre", str(tmp_path / "clip.wav"),
            "--checkpoint", str(debug_run[0])]  # fmt: skip
    # no --models-* flags: the DAC of the extraction that made the training features (its record names it)
    assert main([*args, "-o", str(out), "--timbre-seconds", "1"]) == 0
    audio, rate = sf.read(out, always_2d=True)
    assert rate == 44_100 and audio.shape == (round(0.6 * 44_100), 1) and np.isfinite(audio).all()
    # another tiny DAC (seed 1) has the right sizes but other weights than the features' codec
    other = [*args, "-o", str(tmp_path / "x.wav"), "--models-seed", "1", "--models-cache-dir", str(tmp_path / "m")]
    capsys.readouterr()
    assert main(other) == 1  # one line, exit 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("hummingml generate: error: the DAC does not match") and "weights" in line
    with pytest.raises(CodecMismatchError, match="weights"):
        main(["--verbose", *other])
    assert not (tmp_path / "x.wav").exists()
