"""The six stems and the mix of a MIDI file's parts, by one of two renderers.

- :class:`SoundFontRenderer`: FluidSynth (the Debian library ``libfluidsynth3``, through the ``pyfluidsynth``
  binding) playing each part with its General MIDI program from a SoundFont (Debian's ``fluid-soundfont-gm``:
  :data:`hummingml.stems.config.DEFAULT_SOUNDFONT`), drums from bank 128; reverb and chorus off, so that a stem
  holds only its own parts.
- :class:`AdditiveRenderer`: the synthesized corpus's instruments (:data:`hummingml.testing.corpus.PRESETS`, its
  drum kits and its stem levels), one instrument per stem drawn from the seed, as the corpus draws them.

Both return float32 ``(2, samples)`` stems that sum to the mix exactly; one gain scales them all so that the
loudest of the mix and the stems peaks at :data:`hummingml.testing.corpus.MIX_PEAK`. A stem no part feeds is zeros.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hummingml.audio import F32, STEMS
from hummingml.stems.config import DEFAULT_SOUNDFONT, import_fluidsynth
from hummingml.stems.tracks import PERCUSSION_CHANNEL, Part
from hummingml.testing.corpus import (
    DRUM_KITS,
    HAT,
    KICK,
    MIX_PEAK,
    PRESETS,
    SNARE,
    STEM_GAIN,
    pan,
    place,
    render_drum,
    render_note,
)

TAIL_S = 1.0  # s rendered after the file's last event, for release tails
FLUID_BLOCK = 64  # samples FluidSynth renders at a time; an event takes effect at the next block (1.45 ms @ 44.1 kHz)
FLUID_GAIN = 0.2  # FluidSynth's own default master gain (its output is float, so nothing clips before render_song)
DRUM_SOUNDS = {35: KICK, 36: KICK, 38: SNARE, 40: SNARE}  # General MIDI drum note -> the additive kit's hit; else HAT


@dataclass
class RenderedSong:
    """The stems and mix of one MIDI file, float32 ``(2, samples)`` at ``sample_rate`` Hz."""

    stems: dict[str, F32]  # in STEMS order; a stem no part feeds is zeros
    mix: F32  # the sum of the stems
    sample_rate: int
    instruments: dict[str, str]  # stem -> what played it, for the stems that have notes


def n_samples(end_s: float, sample_rate: int) -> int:
    """Samples of a rendering of a file that ends at ``end_s`` seconds: the file plus :data:`TAIL_S`."""
    return math.ceil((end_s + TAIL_S) * sample_rate)


def _finish(stems: dict[str, np.ndarray], instruments: dict[str, str], sample_rate: int) -> RenderedSong:
    """Scale all stems by one gain (the loudest of the mix and the stems to MIX_PEAK) and sum them into the mix."""
    mix = np.sum([stems[s] for s in STEMS], axis=0)
    peak = max(float(np.abs(mix).max(initial=0.0)), *(float(np.abs(a).max(initial=0.0)) for a in stems.values()))
    gain = MIX_PEAK / peak if peak > 0 else 1.0
    scaled = {s: (stems[s] * gain).astype(np.float32) for s in STEMS}
    return RenderedSong(scaled, np.sum(list(scaled.values()), axis=0, dtype=np.float32), sample_rate, instruments)


class AdditiveRenderer:
    """Each stem played by one of the synthesized corpus's instruments, drawn from ``seed`` and the song's key.

    The drums stem is a corpus drum kit (General MIDI notes 35-36 are its kick, 38 and 40 its snare, any other its
    hi-hat); every other stem is one of that stem's presets, whatever the tracks' programs. Each stem is panned and
    brought to the corpus's level (``STEM_GAIN``) before the common gain, as the corpus mixes its songs.
    """

    name = "additive"

    def __init__(self, sample_rate: int, seed: int = 0) -> None:
        self.sample_rate, self.seed = sample_rate, seed

    def render(self, parts: Sequence[Part], end_s: float, song_key: str) -> RenderedSong:
        """The stems of ``parts`` (a file that ends at ``end_s`` s); ``song_key`` names the song in the draws."""
        key = int(hashlib.sha256(song_key.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16)
        rng = np.random.default_rng([self.seed, key])
        chosen = {stem: PRESETS[stem][int(rng.integers(len(PRESETS[stem])))].name for stem in PRESETS}
        chosen["drums"] = DRUM_KITS[int(rng.integers(len(DRUM_KITS)))]
        by_name = {inst.name: inst for presets in PRESETS.values() for inst in presets}
        pans = {stem: float(rng.uniform(-0.6, 0.6)) for stem in STEMS}
        n = n_samples(end_s, self.sample_rate)
        stems, instruments = {}, {}
        for stem in STEMS:
            track = np.zeros(n)
            notes = [note for part in parts if part.stem == stem for note in part.notes]
            for note in notes:
                if stem == "drums":
                    pitch = DRUM_SOUNDS.get(note.pitch, HAT)
                    sound = render_drum(pitch, chosen["drums"], note.amplitude, rng, self.sample_rate)
                else:
                    sound = render_note(note, by_name[chosen[stem]], self.sample_rate)
                place(track, sound, round(note.start_s * self.sample_rate))
            peak = float(np.abs(track).max(initial=0.0))
            if peak > 0:
                track *= STEM_GAIN[stem] / peak
            if notes:
                instruments[stem] = chosen[stem]
            stems[stem] = pan(track, pans[stem])
        return _finish(stems, instruments, self.sample_rate)


class SoundFontRenderer:
    """FluidSynth with a General MIDI SoundFont, loaded once; each part is rendered alone and summed into its stem.

    A part plays its program from bank 0 (a drum part its kit from bank 128, on channel 10); a program the SoundFont
    lacks falls back to program 0 of that bank. Tempo and notes are the file's; reverb and chorus are off.

    Raises:
        ImportError: pyfluidsynth or the FluidSynth library is missing (one line naming what to install).
        ValueError: FluidSynth cannot load ``soundfont``.
    """

    name = "soundfont"

    def __init__(self, soundfont: str = DEFAULT_SOUNDFONT, sample_rate: int = 44_100) -> None:
        fluidsynth = import_fluidsynth()
        self.sample_rate = sample_rate
        self.synth = fluidsynth.Synth(
            gain=FLUID_GAIN, samplerate=float(sample_rate), **{"synth.reverb.active": 0, "synth.chorus.active": 0}
        )
        self.sfid = self.synth.sfload(soundfont)
        if self.sfid < 0:
            raise ValueError(f"FluidSynth cannot load {soundfont} as a SoundFont")
        self._write_float = fluidsynth.cfunc(
            "fluid_synth_write_float", ctypes.c_int, ("synth", ctypes.c_void_p, 1), ("len", ctypes.c_int, 1),
            ("lout", ctypes.c_void_p, 1), ("loff", ctypes.c_int, 1), ("lincr", ctypes.c_int, 1),
            ("rout", ctypes.c_void_p, 1), ("roff", ctypes.c_int, 1), ("rincr", ctypes.c_int, 1),
        )  # fmt: skip

    def _write(self, out: F32, start: int, stop: int) -> None:
        """Render samples ``start:stop`` of ``out`` (float32 ``(2, samples)``, C order) in place."""
        left, right = out[0, start:], out[1, start:]
        self._write_float(self.synth.synth, stop - start, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)

    def _preset(self, bank: int, program: int) -> tuple[int, str]:
        name = self.synth.sfpreset_name(self.sfid, bank, program)
        if name is None:
            program, name = 0, self.synth.sfpreset_name(self.sfid, bank, 0)
        return program, name or f"bank {bank} program {program}"

    def render_part(self, part: Part, n: int) -> tuple[F32, str]:
        """One part alone: float32 ``(2, n)`` and the name of the SoundFont preset that played it."""
        synth = self.synth
        synth.system_reset()
        for channel in range(16):  # after the reset: the previous part's release tails end here
            synth.all_sounds_off(channel)
        channel, bank = (PERCUSSION_CHANNEL, 128) if part.is_drum else (0, 0)
        program, preset = self._preset(bank, part.program)
        synth.program_select(channel, self.sfid, bank, program)
        padded = -(-n // FLUID_BLOCK) * FLUID_BLOCK  # whole blocks: the next part starts on a block boundary
        out = np.zeros((2, padded), np.float32)
        rate = self.sample_rate
        events = [(round(e.start_s * rate), 1, e.pitch, min(127, max(1, round(e.amplitude * 127)))) for e in part.notes]
        events += [(round(e.end_s * rate), 0, e.pitch, 0) for e in part.notes]  # offs first at equal times
        pos = 0
        for at, on, pitch, velocity in sorted(events):
            at = min(at, padded)
            if at > pos:
                self._write(out, pos, at)
                pos = at
            if on:
                synth.noteon(channel, pitch, velocity)
            else:
                synth.noteoff(channel, pitch)
        self._write(out, pos, padded)
        return out[:, :n], preset

    def render(self, parts: Sequence[Part], end_s: float, song_key: str = "") -> RenderedSong:
        """The stems of ``parts`` (a file that ends at ``end_s`` s); ``song_key`` is unused (nothing is drawn)."""
        n = n_samples(end_s, self.sample_rate)
        stems = {stem: np.zeros((2, n), np.float32) for stem in STEMS}
        presets: dict[str, set[str]] = {}
        for part in parts:
            if part.notes:
                audio, preset = self.render_part(part, n)
                stems[part.stem] += audio
                presets.setdefault(part.stem, set()).add(preset)
        instruments = {stem: " + ".join(sorted(presets[stem])) for stem in STEMS if stem in presets}
        return _finish(stems, instruments, self.sample_rate)
