"""Humming -> instrument audio with a trained checkpoint.

The path mirrors the extraction, so the model sees inputs made the way its training features were made:

1. the hum is resampled to 22.05 kHz and mixed to mono (``hummingml.audio``);
2. Basic Pitch transcribes its notes, which are rendered as the sine "MIDI signal" (``stages.pitch``, ``stages.synth``);
3. DAC encodes the sine rendering and the mono hum (the first ``cond_codebooks`` levels are the conditioning: the hum
   stands in for the mono reference of training) and the first ``timbre_seconds`` of the timbre clip (all levels);
4. the AR model generates level 0, the NAR upsampler levels 1..N-1, DAC decodes the codes;
5. the audio is cropped (DAC pads to whole frames) or zero-padded to the hum's duration.

Long hums are cut into windows of the trained target length (``cfg.data.frames``), generated independently (each
with the same timbre prompt, batched) and concatenated; nothing carries over a window boundary. The output is at
the codec's rate (44.1 kHz for every DAC kind we use), ``round(hum samples * 44100 / hum rate)`` samples long.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import numpy.typing as npt

from hummingml.audio import F32, FEATURE_SAMPLE_RATE, FRAME_HOP, FRAME_RATE, decode, resample, to_mono, write_pcm16
from hummingml.config import from_flags
from hummingml.eval.config import GenerateConfig
from hummingml.model.batch import make_batch
from hummingml.model.lm import packed_length
from hummingml.output import set_files
from hummingml.stages import codec
from hummingml.stages.codec import CodecConfig, CodecTokens, encode_batch, receptive_field_frames
from hummingml.stages.pitch import NoteEvent, PitchDetector
from hummingml.stages.synth import render_sine
from hummingml.train.checkpoint import load_checkpoint, load_train_config
from hummingml.weights.config import ModelIdentity, ModelsConfig
from hummingml.weights.load import load_dac

if TYPE_CHECKING:
    import argparse

    from hummingml.model.config import ModelConfig
    from hummingml.model.lm import HummingLM, NARUpsampler
    from hummingml.train.config import TrainConfig

DAC_LIBRARY = "descript-audio-codec"  # ModelIdentity.library of the codec in an extraction's metadata


class CodecMismatchError(ValueError):
    """The DAC at hand is not the codec the checkpoint's training features were extracted with."""


def extraction_record(features: str) -> dict[str, Any] | None:
    """The ``hummingml.run`` metadata (config, model identities) of an extraction output, or None if unreadable.

    Read from the newest committed Parquet file of ``<features>/audio-feature`` (local path or pyarrow URI).
    """
    import pyarrow.parquet as pq

    try:
        fs, files, _ = set_files(features, "audio-feature")
        if not files:
            return None
        with fs.open_input_file(files[-1]) as f:
            metadata = pq.read_schema(f).metadata or {}
        return json.loads(metadata[b"hummingml.run"])
    except (OSError, KeyError, ValueError):
        return None


