from __future__ import annotations

import numpy as np

from hummingml.audio import FEATURE_SAMPLE_RATE, FRAME_HOP
from hummingml.stages.pitch import NoteEvent
from hummingml.stages.synth import PEAK, midi_to_hz, render_sine


def test_shape_dtype_and_silence_outside_notes() -> None:
    out = render_sine([NoteEvent(0.5, 1.0, 69, 1.0)], 2 * FEATURE_SAMPLE_RATE)
    assert out.shape == (1, 2 * FEATURE_SAMPLE_RATE) and out.dtype == np.float32
    start, end = (
        round(0.5 * FEATURE_SAMPLE_RATE / FRAME_HOP) * FRAME_HOP,
        round(1.0 * FEATURE_SAMPLE_RATE / FRAME_HOP) * FRAME_HOP,
    )
    assert not out[0, :start].any() and not out[0, end:].any()
    assert out[0, start] != 0 and out[0, end - 1] != 0  # sample-accurate edges (ramps never reach exact 0)


def test_note_edges_land_on_the_frame_grid() -> None:
    out = render_sine([NoteEvent(0.1234, 0.4567, 60, 1.0)], FEATURE_SAMPLE_RATE)
    nonzero = np.flatnonzero(out[0])
    assert nonzero[0] % FRAME_HOP == 0 and (nonzero[-1] + 1) % FRAME_HOP == 0


def test_without_a_grid_edges_are_the_nearest_sample() -> None:
    out = render_sine([NoteEvent(0.1, 0.2, 60, 1.0)], FEATURE_SAMPLE_RATE, hop=None)
    nonzero = np.flatnonzero(out[0])
    assert nonzero[0] == round(0.1 * FEATURE_SAMPLE_RATE) and nonzero[-1] + 1 == round(0.2 * FEATURE_SAMPLE_RATE)


def test_click_free_no_step_larger_than_the_sine_itself_makes() -> None:
    notes = [NoteEvent(0.0, 0.3, 72, 1.0), NoteEvent(0.3, 0.6, 79, 1.0), NoteEvent(0.6, 0.61, 84, 1.0)]
    out = render_sine(notes, FEATURE_SAMPLE_RATE)[0].astype(np.float64)
    steepest_sine = PEAK * 2 * np.pi * midi_to_hz(84) / FEATURE_SAMPLE_RATE  # max |d/dn| of the highest note
    assert np.abs(np.diff(out)).max() <= steepest_sine * 1.001
    assert abs(out[0]) < 0.05 * PEAK  # starts from (near) zero, no step at the onset


def test_frequency_and_amplitude() -> None:
    out = render_sine([NoteEvent(0.0, 1.0, 69, 0.5)], FEATURE_SAMPLE_RATE)[0]
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * FEATURE_SAMPLE_RATE / len(out) - 440.0) <= 1.0
    assert abs(np.abs(out).max() - PEAK * 0.5) < 1e-3


def test_overlapping_notes_never_clip() -> None:
    chord = [NoteEvent(0.0, 1.0, p, 1.0) for p in (60, 64, 67, 72)]
    assert np.abs(render_sine(chord, FEATURE_SAMPLE_RATE)).max() <= 0.99 + 1e-6


def test_notes_past_the_end_are_cut() -> None:
    out = render_sine([NoteEvent(0.9, 5.0, 69, 1.0)], FEATURE_SAMPLE_RATE)
    assert out.shape == (1, FEATURE_SAMPLE_RATE) and out[0, -1] != 0
