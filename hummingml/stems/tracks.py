"""Which stem each MIDI track feeds.

:func:`stem_of` is the rule (docs/stems.md, "Track to stem"), applied in this order:

1. a track name that names a stem wins: a word of the name (letters only, any case) that is a stem name or one of
   :data:`NAME_WORDS`; when words name several stems, the first of :data:`NAME_PRIORITY` wins ("Lead Vocals" ->
   vocals, "Bass Drum" -> drums);
2. a track on the General MIDI percussion channel (channel 10) -> drums;
3. its General MIDI program (0-based, as in the program change message) -> :data:`PROGRAM_STEMS`;
4. anything else -> other.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from hummingml.audio import STEMS
from hummingml.stages.pitch import NoteEvent

NAME_WORDS = {  # name word -> stem, besides the stem names themselves
    "drum": "drums", "percussion": "drums", "vocal": "vocals", "voice": "vocals", "vox": "vocals",
    "melody": "lead", "chord": "chordal", "chords": "chordal",
}  # fmt: skip
NAME_PRIORITY = ("drums", "vocals", "bass", "lead", "chordal", "other")  # when a name names several stems
VOICE_PROGRAMS = (52, 53, 54, 85)  # Choir Aahs, Voice Oohs, Synth Voice, Lead 6 (voice)
PROGRAM_STEMS = (  # (first, last program, stem), 0-based General MIDI programs; the first range that holds it wins
    (32, 39, "bass"),  # Acoustic Bass .. Synth Bass 2
    (80, 87, "lead"),  # Lead 1 (square) .. Lead 8 (bass + lead), but Lead 6 (voice): VOICE_PROGRAMS
    (0, 7, "chordal"),  # pianos
    (16, 23, "chordal"),  # organs
    (24, 31, "chordal"),  # guitars
    (40, 51, "chordal"),  # strings and string ensembles
    (88, 95, "chordal"),  # synth pads
)
PERCUSSION_CHANNEL = 9  # General MIDI channel 10, 0-based


@dataclass(frozen=True)
class Part:
    """One track of a MIDI file (a pretty_midi instrument: one track, channel and program) and the stem it feeds."""

    name: str  # the track name ("" when the file gives none)
    program: int  # General MIDI program, 0-based; for a drum track, the kit (bank 128 preset)
    is_drum: bool  # on the percussion channel (channel 10)
    notes: tuple[NoteEvent, ...]  # onsets and offsets in seconds from the file's start; amplitude = velocity / 127
    stem: str  # one of STEMS, by stem_of


def stem_of(name: str, program: int, is_drum: bool) -> str:
    """The stem a track feeds, by the rule in the module docstring.

    Args:
        name: the track name.
        program: its General MIDI program, 0-based.
        is_drum: whether it plays on the percussion channel (channel 10).
    """
    named = set()
    for word in re.findall(r"[a-z]+", name.lower()):
        stem = word if word in STEMS else NAME_WORDS.get(word)
        if stem is not None:
            named.add(stem)
    if named:
        return next(stem for stem in NAME_PRIORITY if stem in named)
    if is_drum:
        return "drums"
    if program in VOICE_PROGRAMS:
        return "vocals"
    return next((stem for first, last, stem in PROGRAM_STEMS if first <= program <= last), "other")


def read_parts(data: bytes) -> tuple[list[Part], float]:
    """The parts of a standard MIDI file, each with its stem, and the file's end in seconds (its last event).

    Tempo changes are applied (pretty_midi); pitch bends, controllers and program changes after a track's first
    are not rendered.

    Raises:
        ValueError: the bytes are not a MIDI file pretty_midi can read.
    """
    import pretty_midi

    try:
        midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as exc:  # mido raises OSError, EOFError, KeyError, ... on a broken file
        raise ValueError(f"not a readable MIDI file ({type(exc).__name__}: {exc})") from exc
    parts = []
    for inst in midi.instruments:
        notes = tuple(
            NoteEvent(float(n.start), float(n.end), int(n.pitch), n.velocity / 127.0)
            for n in sorted(inst.notes, key=lambda n: (n.start, n.pitch))
        )
        name = inst.name.strip()
        parts.append(
            Part(
                name, int(inst.program), bool(inst.is_drum), notes, stem_of(name, int(inst.program), bool(inst.is_drum))
            )
        )
    return parts, float(midi.get_end_time())
