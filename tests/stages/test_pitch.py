from __future__ import annotations

import io

import mir_eval
import numpy as np
import pretty_midi

from hummingml.audio import FEATURE_SAMPLE_RATE
from hummingml.stages.pitch import NoteEvent, notes_to_midi
from hummingml.stages.synth import render_sine
from hummingml.testing.signals import silence, sine

MELODY = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 67]  # C major up and down, then G


def melody_notes(beat_s: float = 0.25) -> list[NoteEvent]:
    """A monophonic melody: each note a beat long with a short gap."""
    return [NoteEvent(0.1 + i * beat_s, 0.1 + (i + 0.85) * beat_s, p, 0.8) for i, p in enumerate(MELODY)]


def onset_f1(reference: list[NoteEvent], estimate: list[NoteEvent]) -> float:
    def arrays(notes):
        intervals = np.array([[n.start_s, n.end_s] for n in notes]).reshape(-1, 2)
        pitches = np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])
        return intervals, pitches

    (ri, rp), (ei, ep) = arrays(reference), arrays(estimate)
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(ri, rp, ei, ep, offset_ratio=None)
    return float(f1)


def test_a_440hz_sine_is_midi_69(pitch_detector) -> None:
    notes = pitch_detector.detect(sine(440.0, seconds=1.0, sample_rate=FEATURE_SAMPLE_RATE), FEATURE_SAMPLE_RATE)
    assert [n.pitch for n in notes] == [69]
    assert notes[0].start_s < 0.1 and notes[0].end_s > 0.8
    assert 0 < notes[0].amplitude <= 1


def test_input_at_another_rate_is_resampled_inside(pitch_detector) -> None:
    notes = pitch_detector.detect(sine(440.0, seconds=1.0, sample_rate=44_100, channels=2), 44_100)
    assert [n.pitch for n in notes] == [69]


def test_silence_has_no_notes(pitch_detector) -> None:
    assert pitch_detector.detect(silence(2.0, FEATURE_SAMPLE_RATE), FEATURE_SAMPLE_RATE) == []


def test_rendered_melody_round_trips_through_basic_pitch(pitch_detector) -> None:
    reference = melody_notes()
    n = int(5.0 * FEATURE_SAMPLE_RATE)  # > 2 s, so several overlapping model windows are stitched
    audio = render_sine(reference, n, FEATURE_SAMPLE_RATE)
    estimate = pitch_detector.detect(audio, FEATURE_SAMPLE_RATE)
    assert onset_f1(reference, estimate) >= 0.9


def test_notes_to_midi_is_a_standard_midi_file() -> None:
    notes = melody_notes()
    midi = pretty_midi.PrettyMIDI(io.BytesIO(notes_to_midi(notes)))
    got = midi.instruments[0].notes
    assert [n.pitch for n in got] == [n.pitch for n in notes]
    np.testing.assert_allclose([n.start for n in got], [n.start_s for n in notes], atol=2e-3)
