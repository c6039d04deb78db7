"""``hummingml stems render``: the synthesized corpus's MIDI files rendered by both renderers, read back as WAVs.

The soundfont renderer runs the real FluidSynth with Debian's General MIDI SoundFont; its tests skip, with the reason,
only where those are not installed (``.ci/run`` installs them when it runs as root).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from hummingml.audio import FEATURE_SAMPLE_RATE, STEMS, decode
from hummingml.config import flags_markdown
from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import from_table, source_rows
from hummingml.extract.sources import list_sources
from hummingml.extract.steps import DecodeStep
from hummingml.stems.config import DEFAULT_SOUNDFONT, RenderConfig, soundfont_problem
from hummingml.stems.manifest import render_directory
from hummingml.stems.tracks import read_parts
from hummingml.testing.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[2]
NO_SOUNDFONT = soundfont_problem(DEFAULT_SOUNDFONT)
needs_soundfont = pytest.mark.skipif(NO_SOUNDFONT is not None, reason=f"FluidSynth or its SoundFont: {NO_SOUNDFONT}")
RENDERERS = [pytest.param("soundfont", marks=needs_soundfont), "additive"]
LSB = 1.0 / 32768  # one step of 16-bit PCM as read back


@pytest.fixture(scope="module")
def midi_dir(tmp_path_factory) -> Path:
    """The corpus's two MIDI files, one with a bass and a piano track only (four silent stems), and a broken one."""
    corpus = tmp_path_factory.mktemp("corpus")
    write_corpus(corpus, n_songs=2, seed=8, seconds=2.0)
    folder = corpus / "midi"
    midi = pretty_midi.PrettyMIDI(initial_tempo=100.0)
    for program, pitches in ((33, (40, 43)), (0, (60, 64, 67))):
        inst = pretty_midi.Instrument(program=program)  # unnamed: the program decides
        inst.notes += [pretty_midi.Note(90, p, 0.25 + 0.5 * i, 0.6 + 0.5 * i) for i, p in enumerate(pitches)]
        midi.instruments.append(inst)
    (folder / "duo").mkdir()
    midi.write(str(folder / "duo" / "bass-and-piano.mid"))
    (folder / "broken.mid").write_bytes(b"MThd but nothing after it")
    return folder


@pytest.fixture(scope="module")
def rendered(midi_dir, tmp_path_factory):
    """``rendered(renderer)``: the folder ``hummingml stems render`` wrote with it (once per module)."""
    outs: dict[str, tuple[Path, object, str]] = {}

    def render(renderer: str) -> tuple[Path, object, str]:
        if renderer not in outs:
            out = tmp_path_factory.mktemp(renderer)
            log = io.StringIO()
            summary = render_directory(RenderConfig(midi_dir=str(midi_dir), out=str(out), renderer=renderer), log)
            outs[renderer] = (out, summary, log.getvalue())
        return outs[renderer]

    return render


def _read(path: Path) -> tuple[np.ndarray, int]:
    info = sf.info(path)
    assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 2), path
    return decode(path)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _has_notes(midi: Path) -> dict[str, bool]:
    parts, _ = read_parts(midi.read_bytes())
    return {stem: any(p.notes for p in parts if p.stem == stem) for stem in STEMS}


@pytest.mark.parametrize("renderer", RENDERERS)
def test_every_midi_file_becomes_six_stems_that_sum_to_its_mix(rendered, midi_dir, renderer) -> None:
    out, summary, log = rendered(renderer)
    songs = ["duo/bass-and-piano", "song_00000", "song_00001"]
    assert summary.rendered == songs and list(summary.failed) == [str(midi_dir / "broken.mid")]
    assert "broken.mid: skipped: not a readable MIDI file" in log
    lines = _lines(out)
    assert [line["song_id"] for line in lines] == songs
    for line in lines:
        assert line["renderer"] == renderer and line["sample_rate"] == 44_100
        assert list(line["stems"]) == sorted(STEMS)  # all six, silent ones too
        mix, rate = _read(out / line["uri"])
        stems = {s: _read(out / uri)[0] for s, uri in line["stems"].items()}
        assert rate == 44_100 and line["seconds"] == mix.shape[1] / rate
        assert all(a.shape == mix.shape for a in stems.values())
        # each of the seven files is within one 16-bit step of the float it was written from
        assert np.abs(sum(stems.values()) - mix).max() <= (len(STEMS) + 1) * LSB + 1e-9
        assert 0.5 < np.abs(mix).max() <= 0.9 + LSB


@pytest.mark.parametrize("renderer", RENDERERS)
def test_a_stem_is_silent_exactly_when_no_track_of_it_has_notes(rendered, midi_dir, renderer) -> None:
    out, _, _ = rendered(renderer)
    for line in _lines(out):
        has_notes = _has_notes(Path(line["midi"]))
        silent = {s: not _read(out / uri)[0].any() for s, uri in line["stems"].items()}
        assert silent == {s: not has_notes[s] for s in STEMS}, line["song_id"]
        assert sorted(line["instruments"]) == sorted(s for s in STEMS if has_notes[s])
    duo, *songs = _lines(out)
    assert duo["song_id"] == "duo/bass-and-piano" and sorted(duo["instruments"]) == ["bass", "chordal"]
    assert all(sorted(song["instruments"]) == sorted(STEMS) for song in songs)  # the corpus plays all six


