"""The remix of an uploaded song: separate, clean the vocals, find their melody, have HummingLM play it on an
instrument, and mix the cleaned vocals, that instrument and the backing stems at matched loudness.

1. The song goes to 44.1 kHz stereo (more channels mixed down, mono doubled) and Demucs splits it into the six stems
   (or the caller hands over stems it already has, e.g. a multitrack upload).
2. The vocal stem is cleaned: non-stationary spectral gating (``noisereduce``, ``RemixConfig.denoise`` of the noise
   estimate removed), then a gate that mutes 20 ms frames more than ``gate_db`` below the loudest one.
3. HummingLM plays the cleaned vocals' melody (Basic Pitch notes, rendered as the sine conditioning) with the
   instrument clip's timbre (:meth:`hummingml.serve.model.HumModel.play`). The ``lead`` stem is what it replaces.
4. Three parts (``vocals``, ``instrument``, ``backing`` = drums + bass + chordal + other) are each brought to
   ``target_lufs`` plus their offset (ITU-R BS.1770 integrated loudness, ``pyloudnorm``), summed, and the sum is
   brought to ``target_lufs``; when its sample peak would pass ``peak``, the whole mix is scaled down instead (no
   clipping, no distortion: one gain).

:func:`remix` returns the audio, each part as mixed, and a JSON-ready report of what was done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np

from hummingml.audio import F32, SOURCE_SAMPLE_RATE, downmix_to_stereo, resample, write_pcm16
from hummingml.eval.generate import Generated
from hummingml.serve.config import RemixCommandConfig, RemixConfig
from hummingml.serve.model import HumModel, load_hum_model
from hummingml.stages.separate import Stems

BACKING_STEMS = ("drums", "bass", "chordal", "other")  # stems kept under the new instrument and the vocals
GATE_FRAME_S = 0.02  # frame of the vocal gate, seconds
MIN_LOUDNESS_S = 0.4  # shorter parts are measured by RMS (BS.1770 needs one 400 ms block)


@dataclass
class RemixResult:
    """The remix: 44.1 kHz stereo audio, the parts as they were mixed (before the final gain), and the report."""

    audio: F32  # float32 (2, samples), peak <= RemixConfig.peak
    sample_rate: int
    parts: dict[str, F32] = field(default_factory=dict)  # vocals, instrument, backing: float32 (2, samples)
    report: dict[str, Any] = field(default_factory=dict)


def to_stereo(audio: F32, sample_rate: int, target_rate: int = SOURCE_SAMPLE_RATE) -> F32:
    """float32 ``(2, samples)`` at ``target_rate``: more than two channels mixed down, mono doubled."""
    stereo, _ = downmix_to_stereo(audio)
    stereo = resample(stereo, sample_rate, target_rate) if sample_rate != target_rate else stereo
    return np.ascontiguousarray(np.repeat(stereo, 2, axis=0) if stereo.shape[0] == 1 else stereo, dtype=np.float32)


def loudness_db(audio: F32, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770 via pyloudnorm); RMS in dBFS for clips under 400 ms; ``-inf`` for
    silence."""
    if not np.any(audio):
        return -math.inf
    if audio.shape[1] < MIN_LOUDNESS_S * sample_rate:
        return 20.0 * math.log10(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))))
    import pyloudnorm

    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64)))


def gain_to(audio: F32, sample_rate: int, target_db: float) -> tuple[F32, float]:
    """``audio`` scaled to ``target_db`` of :func:`loudness_db`, and the gain in dB (0 for silence)."""
    level = loudness_db(audio, sample_rate)
    if not math.isfinite(level):
        return audio, 0.0
    gain_db = target_db - level
    return (audio * 10.0 ** (gain_db / 20.0)).astype(np.float32), gain_db


