from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from hummingml.audio import decode
from hummingml.cli import main
from hummingml.testing.corpus import MELODIC_STEMS, STEMS, make_song, write_corpus


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path) -> None:
    write_corpus(tmp_path / "a", n_songs=2, seed=7, seconds=3.0)
    write_corpus(tmp_path / "b", n_songs=2, seed=7, seconds=3.0)
    a = tree_digest(tmp_path / "a")
    assert a == tree_digest(tmp_path / "b")
    assert len(a) == 2 * (1 + 6 + 1 + 1) + 1  # per song: mix, six stems, notes, midi; plus the manifest


def test_different_seeds_give_different_songs() -> None:
    a, b = make_song(0, seed=1, seconds=2.0), make_song(0, seed=2, seconds=2.0)
    assert not np.array_equal(a.mix, b.mix)


def test_songs_vary_in_tempo_key_and_instruments() -> None:
    infos = [make_song(i, seed=0, seconds=1.0).info for i in range(8)]
    assert len({i.tempo_bpm for i in infos}) > 1
    assert len({i.key for i in infos}) > 1
    assert len({tuple(sorted(i.instruments.items())) for i in infos}) > 1


def test_stems_sum_to_the_mix_and_are_stereo() -> None:
    song = make_song(3, seed=0, seconds=4.0)
    assert tuple(song.stems) == STEMS
    for audio in song.stems.values():
        assert audio.shape == (2, 4 * 44_100) and audio.dtype == np.float32
        assert np.abs(audio).max() > 0.01  # every part plays
    np.testing.assert_allclose(sum(song.stems.values()), song.mix, atol=1e-5)
    assert np.abs(song.mix).max() <= 0.9 + 1e-6
    assert not np.allclose(song.mix[0], song.mix[1])  # panning makes the channels differ


def test_notes_are_musical_ground_truth() -> None:
    song = make_song(0, seed=0, seconds=8.0)
    for stem in MELODIC_STEMS:
        notes = song.notes[stem]
        assert notes, stem
        for a, b in itertools.pairwise(notes):
            assert a.end_s <= b.start_s + 1e-9  # monophonic
    for stem in STEMS:
        assert all(0 <= n.start_s < n.end_s and 0 <= n.pitch <= 127 for n in song.notes[stem])


def test_written_files_decode_and_match_the_manifest(tmp_path) -> None:
    infos = write_corpus(tmp_path, n_songs=1, seed=0, seconds=2.0)
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0]["song_id"] == infos[0].song_id
    audio, rate = decode(tmp_path / manifest[0]["uri"])
    assert rate == 44_100 and audio.shape == (2, 2 * 44_100)
    notes = json.loads((tmp_path / "notes" / f"{infos[0].song_id}.json").read_text())
    assert set(notes["notes"]) == set(STEMS)


def test_cli_writes_a_corpus(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth-corpus", str(tmp_path / "c"), "--songs", "2", "--seed", "3", "--seconds", "1.5"]) == 0
    assert len(list((tmp_path / "c" / "mix").glob("*.wav"))) == 2
    assert "wrote 2 songs" in capsys.readouterr().out


def test_seven_consecutive_songs_cover_the_seven_modes_and_their_notes_keep_to_the_scale() -> None:
    from hummingml.testing.corpus import MODES, mode_scale

    assert mode_scale("ionian") == (0, 2, 4, 5, 7, 9, 11) and mode_scale("aeolian") == (0, 2, 3, 5, 7, 8, 10)
    assert mode_scale("dorian") == (0, 2, 3, 5, 7, 9, 10) and mode_scale("locrian") == (0, 1, 3, 5, 6, 8, 10)
    names = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
    songs = [make_song(i, seed=3, seconds=4.0) for i in range(7)]
    assert sorted(s.info.mode for s in songs) == sorted(MODES)
    for song in songs:
        tonic, mode = song.info.key.split()
        assert mode == song.info.mode
        allowed = {(names.index(tonic) + d) % 12 for d in mode_scale(mode)}
        pitched = [n.pitch % 12 for stem, notes in song.notes.items() if stem != "drums" for n in notes]
        assert pitched and set(pitched) <= allowed, (song.info.key, set(pitched) - allowed)
