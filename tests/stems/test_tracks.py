"""The track-to-stem rule, and MIDI files read back into parts."""

from __future__ import annotations

import io

import pretty_midi
import pytest

from hummingml.audio import STEMS
from hummingml.stems.tracks import read_parts, stem_of
from hummingml.testing.corpus import make_song, song_midi


@pytest.mark.parametrize(
    ("name", "program", "is_drum", "stem"),
    [
        ("", 0, True, "drums"), ("", 33, False, "bass"), ("", 39, False, "bass"), ("", 52, False, "vocals"),
        ("", 54, False, "vocals"), ("", 85, False, "vocals"), ("", 80, False, "lead"), ("", 87, False, "lead"),
        ("", 0, False, "chordal"), ("", 19, False, "chordal"), ("", 27, False, "chordal"), ("", 48, False, "chordal"),
        ("", 90, False, "chordal"), ("", 12, False, "other"), ("", 56, False, "other"), ("", 127, False, "other"),
        ("Lead", 0, False, "lead"), ("MELODY line", 33, False, "lead"), ("bass", 81, False, "bass"),
        ("Lead Vocals", 81, False, "vocals"), ("Bass Drum", 0, True, "drums"), ("other", 0, True, "other"),
        ("Chords", 80, False, "chordal"), ("Piano 2", 81, False, "lead"),
    ],
)  # fmt: skip
def test_a_named_stem_wins_then_the_drum_channel_then_the_program(name, program, is_drum, stem) -> None:
    assert stem_of(name, program, is_drum) == stem


def test_the_corpus_midi_reads_back_as_one_part_per_stem_with_its_notes() -> None:
    song = make_song(0, seed=2, seconds=3.0)
    data = song_midi(song)
    parts, end_s = read_parts(data)
    tick_s = 60.0 / (song.info.tempo_bpm * pretty_midi.PrettyMIDI(io.BytesIO(data)).resolution)
    assert [p.stem for p in parts] == list(STEMS) and [p.name for p in parts] == list(STEMS)
    assert [p.is_drum for p in parts] == [s == "drums" for s in STEMS]
    for part in parts:
        truth = sorted(song.notes[part.stem], key=lambda n: (n.start_s, n.pitch))
        assert [n.pitch for n in part.notes] == [n.pitch for n in truth]
        for got, want in zip(part.notes, truth, strict=True):  # times are MIDI ticks: within one
            assert abs(got.start_s - want.start_s) <= tick_s and abs(got.end_s - want.end_s) <= tick_s
    assert end_s == pytest.approx(max(n.end_s for notes in song.notes.values() for n in notes), abs=tick_s)


def test_a_file_that_is_not_midi_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="not a readable MIDI file"):
        read_parts(b"RIFF not a midi file")


def test_an_unnamed_track_goes_by_its_program() -> None:
    midi = pretty_midi.PrettyMIDI()
    for program in (34, 0, 81):
        inst = pretty_midi.Instrument(program=program)
        inst.notes.append(pretty_midi.Note(100, 60, 0.0, 0.5))
        midi.instruments.append(inst)
    buf = io.BytesIO()
    midi.write(buf)
    parts, _ = read_parts(buf.getvalue())
    assert [(p.program, p.stem) for p in parts] == [(34, "bass"), (0, "chordal"), (81, "lead")]