def recorded_dac(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The DAC's identity dict in an extraction record, if any."""
    for identity in (record or {}).get("models", []):
        if identity.get("library") == DAC_LIBRARY:
            return identity
    return None


def recorded_models_config(record: dict[str, Any] | None) -> ModelsConfig:
    """The extraction's :class:`ModelsConfig` as far as it holds here: kind and seed, plus ``cache_dir`` and
    ``dac_weights`` only when those paths exist on this machine; defaults without a record."""
    import os

    recorded = (record or {}).get("config", {}).get("models")
    if not recorded:
        return ModelsConfig()
    keep = {k: recorded[k] for k in ("kind", "seed") if k in recorded}
    for key in ("cache_dir", "dac_weights"):
        if recorded.get(key) and os.path.exists(recorded[key]):
            keep[key] = recorded[key]
    if keep.get("kind") != "pretrained":
        keep.pop("dac_weights", None)
    return ModelsConfig(**keep)


def check_codec(
    model_cfg: ModelConfig,
    dac: Any,
    identity: ModelIdentity | None = None,
    record: dict[str, Any] | None = None,
) -> None:
    """Refuse a DAC that cannot be the one the training features were made with.

    Checks ``codebook_size`` and ``n_codebooks`` (equal to the model's), the frame rate (the 86.13 frames/s grid of
    the features) and, when both ``identity`` and the extraction ``record`` are given, the weights' sha256.

    Raises:
        CodecMismatchError: naming both sides of the first difference.
    """
    rate = float(dac.sample_rate) / int(dac.hop_length)
    problems = []
    if int(dac.codebook_size) != model_cfg.codebook_size:
        problems.append(f"codebook_size: DAC {dac.codebook_size}, checkpoint {model_cfg.codebook_size}")
    if int(dac.n_codebooks) != model_cfg.n_codebooks:
        problems.append(f"n_codebooks: DAC {dac.n_codebooks}, checkpoint {model_cfg.n_codebooks}")
    if abs(rate - FRAME_RATE) > 1e-6:
        problems.append(f"frame rate: DAC {rate:.4f} frames/s, features {FRAME_RATE:.4f}")
    dac_record = recorded_dac(record)
    if identity is not None and dac_record is not None and dac_record.get("sha256") != identity.sha256:
        problems.append(
            f"weights: DAC {identity.kind} {identity.name} sha256 {identity.sha256[:12]}…, the features were "
            f"extracted with {dac_record.get('kind')} {dac_record.get('name')} sha256 "
            f"{str(dac_record.get('sha256'))[:12]}…"
        )
    if problems:
        raise CodecMismatchError(
            "the DAC does not match the codec of the checkpoint's training features ("
            + "; ".join(problems)
            + "): pick the same model with --models-kind / --models-seed / --models-cache-dir / --models-dac-weights"
        )


def window_frames(cfg: TrainConfig) -> int:
    """Target frames per generation window: the trained length ``cfg.data.frames``.

    Raises:
        ValueError: a window with a one-frame timbre prompt does not fit ``max_seq_len``.
    """
    frames = cfg.data.frames
    if packed_length(cfg.model.layout, 1, frames) > cfg.model.max_seq_len:
        raise ValueError(f"data.frames {frames} does not fit max_seq_len {cfg.model.max_seq_len}")
    return frames


def timbre_frames(cfg: TrainConfig, seconds: float) -> int:
    """Timbre prompt frames: ``seconds`` of audio, at most ``data.timbre_max_frames`` and at most what
    ``max_seq_len`` leaves beside one window (AR and NAR rows)."""
    if seconds <= 0:
        raise ValueError(f"timbre_seconds must be > 0, got {seconds}")
    frames = window_frames(cfg)
    room = cfg.model.max_seq_len - max(packed_length(cfg.model.layout, 0, frames), packed_length("nar", 0, frames))
    return max(1, min(round(seconds * FRAME_RATE), cfg.data.timbre_max_frames, room))


@dataclass(frozen=True)
class Generated:
    """What :func:`generate` made: the audio and the notes it was conditioned on."""

    audio: F32  # float32 (1, samples) at sample_rate, as long as the hum
    sample_rate: int  # the codec's rate, 44 100 Hz
    notes: list[NoteEvent]  # Basic Pitch's notes of the hum (rendered as the sine conditioning)


def generate(
    hum_audio: F32,
    hum_sample_rate: int,
    timbre_audio: F32,
    timbre_sample_rate: int,
    ar: HummingLM,
    nar: NARUpsampler,
    cfg: TrainConfig,
    dac: Any,
    pitch_detector: PitchDetector,
    *,
    top_k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    timbre_seconds: float = 5.0,
    batch_size: int = 16,
) -> Generated:
    """Play the hum's melody with the timbre clip's instrument.

    Args:
        hum_audio: float32 ``(channels, samples)``, any rate and length (>= 1 sample).
        hum_sample_rate: rate of ``hum_audio`` in Hz.
        timbre_audio: float32 ``(channels, samples)``: the instrument to imitate; its first ``timbre_seconds``
            (capped by :func:`timbre_frames`) are the prompt.
        timbre_sample_rate: rate of ``timbre_audio`` in Hz.
        ar, nar: the models of one checkpoint (:func:`hummingml.train.checkpoint.load_checkpoint`); they run on the
            device of their parameters.
        cfg: the checkpoint's training config (model shape, ``data.frames``, ``data.timbre_max_frames``).
        dac: the ``dac.DAC`` the training features were extracted with (see :func:`check_codec`).
        pitch_detector: Basic Pitch, as used by the extraction.
        top_k: 1 = greedy level 0; else top-k sampling at ``temperature`` with a generator seeded by ``seed``. The
            NAR levels are always greedy.
        timbre_seconds: prompt length in seconds; training drew prompts of ``data.timbre_min_frames`` to
            ``data.timbre_max_frames`` frames.
        batch_size: generation windows per forward pass.

    Returns:
        :class:`Generated`: ``audio`` float32 ``(1, round(hum samples * sample_rate / hum_sample_rate))`` at the
        codec's rate (44 100 Hz), and the notes Basic Pitch found in the hum.

    Raises:
        CodecMismatchError: ``dac`` does not fit the model config (sizes, frame rate).
        ValueError: bad audio shapes or lengths that cannot fit ``max_seq_len``.
    """
    check_codec(cfg.model, dac)
    for name, audio in (("hum_audio", hum_audio), ("timbre_audio", timbre_audio)):
        if audio.ndim != 2 or audio.shape[1] < 1:
            raise ValueError(f"{name} must be (channels, samples) with >= 1 sample, got shape {audio.shape}")
    P = timbre_frames(cfg, timbre_seconds)
    hum, timbre = conditioning_audio(hum_audio, hum_sample_rate, timbre_audio, timbre_sample_rate, P,
                                     receptive_field_frames(dac))  # fmt: skip
    notes = pitch_detector.detect(hum, FEATURE_SAMPLE_RATE)
    if not notes:
        warnings.warn("Basic Pitch found no notes in the hum: the sine conditioning is silence", stacklevel=2)
    sine = render_sine(notes, hum.shape[1], FEATURE_SAMPLE_RATE)
    tokens = encode_batch([sine, hum, timbre], FEATURE_SAMPLE_RATE, dac, CodecConfig())
    sine_codes, hum_codes, timbre_codes = (t.codes[0] for t in tokens)
    windows = make_windows(sine_codes, hum_codes, timbre_codes, cfg, P)
    outs = generate_windows(windows, ar, nar, cfg, top_k=top_k, temperature=temperature, seed=seed,
                            batch_size=batch_size)  # fmt: skip
    codes = np.concatenate(outs, axis=1)  # (N, F)
    audio, sample_rate = codec.decode(CodecTokens(codes[None], float(dac.sample_rate) / int(dac.hop_length)), dac)
    n_out = round(hum_audio.shape[1] * sample_rate / hum_sample_rate)
    return Generated(fit_length(audio, n_out), sample_rate, notes)


def conditioning_audio(
    hum_audio: F32, hum_sample_rate: int, timbre_audio: F32, timbre_sample_rate: int, prompt_frames: int,
    receptive_frames: int,
) -> tuple[F32, F32]:  # fmt: skip
    """The hum and the timbre clip as the model's conditioning audio: mono at 22.05 kHz, float32 ``(1, samples)``.

    The timbre clip keeps ``prompt_frames`` frames plus one encoder receptive field (``receptive_frames``) of real
    audio after them, so the last prompt frames are not encoded against zero padding (training clips were cut from
    longer codes).
    """
    hum = to_mono(resample(hum_audio, hum_sample_rate, FEATURE_SAMPLE_RATE))
    keep = (prompt_frames + receptive_frames) * FRAME_HOP
    timbre = to_mono(resample(timbre_audio, timbre_sample_rate, FEATURE_SAMPLE_RATE))[:, :keep]
    return hum, timbre


def make_windows(
    sine_codes: npt.NDArray[np.integer], hum_codes: npt.NDArray[np.integer], timbre_codes: npt.NDArray[np.integer],
    cfg: TrainConfig, prompt_frames: int,
) -> list[dict[str, npt.NDArray[np.int64]]]:  # fmt: skip
    """Generation windows of :func:`window_frames` frames: the first ``cond_codebooks`` levels of the sine and hum
    codes (each ``(n_codebooks, F)``), with the first ``prompt_frames`` frames of the timbre codes as every window's
    prompt. The last window holds what is left (``F`` need not be a multiple of the window)."""
    W, Kc = window_frames(cfg), cfg.model.cond_codebooks
    sine, hum = sine_codes.astype(np.int64), hum_codes.astype(np.int64)
    timbre = timbre_codes[:, :prompt_frames].astype(np.int64)
    return [{"timbre": timbre, "sine": sine[:Kc, s : s + W], "mono": hum[:Kc, s : s + W]}
            for s in range(0, sine.shape[1], W)]  # fmt: skip


def generate_windows(
    windows: list[dict[str, npt.NDArray[np.int64]]],
    ar: HummingLM,
    nar: NARUpsampler,
    cfg: TrainConfig,
    *,
    top_k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[npt.NDArray[np.int16]]:
    """All codebook levels of each window (from :func:`make_windows`, of one request or of several): int16
    ``(n_codebooks, window frames)`` each, in order. Level 0 comes from ``ar`` (greedy, or top-k sampling from a
    generator seeded by ``seed``), levels 1..N-1 from ``nar``, ``batch_size`` windows per forward pass."""
    import torch

    device = next(ar.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ar.eval()
    nar.eval()
    outs: list[npt.NDArray[np.int16]] = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        batch = {k: v.to(device) for k, v in make_batch(chunk, cfg.model, frames=window_frames(cfg)).items()}
        level0 = ar.generate(batch, top_k=top_k, temperature=temperature, generator=generator)
        out = nar.generate(batch, level0).cpu().numpy()  # (B, N, W), zero past each window's end
        outs.extend(out[j, :, : w["sine"].shape[1]].astype(np.int16) for j, w in enumerate(chunk))
    return outs


def fit_length(audio: F32, n_samples: int) -> F32:
    """``audio`` cropped or zero-padded to ``n_samples`` (DAC decodes whole frames: the last frame overshoots, and
    rounding can leave it one sample short), contiguous float32."""
    audio = audio[:, :n_samples]
    if audio.shape[1] < n_samples:
        audio = np.pad(audio, ((0, 0), (0, n_samples - audio.shape[1])))
    return np.ascontiguousarray(audio, dtype=np.float32)


# --- command line --------------------------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    """Flags -> config. ``--models-*`` flags not given take the values of the extraction that made the checkpoint's
    training features (when its output is readable here; see :func:`recorded_models_config`), else the defaults."""
    cfg = from_flags(GenerateConfig, args)
    if not (cfg.hum and cfg.timbre and cfg.checkpoint):
        raise SystemExit("hummingml generate: --hum, --timbre and --checkpoint are required")
    record = extraction_record(load_train_config(cfg.checkpoint).data.features)
    models = from_flags(ModelsConfig, args, prefix="models_", base=recorded_models_config(record))
    return dataclasses.replace(cfg, models=models)


def run(cfg: GenerateConfig, log: TextIO = sys.stdout) -> str:
    """Load everything, generate, write ``cfg.output`` (16-bit WAV, clipped to [-1, 1]); returns its path.

    Raises:
        CodecMismatchError: the DAC ``cfg.models`` loads is not the training features' codec.
    """

    train_cfg, ar, nar = load_checkpoint(cfg.checkpoint)
    dac, identity = load_dac(cfg.models)
    record = extraction_record(train_cfg.data.features)
    if record is None:
        print(f"[generate] {train_cfg.data.features} is not readable here: DAC weights not compared", file=log)
    check_codec(train_cfg.model, dac, identity, record)
    hum, hum_rate = decode(cfg.hum)
    timbre, timbre_rate = decode(cfg.timbre)
    generated = generate(
        hum, hum_rate, timbre, timbre_rate, ar, nar, train_cfg, dac, PitchDetector(),
        top_k=cfg.top_k, temperature=cfg.temperature, seed=cfg.seed, timbre_seconds=cfg.timbre_seconds,
        batch_size=cfg.batch_size,
    )  # fmt: skip
    audio, rate = generated.audio, generated.sample_rate
    write_pcm16(cfg.output, audio, rate)
    print(
        f"[generate] wrote {cfg.output}: {audio.shape[1] / rate:.2f} s at {rate} Hz "
        f"(checkpoint {train_cfg.name}, {train_cfg.preset}; DAC {identity.kind} {identity.name})",
        file=log,
    )
    return cfg.output
