"""Note transcription with Spotify's Basic Pitch (its bundled ONNX model), on arrays, without TensorFlow."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hummingml.audio import F32, FEATURE_SAMPLE_RATE, resample, to_mono

BASIC_PITCH_SAMPLE_RATE = 22_050  # Hz, basic_pitch.constants.AUDIO_SAMPLE_RATE
WINDOW_OVERLAP_FRAMES = 30  # model frames shared by consecutive 2 s windows, as in basic_pitch.inference.run_inference


@dataclass(frozen=True)
class NoteEvent:
    """One note: onset and offset in seconds, MIDI pitch number, amplitude in [0, 1]."""

    start_s: float
    end_s: float
    pitch: int
    amplitude: float


@dataclass(frozen=True)
class PitchConfig:
    """Basic Pitch post-processing settings (the defaults are Basic Pitch's own)."""

    onset_threshold: float = 0.5  # minimum onset posterior for a note to start
    frame_threshold: float = 0.3  # minimum frame posterior for a note to continue
    minimum_note_length_ms: float = 127.70  # shorter notes are dropped (11 model frames)
    minimum_frequency_hz: float | None = None  # notes below are dropped; None keeps all
    maximum_frequency_hz: float | None = None  # notes above are dropped; None keeps all
    melodia_trick: bool = True  # Basic Pitch's extra pass that recovers notes without onsets
    windows_per_call: int = 16  # 2 s windows sent to onnxruntime in one call


def _require_basic_pitch() -> Any:
    try:
        import basic_pitch
        import basic_pitch.inference
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Basic Pitch is not installed; run the project's install script (see README, 'Install')"
        ) from exc
    return basic_pitch


def load_basic_pitch_model(model_path: str | None = None) -> Any:
    """Load Basic Pitch's model (by default the ONNX file shipped inside the basic-pitch wheel)."""
    basic_pitch = _require_basic_pitch()
    return basic_pitch.inference.Model(model_path or basic_pitch.ICASSP_2022_MODEL_PATH)


def model_posteriors(audio: F32, sample_rate: int, model: Any, windows_per_call: int = 16) -> dict[str, np.ndarray]:
    """Run the Basic Pitch network over a whole signal.

    The signal is cut into the model's 2 s windows overlapping by 30 frames, exactly as Basic Pitch does, but the
    windows are batched and the input is an array, not a path.

    Args:
        audio: float32 ``(channels, samples)``; mixed to mono and resampled to 22.05 kHz here if needed.
        sample_rate: rate of ``audio`` in Hz.
        model: a ``basic_pitch.inference.Model``.
        windows_per_call: windows per onnxruntime call.

    Returns:
        ``{"note": (frames, 88), "onset": (frames, 88), "contour": (frames, 264)}`` posteriors at 86.13 frames/s.
    """
    from basic_pitch.constants import AUDIO_N_SAMPLES, FFT_HOP
    from basic_pitch.inference import unwrap_output, window_audio_file

    mono = to_mono(audio) if audio.shape[0] > 1 else audio
    mono = resample(mono, sample_rate, BASIC_PITCH_SAMPLE_RATE)[0]
    overlap_len = WINDOW_OVERLAP_FRAMES * FFT_HOP
    padded = np.concatenate([np.zeros(overlap_len // 2, dtype=np.float32), mono])
    windows = np.stack([w for w, _ in window_audio_file(padded, AUDIO_N_SAMPLES - overlap_len)])
    outputs: dict[str, list[np.ndarray]] = {"note": [], "onset": [], "contour": []}
    for i in range(0, len(windows), windows_per_call):
        for key, value in model.predict(windows[i : i + windows_per_call]).items():
            outputs[key].append(value)
    return {
        key: unwrap_output(np.concatenate(value), mono.shape[0], WINDOW_OVERLAP_FRAMES)
        for key, value in outputs.items()
    }


def detect_notes(audio: F32, sample_rate: int, model: Any, cfg: PitchConfig = PitchConfig()) -> list[NoteEvent]:
    """Transcribe notes from audio with Basic Pitch.

    Args:
        audio: float32 ``(channels, samples)``, any rate (resampled to 22.05 kHz inside).
        sample_rate: rate of ``audio`` in Hz.
        model: a ``basic_pitch.inference.Model`` (see :func:`load_basic_pitch_model`).
        cfg: thresholds and limits.

    Returns:
        Notes sorted by onset then pitch.
    """
    from basic_pitch.constants import AUDIO_SAMPLE_RATE, FFT_HOP
    from basic_pitch.note_creation import model_output_to_notes

    posteriors = model_posteriors(audio, sample_rate, model, cfg.windows_per_call)
    if posteriors["note"].shape[0] == 0:
        return []
    _, events = model_output_to_notes(
        posteriors,
        onset_thresh=cfg.onset_threshold,
        frame_thresh=cfg.frame_threshold,
        min_note_len=int(np.round(cfg.minimum_note_length_ms / 1000 * (AUDIO_SAMPLE_RATE / FFT_HOP))),
        min_freq=cfg.minimum_frequency_hz,
        max_freq=cfg.maximum_frequency_hz,
        melodia_trick=cfg.melodia_trick,
    )
    notes = [NoteEvent(float(s), float(e), int(p), float(a)) for s, e, p, a, *_ in events]
    return sorted(notes, key=lambda n: (n.start_s, n.pitch))


def notes_to_midi(notes: Sequence[NoteEvent], program: int = 0, tempo_bpm: float = 120.0) -> bytes:
    """A standard MIDI file (one instrument) holding ``notes``; velocity is ``round(127 * amplitude)``."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo_bpm)
    instrument = pretty_midi.Instrument(program=program)
    for n in notes:
        velocity = int(np.clip(round(127 * n.amplitude), 1, 127))
        instrument.notes.append(pretty_midi.Note(velocity=velocity, pitch=n.pitch, start=n.start_s, end=n.end_s))
    midi.instruments.append(instrument)
    buf = io.BytesIO()
    midi.write(buf)
    return buf.getvalue()


class PitchDetector:
    """Basic Pitch, loaded once per process, with its one-time warm-up paid in ``__init__``.

    Call :meth:`detect` per signal. Construct one per process (a Ray actor holds one for its lifetime).
    """

    def __init__(self, cfg: PitchConfig = PitchConfig(), model: Any = None) -> None:
        self.cfg = cfg
        self.model = model if model is not None else load_basic_pitch_model()
        # The first call pays onnxruntime session set-up and numba compilation in the post-processing; pay it now.
        t = np.arange(FEATURE_SAMPLE_RATE) / FEATURE_SAMPLE_RATE
        self.detect((0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :], FEATURE_SAMPLE_RATE)

    def detect(self, audio: F32, sample_rate: int) -> list[NoteEvent]:
        """Notes in ``audio`` (float32 ``(channels, samples)`` at ``sample_rate`` Hz); see :func:`detect_notes`."""
        return detect_notes(audio, sample_rate, self.model, self.cfg)
