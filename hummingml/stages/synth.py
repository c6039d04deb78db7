"""Sine rendering: note events -> a sine-wave "MIDI signal" on the feature frame grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hummingml.audio import F32, FEATURE_SAMPLE_RATE, FRAME_HOP
from hummingml.stages.pitch import NoteEvent

FADE_S = 0.005  # s, raised-cosine ramp at each note edge: short enough for 16th notes, long enough to avoid clicks
PEAK = 0.5  # full-velocity amplitude of one note; overlapping notes are scaled down only if they would pass 0.99


def midi_to_hz(pitch: float) -> float:
    """Equal-tempered frequency of a MIDI note number, A4 = 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def snap(seconds: float, sample_rate: int, hop: int | None) -> int:
    """A time in seconds as a sample index, rounded to the nearest multiple of ``hop`` (of 1 when ``hop`` is None)."""
    step = hop or 1
    return round(seconds * sample_rate / step) * step


def render_sine(
    notes: Sequence[NoteEvent],
    n_samples: int,
    sample_rate: int = FEATURE_SAMPLE_RATE,
    hop: int | None = FRAME_HOP,
    fade_s: float = FADE_S,
) -> F32:
    """Render notes as summed sines.

    Each note occupies the samples from its onset to its offset (phase 0 half a sample before the onset). Both edges
    are snapped to the ``hop`` grid (256 samples at 22.05 kHz is the DAC 44 kHz frame grid) and softened with a
    raised-cosine ramp of ``fade_s`` (at most half the note). Amplitude is ``PEAK * note.amplitude``. If
    overlapping notes would exceed 0.99 the whole signal is scaled down to peak 0.99.

    Args:
        notes: the notes; pitches may be fractional (bends), amplitudes in [0, 1].
        n_samples: output length; notes past the end are cut.
        sample_rate: output rate in Hz.
        hop: grid in samples that note edges snap to, or None for the nearest sample.
        fade_s: ramp length in seconds at each edge.

    Returns:
        float32 ``(1, n_samples)``.
    """
    out = np.zeros(n_samples, dtype=np.float64)
    fade = max(1, round(fade_s * sample_rate))
    for note in notes:
        start = max(0, snap(note.start_s, sample_rate, hop))
        end = min(n_samples, snap(note.end_s, sample_rate, hop))
        length = end - start
        if length <= 0:
            continue
        t = (np.arange(length) + 0.5) / sample_rate  # sample centres: no sample of a note is an exact zero edge
        tone = np.sin(2 * np.pi * midi_to_hz(note.pitch) * t)
        ramp_len = min(fade, length // 2)
        if ramp_len > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len) + 0.5) / ramp_len)
            tone[:ramp_len] *= ramp
            tone[length - ramp_len :] *= ramp[::-1]
        out[start:end] += PEAK * float(np.clip(note.amplitude, 0.0, 1.0)) * tone
    peak = float(np.abs(out).max()) if n_samples else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return out.astype(np.float32)[None, :]