def clean_vocals(vocals: F32, sample_rate: int, cfg: RemixConfig | None = None) -> F32:
    """Spectral-gating denoise (``cfg.denoise``), then the frame gate (``cfg.gate_db``); same shape as ``vocals``
    (``cfg`` None: the defaults)."""
    cfg = cfg or RemixConfig()
    out = vocals.astype(np.float32)
    if cfg.denoise > 0 and np.any(out):
        import noisereduce

        out = noisereduce.reduce_noise(y=out, sr=sample_rate, stationary=False, prop_decrease=cfg.denoise)
        out = np.asarray(out, dtype=np.float32).reshape(vocals.shape)
    if cfg.gate_db < 0 and np.any(out):
        hop = max(1, round(GATE_FRAME_S * sample_rate))
        n = math.ceil(out.shape[1] / hop)
        padded = np.pad(out, ((0, 0), (0, n * hop - out.shape[1])))
        rms = np.sqrt(np.mean(np.square(padded.reshape(out.shape[0], n, hop), dtype=np.float64), axis=(0, 2)))
        open_ = rms >= rms.max() * 10.0 ** (cfg.gate_db / 20.0)
        # a 3-frame moving maximum keeps note edges; a linear ramp between frames avoids clicks
        edges = np.pad(open_, 1)
        open_ = (edges[:-2] | edges[1:-1] | edges[2:]).astype(np.float64)
        gain = np.interp(np.arange(out.shape[1]), np.arange(n) * hop + hop / 2, open_)
        out = (out * gain[None, :]).astype(np.float32)
    return out


def mix(parts: Mapping[str, F32], sample_rate: int, offsets_db: Mapping[str, float], cfg: RemixConfig
        ) -> tuple[F32, dict[str, F32], dict[str, Any]]:  # fmt: skip
    """Bring each part to ``cfg.target_lufs + offsets_db[name]``, sum, bring the sum to ``cfg.target_lufs`` and keep
    its peak under ``cfg.peak``. Returns the mix, the parts as summed, and what was measured and applied."""
    leveled, report = {}, {}
    for name, part in parts.items():
        before = loudness_db(part, sample_rate)
        leveled[name], gain_db = gain_to(part, sample_rate, cfg.target_lufs + offsets_db[name])
        report[name] = {"loudness_db": _finite(before), "gain_db": round(gain_db, 2)}
    total = np.stack(list(leveled.values())).sum(axis=0, dtype=np.float64).astype(np.float32)
    total, mix_gain_db = gain_to(total, sample_rate, cfg.target_lufs)
    peak = float(np.abs(total).max()) if total.size else 0.0
    limiter_db = 0.0
    if peak > cfg.peak:
        limiter_db = 20.0 * math.log10(cfg.peak / peak)
        total = (total * (cfg.peak / peak)).astype(np.float32)
    scale = 10.0 ** ((mix_gain_db + limiter_db) / 20.0)
    as_mixed = {name: (part * scale).astype(np.float32) for name, part in leveled.items()}
    summary = {
        "parts": report,
        "mix_gain_db": round(mix_gain_db, 2),
        "limiter_gain_db": round(limiter_db, 2),
        "loudness_db": _finite(loudness_db(total, sample_rate)),
        "peak": round(float(np.abs(total).max()), 4),
    }
    return total, as_mixed, summary


