"""A small, musical, deterministic synthesized corpus: six stems, their mix, and the notes as ground truth.

Each song has a tempo, a key in one of the seven diatonic modes (song i in ``MODES[i % 7]``, so any seven
consecutive songs cover them all, Aeolian included), a four-chord progression, and six parts, each played by an
instrument drawn from a few presets (additive synthesis with an ADSR envelope; drums are synthesized hits):

- ``vocals``: the main melody (formant-shaped harmonics, vibrato);
- ``lead``: a counter-melody an octave up, answering the vocal phrases;
- ``chordal``: block triads, one per bar;
- ``bass``: chord roots in a rhythmic pattern;
- ``drums``: kick, snare and hi-hat;
- ``other``: an arpeggio of the chord tones.

The same ``seed`` always gives byte-identical files. Layout of ``write_corpus(out, ...)``::

    out/manifest.jsonl              one JSON object per song (see ``SongInfo``)
    out/mix/<song_id>.wav           stereo 44.1 kHz 16-bit PCM mix
    out/stems/<song_id>/<stem>.wav  the six stems, same format; they sum to the mix
    out/notes/<song_id>.json        ground-truth notes per stem
    out/midi/<song_id>.mid          the notes as a multi-track MIDI file
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hummingml.audio import F32, MELODIC_STEMS, SOURCE_SAMPLE_RATE, STEMS
from hummingml.stages.pitch import NoteEvent
from hummingml.stages.synth import midi_to_hz

__all__ = ["MELODIC_STEMS", "MODES", "STEMS", "Song", "SongInfo", "make_song", "mode_scale", "write_corpus"]

MAJOR = (0, 2, 4, 5, 7, 9, 11)  # scale degrees in semitones (Ionian)
# The seven diatonic modes: the major scale started on each of its degrees. Song i of a corpus is in MODES[i % 7].
MODES = ("ionian", "dorian", "phrygian", "lydian", "mixolydian", "aeolian", "locrian")


def mode_scale(mode: str) -> tuple[int, ...]:
    """The seven scale degrees of ``mode`` in semitones above its tonic (``aeolian``: 0 2 3 5 7 8 10)."""
    start = MODES.index(mode)
    return tuple((MAJOR[(start + d) % 7] - MAJOR[start]) % 12 for d in range(7))

PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 4), (0, 5, 1, 4))  # scale-degree roots, 0 = I
KICK, SNARE, HAT = 36, 38, 42  # General MIDI drum pitches
MIX_PEAK = 0.9  # peak of the written mix, full scale = 1


@dataclass(frozen=True)
class Instrument:
    """An additive-synthesis voice.

    ``partials`` are (frequency ratio, amplitude) pairs; partials above Nyquist are dropped.
    """

    name: str
    partials: tuple[tuple[float, float], ...]
    attack_s: float
    decay_s: float
    sustain: float  # level after decay, relative to the peak
    release_s: float
    vibrato_hz: float = 0.0
    vibrato_semitones: float = 0.0


def _harmonics(n: int, power: float, odd_only: bool = False) -> tuple[tuple[float, float], ...]:
    ks = range(1, n + 1, 2) if odd_only else range(1, n + 1)
    return tuple((float(k), 1.0 / k**power) for k in ks)


def _formant_harmonics(formants_hz: tuple[float, ...], base_hz: float = 220.0) -> tuple[tuple[float, float], ...]:
    """Harmonics weighted by Gaussian formant bumps (a sung vowel, evaluated for a ~220 Hz voice)."""
    out = []
    for k in range(1, 16):
        f = k * base_hz
        weight = sum(np.exp(-(((f - fm) / 180.0) ** 2)) for fm in formants_hz) + 0.3 / k
        out.append((float(k), float(round(weight, 4))))
    return tuple(out)


PRESETS: dict[str, tuple[Instrument, ...]] = {
    "vocals": (
        Instrument("voice-ah", _formant_harmonics((700.0, 1220.0, 2600.0)), 0.06, 0.1, 0.85, 0.12, 5.5, 0.25),
        Instrument("voice-oo", _formant_harmonics((300.0, 870.0, 2240.0)), 0.08, 0.1, 0.8, 0.15, 5.0, 0.3),
    ),
    "lead": (
        Instrument("saw-lead", _harmonics(14, 1.0), 0.01, 0.15, 0.7, 0.08, 6.0, 0.1),
        Instrument("square-lead", _harmonics(13, 1.0, odd_only=True), 0.01, 0.1, 0.75, 0.06),
        Instrument("flute", ((1.0, 1.0), (2.0, 0.25), (3.0, 0.08)), 0.05, 0.1, 0.9, 0.1, 4.5, 0.15),
    ),
    "chordal": (
        Instrument("ep-piano", _harmonics(8, 1.8), 0.005, 1.2, 0.15, 0.3),
        Instrument("warm-pad", _harmonics(7, 1.3, odd_only=True), 0.35, 0.5, 0.8, 0.5),
        Instrument(
            "organ", ((1.0, 1.0), (2.0, 0.6), (3.0, 0.4), (4.0, 0.3), (6.0, 0.15), (8.0, 0.1)), 0.01, 0.05, 1.0, 0.05
        ),
    ),
    "bass": (
        Instrument("sub-bass", ((1.0, 1.0), (2.0, 0.3)), 0.01, 0.2, 0.8, 0.05),
        Instrument("saw-bass", _harmonics(10, 1.0), 0.005, 0.25, 0.5, 0.05),
        Instrument("pluck-bass", _harmonics(6, 1.5), 0.003, 0.35, 0.2, 0.08),
    ),
    "other": (
        Instrument("bell", ((1.0, 1.0), (2.76, 0.5), (5.4, 0.25), (8.93, 0.1)), 0.002, 0.9, 0.0, 0.4),
        Instrument("marimba", ((1.0, 1.0), (3.93, 0.35), (9.2, 0.1)), 0.002, 0.35, 0.0, 0.1),
        Instrument("glock", ((1.0, 1.0), (2.0, 0.2), (5.0, 0.3)), 0.001, 0.6, 0.0, 0.3),
    ),
}
DRUM_KITS = ("tight-kit", "boomy-kit")
STEM_GAIN = {"drums": 0.5, "bass": 0.45, "vocals": 0.4, "lead": 0.25, "chordal": 0.18, "other": 0.15}


@dataclass(frozen=True)
class SongInfo:
    """One song's description, as written to ``manifest.jsonl``."""

    song_id: str
    uri: str  # the mix, relative to the corpus root
    seconds: float
    sample_rate: int
    tempo_bpm: float
    key: str  # tonic and mode, e.g. "A aeolian"
    instruments: dict[str, str] = field(default_factory=dict)  # stem -> preset name
    mode: str = "ionian"  # one of MODES: the song's diatonic mode


