"""Instrument clips rendered from the synthesized corpus's instruments: the named presets of ``/v1/hum``, the web
page and ``hummingml remix --instrument NAME``.

A preset clip is an arpeggio (C major, up then down, from C4) played by one of
:data:`hummingml.testing.corpus.PRESETS`' melodic instruments. Rendering is deterministic, so the same name is always
the same clip.
"""

from __future__ import annotations

import numpy as np

from hummingml.audio import F32, SOURCE_SAMPLE_RATE
from hummingml.stages.pitch import NoteEvent
from hummingml.testing.corpus import PRESETS, Instrument, render_note

PRESET_ROLES = ("lead", "chordal", "other", "bass")  # corpus parts whose instruments are offered as presets
ARPEGGIO = (60, 64, 67, 72, 67, 64)  # MIDI pitches: C4 E4 G4 C5 G4 E4
CLIP_PEAK = 0.8  # peak of a rendered clip, full scale = 1


def instruments() -> dict[str, Instrument]:
    """Every preset instrument by name, in corpus order."""
    return {inst.name: inst for role in PRESET_ROLES for inst in PRESETS[role]}


def preset_names() -> tuple[str, ...]:
    """The names ``preset_clip`` accepts."""
    return tuple(instruments())


def preset_clip(name: str, seconds: float = 3.0, sample_rate: int = SOURCE_SAMPLE_RATE) -> F32:
    """The clip of preset ``name``: float32 ``(1, round(seconds * sample_rate))``, peak :data:`CLIP_PEAK`.

    Raises:
        KeyError: ``name`` is not one of :func:`preset_names` (the message lists them).
    """
    table = instruments()
    if name not in table:
        raise KeyError(f"no instrument preset {name!r}; presets: {', '.join(table)}")
    inst = table[name]
    n = round(seconds * sample_rate)
    out = np.zeros(n, dtype=np.float64)
    note_s = seconds / len(ARPEGGIO)
    octave = -12 if name in {i.name for i in PRESETS["bass"]} else 0
    for k, pitch in enumerate(ARPEGGIO):
        start = k * note_s
        sound = render_note(NoteEvent(0.0, note_s * 0.9, pitch + octave, 0.8), inst, sample_rate)
        a = round(start * sample_rate)
        take = min(len(sound), n - a)
        out[a : a + take] += sound[:take]
    peak = float(np.abs(out).max())
    return (out * (CLIP_PEAK / peak if peak > 0 else 1.0)).astype(np.float32)[None, :]