def _finite(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else None


def remix(
    song: F32,
    sample_rate: int,
    instrument: F32,
    instrument_rate: int,
    model: HumModel,
    *,
    separate: Callable[[F32, int], Stems] | None = None,
    stems: Stems | None = None,
    cfg: RemixConfig | None = None,
) -> RemixResult:
    """Remix ``song`` (float32 ``(channels, samples)`` at ``sample_rate``) with ``instrument`` playing its vocal melody.

    Args:
        song: the upload, any channel count and rate.
        instrument: the instrument clip (its first ``cfg.timbre_seconds`` are the prompt), at ``instrument_rate``.
        model: the hum model (:func:`hummingml.serve.model.load_hum_model`).
        separate: ``(stereo 44.1 kHz audio, 44100) -> Stems``, e.g. ``Separator(...).separate``; used when
            ``stems`` is None.
        stems: the song's six stems at 44.1 kHz, already separated; ``separate`` is then not called.
        cfg: see :class:`~hummingml.serve.config.RemixConfig`; None = the defaults.

    Returns:
        :class:`RemixResult` at 44.1 kHz, as long as the song.

    Raises:
        ValueError: neither ``separate`` nor ``stems``; stems of another length; an invalid ``cfg``.
    """
    cfg = cfg or RemixConfig()
    if problems := cfg.problems():
        raise ValueError("; ".join(problems))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rate = SOURCE_SAMPLE_RATE
    audio = to_stereo(song, sample_rate, rate)
    if stems is None:
        if separate is None:
            raise ValueError("remix needs a separate function or the song's stems")
        stems = separate(audio, rate)
        separated_by = "demucs"
    else:
        separated_by = "given"
    stem = {name: to_stereo(a, rate, rate) for name, a in stems.as_dict().items()}
    if any(a.shape[1] != audio.shape[1] for a in stem.values()):
        raise ValueError(f"stems must be as long as the song ({audio.shape[1]} samples at {rate} Hz)")
    timings["separate_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    vocals = clean_vocals(stem["vocals"], rate, cfg)
    timings["clean_s"] = time.perf_counter() - t
    t = time.perf_counter()
    played = model.play(vocals, rate, instrument, instrument_rate, top_k=cfg.top_k, seed=cfg.seed,
                        timbre_seconds=cfg.timbre_seconds)  # fmt: skip
    timings["play_s"] = time.perf_counter() - t
    stems = Stems(**stem, sample_rate=rate)
    return assemble(song, sample_rate, audio, stems, vocals, played, model.describe(), cfg, timings, separated_by)


def assemble(
    song: F32,
    sample_rate: int,
    audio: F32,
    stems: Stems,
    vocals: F32,
    played: Generated,
    model: dict[str, Any],
    cfg: RemixConfig,
    timings: dict[str, float],
    stems_from: str,
) -> RemixResult:
    """The last step of :func:`remix`: mix the cleaned ``vocals``, the ``played`` instrument and the backing stems
    (all at 44.1 kHz, as long as ``audio``, the song in stereo at 44.1 kHz) and write the report (``model`` is the
    hum model's description, ``stems_from`` says where the stems came from, ``timings`` the steps so far)."""
    rate = SOURCE_SAMPLE_RATE
    t = time.perf_counter()
    played_audio = to_stereo(played.audio, played.sample_rate, rate)[:, : audio.shape[1]]
    stem = stems.as_dict()
    parts = {
        "vocals": vocals,
        "instrument": np.pad(played_audio, ((0, 0), (0, audio.shape[1] - played_audio.shape[1]))),
        "backing": np.stack([stem[s] for s in BACKING_STEMS]).sum(axis=0, dtype=np.float64).astype(np.float32),
    }
    offsets = {"vocals": cfg.vocals_db, "instrument": cfg.instrument_db, "backing": cfg.backing_db}
    out, as_mixed, mixed = mix(parts, rate, offsets, cfg)
    timings = {**timings, "mix_s": time.perf_counter() - t}
    report = {
        "input": {
            "seconds": round(song.shape[1] / sample_rate, 4),
            "sample_rate": sample_rate,
            "channels": song.shape[0],
        },
        "output": {"seconds": round(out.shape[1] / rate, 4), "sample_rate": rate, "channels": 2},
        "stems": stems_from,
        "model": model,
        "notes": [{"start_s": round(n.start_s, 4), "end_s": round(n.end_s, 4), "pitch": n.pitch} for n in played.notes],
        "mix": mixed,
        "config": asdict(cfg),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return RemixResult(out, rate, as_mixed, report)


# --- hummingml remix -----------------------------------------------------------------------------------------------


def instrument_clip(instrument: str) -> tuple[F32, int]:
    """The instrument clip of ``instrument``: a preset name (:func:`hummingml.serve.presets.preset_names`) or the
    path of an audio file. Raises ConfigError naming both when it is neither."""
    import os

    from hummingml.audio import decode
    from hummingml.config import ConfigError
    from hummingml.serve.presets import preset_clip, preset_names

    if instrument in preset_names():
        return preset_clip(instrument), SOURCE_SAMPLE_RATE
    if not os.path.isfile(instrument):
        raise ConfigError(f"--instrument {instrument!r} is neither a preset ({', '.join(preset_names())}) nor a file")
    return decode(instrument)


def read_stems(directory: str) -> Stems:
    """The six stems ``<directory>/<stem>.wav`` (any sample rate, the same for all six), as :class:`Stems`.

    Raises:
        ConfigError: a stem file is missing, or the stems differ in rate or length.
    """
    from pathlib import Path

    from hummingml.audio import STEMS, decode
    from hummingml.config import ConfigError

    missing = [s for s in STEMS if not (Path(directory) / f"{s}.wav").is_file()]
    if missing:
        raise ConfigError(f"--stems {directory}: no {', '.join(f'{s}.wav' for s in missing)}")
    decoded = {s: decode(Path(directory) / f"{s}.wav") for s in STEMS}
    rates = {rate for _, rate in decoded.values()}
    lengths = {audio.shape[1] for audio, _ in decoded.values()}
    if len(rates) > 1 or len(lengths) > 1:
        raise ConfigError(f"--stems {directory}: the stems differ in sample rate or length")
    return Stems(**{s: audio for s, (audio, _) in decoded.items()}, sample_rate=rates.pop())


def run_command(cfg: RemixCommandConfig, log: TextIO | None = None) -> RemixResult:
    """``hummingml remix``: load, remix, write the WAV (16-bit), its JSON sidecar and the parts; returns the result.

    ``log`` is where the one-line summary goes (default stdout).
    """
    import json
    import os
    import sys

    from hummingml.audio import decode
    from hummingml.config import ConfigError

    log = log or sys.stdout
    if not os.path.isfile(cfg.song):
        raise ConfigError(f"--song {cfg.song} is not a file")
    song, rate = decode(cfg.song)
    clip, clip_rate = instrument_clip(cfg.instrument)
    stems = None
    if cfg.stems:
        stems = read_stems(cfg.stems)
        stems = Stems(**{s: to_stereo(a, stems.sample_rate) for s, a in stems.as_dict().items()},
                      sample_rate=SOURCE_SAMPLE_RATE)  # fmt: skip
    model = load_hum_model(cfg.checkpoint, cfg.models)
    separate = None
    if stems is None:
        from hummingml.stages.separate import SeparateConfig, Separator

        separate = Separator(SeparateConfig(models=cfg.models)).separate
    result = remix(song, rate, clip, clip_rate, model, separate=separate, stems=stems, cfg=cfg.mix)
    result.report["song"] = os.path.abspath(cfg.song)
    result.report["instrument"] = cfg.instrument
    write_pcm16(cfg.output, result.audio, result.sample_rate)
    sidecar = os.path.splitext(cfg.output)[0] + ".json"
    with open(sidecar, "w") as f:
        json.dump(result.report, f, indent=2)
    if cfg.parts:
        os.makedirs(cfg.parts, exist_ok=True)
        for name, part in result.parts.items():
            write_pcm16(os.path.join(cfg.parts, f"{name}.wav"), part, result.sample_rate)
    print(
        f"[remix] wrote {cfg.output} ({result.audio.shape[1] / result.sample_rate:.2f} s, 44.1 kHz stereo, "
        f"{len(result.report['notes'])} notes, peak {result.report['mix']['peak']}) and {sidecar}; {model.label}",
        file=log,
    )
    return result