@dataclass
class Song:
    """A rendered song: stems float32 ``(2, samples)`` at ``info.sample_rate``, their mix, and notes per stem."""

    info: SongInfo
    stems: dict[str, F32]
    mix: F32
    notes: dict[str, list[NoteEvent]]


def _envelope(n_on: int, n_total: int, inst: Instrument, sample_rate: int) -> np.ndarray:
    """ADSR, ``n_total`` samples: attack/decay/sustain for ``n_on`` samples, then release."""
    t = np.arange(n_total) / sample_rate
    a, d = max(inst.attack_s, 1e-4), max(inst.decay_s, 1e-4)
    env = np.where(t < a, t / a, inst.sustain + (1 - inst.sustain) * np.exp(-(t - a) / d))
    on_s = n_on / sample_rate
    level_at_off = env[min(n_on, n_total - 1)] if n_total else 0.0
    release = level_at_off * np.exp(-(t - on_s) / max(inst.release_s / 4, 1e-4))
    return np.where(t < on_s, env, release)


def render_note(note: NoteEvent, inst: Instrument, sample_rate: int) -> F32:
    """One note of ``inst``, float32 ``(samples,)`` including its release tail."""
    n_on = max(1, round((note.end_s - note.start_s) * sample_rate))
    n_total = n_on + round(inst.release_s * sample_rate)
    t = np.arange(n_total) / sample_rate
    f0 = midi_to_hz(note.pitch)
    if inst.vibrato_hz:
        # vibrato fades in over 0.2 s; phase is the integral of the instantaneous frequency
        depth = inst.vibrato_semitones * np.minimum(t / 0.2, 1.0)
        inst_f = f0 * 2.0 ** (depth * np.sin(2 * np.pi * inst.vibrato_hz * t) / 12.0)
        phase = 2 * np.pi * np.cumsum(inst_f) / sample_rate
    else:
        phase = 2 * np.pi * f0 * t
    out = np.zeros(n_total)
    for ratio, amp in inst.partials:
        if ratio * f0 < 0.45 * sample_rate:
            out += amp * np.sin(ratio * phase)
    out *= _envelope(n_on, n_total, inst, sample_rate) * note.amplitude
    return out.astype(np.float32)