def test_the_additive_renderer_plays_the_corpus_instruments_and_repeats_itself(rendered, midi_dir, tmp_path) -> None:
    from hummingml.testing.corpus import DRUM_KITS, PRESETS

    out, _, _ = rendered("additive")
    for line in _lines(out)[1:]:
        names = {s: [i.name for i in PRESETS[s]] if s in PRESETS else list(DRUM_KITS) for s in STEMS}
        assert all(line["instruments"][s] in names[s] for s in STEMS)
    again = tmp_path / "again"
    render_directory(RenderConfig(midi_dir=str(midi_dir), out=str(again), renderer="additive"), io.StringIO())
    for path in sorted(out.rglob("*.wav")):
        assert (again / path.relative_to(out)).read_bytes() == path.read_bytes()


@needs_soundfont
def test_the_soundfont_stems_sound_where_their_notes_are(rendered) -> None:
    out, _, _ = rendered("soundfont")
    for line in _lines(out):
        parts, _ = read_parts(Path(line["midi"]).read_bytes())
        for stem, uri in line["stems"].items():
            onsets = sorted(n.start_s for p in parts if p.stem == stem for n in p.notes)
            if not onsets:
                continue
            audio, rate = _read(out / uri)
            level = np.abs(audio).max(axis=0)
            first = round(onsets[0] * rate)
            assert not level[: max(0, first - 64)].any(), (line["song_id"], stem)  # nothing before the first note
            for onset in onsets:  # something in the 50 ms after every onset (FluidSynth's block is 64 samples)
                start = round(onset * rate)
                assert level[start : start + round(0.05 * rate)].max() > 1e-3, (line["song_id"], stem, onset)
        assert line["soundfont"] == DEFAULT_SOUNDFONT


@pytest.mark.parametrize("renderer", RENDERERS)
def test_the_manifest_round_trips_through_the_extraction_reader(rendered, renderer) -> None:
    out, _, _ = rendered(renderer)
    sources = list_sources(str(out / "manifest.jsonl"))
    assert len(sources) == len(_lines(out))
    for source, line in zip(sources, _lines(out), strict=True):
        assert source.canonical == str((out / line["uri"]).resolve())
        assert source.stems == tuple((s, str((out / line["stems"][s]).resolve())) for s in STEMS)
        instruments = json.loads(source.metadata)["instruments"]  # a JSON-lines column: other rows' keys are null
        assert {s: i for s, i in instruments.items() if i is not None} == line["instruments"]
        assert ";stems=" in source.version
    rows = from_table(DecodeStep(ExtractConfig(segment_s=2.0))(source_rows(sources[:1])))
    assert rows and all(r.error is None and list(r.stems) == list(STEMS) for r in rows)
    assert all(r.stems["drums"].shape == r.audio.shape and r.audio.shape[1] > 0 for r in rows)
    assert rows[0].source_sample_rate == 44_100 and rows[0].audio.shape[1] == round(2.0 * FEATURE_SAMPLE_RATE)


def test_the_command_refuses_bad_values_before_writing_anything(midi_dir, tmp_path, capsys) -> None:
    from hummingml.cli import main

    out = tmp_path / "out"
    for argv, words in [
        (["--sample-rate", "0"], "--sample-rate must be >= 8000"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--soundfont", str(tmp_path / "none.sf2")], "apt-get install" if NO_SOUNDFONT else "none.sf2: no such file"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["stems", "render", str(midi_dir), "--out", str(out), *argv])
        assert exc.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stems", "render", "--out", str(out), "--renderer", "additive"])
    assert "hummingml stems render: error: MIDI_DIR is required" in capsys.readouterr().err
    assert not out.exists()


def test_the_command_renders_and_says_so(midi_dir, tmp_path, capsys) -> None:
    from hummingml.cli import main

    only_good = tmp_path / "midi"
    shutil.copytree(midi_dir / "duo", only_good)
    out = tmp_path / "out"
    assert main(["stems", "render", str(only_good), "--out", str(out), "--renderer", "additive", "--seed", "3"]) == 0
    assert "rendered 1 MIDI files (additive)" in capsys.readouterr().out
    assert [line["song_id"] for line in _lines(out)] == ["bass-and-piano"]
    assert main(["stems", "render", "--midi-dir", str(midi_dir), "--out", str(tmp_path / "o2"),
                 "--renderer", "additive"]) == 1  # fmt: skip
    assert "1 skipped (not MIDI)" in capsys.readouterr().out


def test_the_docs_list_every_flag() -> None:
    assert flags_markdown(RenderConfig) in (ROOT / "docs" / "stems.md").read_text()