def render_drum(pitch: int, kit: str, amplitude: float, rng: np.random.Generator, sample_rate: int) -> F32:
    """One synthesized drum hit (kick, snare or hi-hat), float32 ``(samples,)``."""
    boomy = kit == "boomy-kit"
    if pitch == KICK:
        n = int((0.45 if boomy else 0.25) * sample_rate)
        t = np.arange(n) / sample_rate
        freq = 45 + 110 * np.exp(-t / 0.04)
        out = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / (0.15 if boomy else 0.07))
    elif pitch == SNARE:
        n = int(0.2 * sample_rate)
        t = np.arange(n) / sample_rate
        noise = rng.standard_normal(n)
        out = 0.6 * noise * np.exp(-t / 0.05) + 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.03)
    else:
        n = int(0.06 * sample_rate)
        t = np.arange(n) / sample_rate
        noise = np.diff(rng.standard_normal(n + 1))  # first difference: a crude high-pass
        out = 0.35 * noise * np.exp(-t / 0.015)
    return (amplitude * out).astype(np.float32)


def place(track: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Add ``sound`` into ``track`` (both 1-D) from sample ``start``, cut at the track's end."""
    end = min(track.shape[0], start + sound.shape[0])
    if start < end:
        track[start:end] += sound[: end - start]


def pan(mono: np.ndarray, position: float) -> F32:
    """Constant-power pan, ``position`` in [-1 (left), 1 (right)] -> float32 ``(2, samples)``."""
    angle = (position + 1) * np.pi / 4
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono]).astype(np.float32)


def _compose(
    rng: np.random.Generator, seconds: float, mode: str
) -> tuple[float, str, dict[str, list[NoteEvent]]]:
    """Tempo, key name (tonic and ``mode``) and the notes of every stem for one song in ``mode``."""
    tempo = float(rng.choice([84, 92, 100, 108, 116, 124, 132]))
    beat = 60.0 / tempo
    tonic = int(rng.integers(0, 12))
    scale = mode_scale(mode)
    names = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
    key = f"{names[tonic]} {mode}"
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    n_bars = int(np.ceil(seconds / (4 * beat)))

    def degree_pitch(degree: int, octave_base: int) -> int:
        return octave_base + tonic + scale[degree % 7] + 12 * (degree // 7)

    notes: dict[str, list[NoteEvent]] = {stem: [] for stem in STEMS}
    melody_degree = 7  # start on the tonic an octave up from the chord register
    for bar in range(n_bars):
        t0 = bar * 4 * beat
        root = progression[bar % len(progression)]
        chord = [root, root + 2, root + 4]
        for d in chord:
            notes["chordal"].append(NoteEvent(t0, t0 + 4 * beat * 0.95, degree_pitch(d, 48), 0.6))
        for i, offset in enumerate((0.0, 1.5, 2.0, 3.0)):
            dur = (1.5 if i == 0 else 0.5 if i == 1 else 1.0) * beat * 0.9
            notes["bass"].append(NoteEvent(t0 + offset * beat, t0 + offset * beat + dur, degree_pitch(root, 36), 0.8))
        for i in range(8):
            d = chord[i % 3] + (7 if i >= 4 else 0)
            notes["other"].append(NoteEvent(t0 + i * beat / 2, t0 + (i + 0.8) * beat / 2, degree_pitch(d, 60), 0.5))
        for i in range(8):
            hit_t = t0 + i * beat / 2
            notes["drums"].append(NoteEvent(hit_t, hit_t + 0.05, HAT, 0.5 + 0.2 * (i % 2 == 0)))
            if i in (0, 4) or (i == 5 and rng.random() < 0.3):
                notes["drums"].append(NoteEvent(hit_t, hit_t + 0.1, KICK, 0.9))
            if i in (2, 6):
                notes["drums"].append(NoteEvent(hit_t, hit_t + 0.1, SNARE, 0.8))
        # vocals sing in bars 0-1 of each 2-bar phrase pair; the lead answers in between
        rhythm = (
            [(0.0, 1.0), (1.0, 0.5), (1.5, 0.5), (2.0, 1.0), (3.0, 1.0)]
            if rng.random() < 0.5
            else [(0.0, 1.5), (1.5, 0.5), (2.0, 0.5), (2.5, 0.5), (3.0, 1.0)]
        )
        singer = "vocals" if bar % 2 == 0 else "lead"
        for j, (onset, length) in enumerate(rhythm):
            if j == 0 or rng.random() < 0.5:
                melody_degree = root + int(rng.choice([7, 9, 11]))  # a chord tone on strong beats
            else:
                melody_degree += int(rng.choice([-2, -1, 1, 2]))
            melody_degree = int(np.clip(melody_degree, 5, 13))
            octave = 48 if singer == "vocals" else 60
            start = t0 + onset * beat
            notes[singer].append(
                NoteEvent(start, start + length * beat * 0.92, degree_pitch(melody_degree, octave), 0.8)
            )
    for stem in STEMS:
        notes[stem] = [n for n in notes[stem] if n.start_s < seconds]
    return tempo, key, notes


def make_song(index: int, seed: int, seconds: float = 10.0, sample_rate: int = SOURCE_SAMPLE_RATE) -> Song:
    """Compose and render song number ``index`` of corpus ``seed``, in mode ``MODES[index % 7]``."""
    rng = np.random.default_rng([seed, index])
    mode = MODES[index % len(MODES)]
    tempo, key, notes = _compose(rng, seconds, mode)
    n = round(seconds * sample_rate)
    instruments = {stem: PRESETS[stem][int(rng.integers(len(PRESETS[stem])))].name for stem in PRESETS}
    instruments["drums"] = DRUM_KITS[int(rng.integers(len(DRUM_KITS)))]
    by_name = {inst.name: inst for presets in PRESETS.values() for inst in presets}
    stems: dict[str, F32] = {}
    for stem in STEMS:
        track = np.zeros(n)
        for note in notes[stem]:
            if stem == "drums":
                sound = render_drum(note.pitch, instruments["drums"], note.amplitude, rng, sample_rate)
            else:
                sound = render_note(note, by_name[instruments[stem]], sample_rate)
            place(track, sound, round(note.start_s * sample_rate))
        peak = np.abs(track).max()
        track = track / peak * STEM_GAIN[stem] if peak > 0 else track
        stems[stem] = pan(track, float(rng.uniform(-0.6, 0.6)))
    mix = np.stack(list(stems.values())).sum(axis=0)
    gain = MIX_PEAK / max(float(np.abs(mix).max()), 1e-9)
    stems = {k: (v * gain).astype(np.float32) for k, v in stems.items()}
    song_id = f"song_{index:05d}"
    info = SongInfo(song_id, f"mix/{song_id}.wav", seconds, sample_rate, tempo, key, instruments, mode)
    return Song(info, stems, (mix * gain).astype(np.float32), notes)


def song_midi(song: Song) -> bytes:
    """All parts of ``song`` as one MIDI file: a track per stem, drums on the percussion channel."""
    import pretty_midi

    programs = {"bass": 33, "vocals": 53, "lead": 81, "chordal": 4, "other": 12}  # GM programs (0-based)
    midi = pretty_midi.PrettyMIDI(initial_tempo=song.info.tempo_bpm)
    for stem in STEMS:
        inst = pretty_midi.Instrument(program=programs.get(stem, 0), is_drum=stem == "drums", name=stem)
        for note in song.notes[stem]:
            velocity = int(np.clip(round(127 * note.amplitude), 1, 127))
            inst.notes.append(pretty_midi.Note(velocity, note.pitch, note.start_s, note.end_s))
        midi.instruments.append(inst)
    buf = io.BytesIO()
    midi.write(buf)
    return buf.getvalue()


def _write_wav(path: Path, audio: F32, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, sample_rate, subtype="PCM_16", format="WAV")


def iter_songs(n_songs: int, seed: int, seconds: float = 10.0) -> Iterator[Song]:
    """Songs ``0 .. n_songs-1`` of corpus ``seed``."""
    for index in range(n_songs):
        yield make_song(index, seed, seconds)


def write_corpus(
    out: str | Path, n_songs: int, seed: int = 0, seconds: float = 10.0, stems_in_manifest: bool = False
) -> list[SongInfo]:
    """Render ``n_songs`` songs into ``out`` (layout in the module docstring); returns their descriptions.

    With ``stems_in_manifest``, each manifest line also lists the song's true stems,
    ``"stems": {"drums": "stems/<song_id>/drums.wav", ...}`` (relative to the corpus root, as ``uri`` is), so that
    extraction uses them instead of separating the mix (docs/stems.md).
    """
    root = Path(out)
    infos = []
    lines = []
    for song in iter_songs(n_songs, seed, seconds):
        info = song.info
        _write_wav(root / info.uri, song.mix, info.sample_rate)
        for stem, audio in song.stems.items():
            _write_wav(root / "stems" / info.song_id / f"{stem}.wav", audio, info.sample_rate)
        notes = {
            stem: [[round(n.start_s, 6), round(n.end_s, 6), n.pitch, round(n.amplitude, 4)] for n in ns]
            for stem, ns in song.notes.items()
        }
        (root / "notes").mkdir(parents=True, exist_ok=True)
        (root / "notes" / f"{info.song_id}.json").write_text(
            json.dumps({"columns": ["start_s", "end_s", "pitch", "amplitude"], "notes": notes}, sort_keys=True)
        )
        (root / "midi").mkdir(parents=True, exist_ok=True)
        (root / "midi" / f"{info.song_id}.mid").write_bytes(song_midi(song))
        infos.append(info)
        line = asdict(info)
        if stems_in_manifest:
            line["stems"] = {stem: f"stems/{info.song_id}/{stem}.wav" for stem in song.stems}
        lines.append(json.dumps(line, sort_keys=True) + "\n")
    (root / "manifest.jsonl").write_text("".join(lines))
    return infos
