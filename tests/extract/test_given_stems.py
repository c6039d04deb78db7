"""Stems a manifest gives are decoded, resampled and used as they are; Demucs separates only the missing ones.

The extraction runs are real: a synthesized corpus whose manifest lists its true stems (``write_corpus(...,
stems_in_manifest=True)``), the tiny models, a local Ray; the Parquet output is read back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hummingml.audio import FEATURE_SAMPLE_RATE, STEMS, decode, resample, segment_length, to_mono, write_pcm16
from hummingml.config import ConfigError
from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import from_table, source_rows, to_table
from hummingml.extract.sources import list_sources, make_source
from hummingml.extract.steps import GIVEN, STEM_DURATION_TOLERANCE_S, DecodeStep, SeparateStep
from hummingml.stages.null import NullSeparator
from hummingml.testing.corpus import write_corpus
from hummingml.weights.config import ModelsConfig

SEGMENT_S = 1.0


def _lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def _write_lines(manifest: Path, lines: list[dict]) -> None:
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _segments_of(path: Path, segment_s: float = SEGMENT_S) -> list[np.ndarray]:
    """A file decoded, resampled to the feature rate and cut into segments: what extraction reads."""
    audio, rate = decode(path)
    whole = resample(audio, rate, FEATURE_SAMPLE_RATE)
    n = segment_length(segment_s)
    return [whole[:, i : i + n] for i in range(0, whole.shape[1], n)]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Two 2.5 s songs whose manifest lists all six true stems of each."""
    root = tmp_path_factory.mktemp("given")
    write_corpus(root, n_songs=2, seed=11, seconds=2.5, stems_in_manifest=True)
    return root


# --- listing -------------------------------------------------------------------------------------------------------


def test_write_corpus_lists_its_true_stems_only_when_asked(small_corpus, tmp_path) -> None:
    line = _lines(small_corpus / "manifest.jsonl")[0]
    assert line["stems"] == {stem: f"stems/{line['song_id']}/{stem}.wav" for stem in STEMS}
    write_corpus(tmp_path, n_songs=1, seed=11, seconds=2.5)
    plain = _lines(tmp_path / "manifest.jsonl")[0]
    assert "stems" not in plain and plain == {k: v for k, v in line.items() if k != "stems"}


def test_manifest_stems_are_resolved_like_the_uri_and_part_of_the_version(small_corpus, tmp_path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    source = list_sources(str(corpus / "manifest.jsonl"))[0]
    stems_dir = (corpus / "stems" / "song_00000").resolve()
    assert source.stems == tuple((stem, str(stems_dir / f"{stem}.wav")) for stem in STEMS)
    assert json.loads(source.metadata)["stems"] == {stem: str(stems_dir / f"{stem}.wav") for stem in STEMS}
    mix_version = make_source(str(corpus / "mix" / "song_00000.wav")).version
    assert source.version.startswith(mix_version + ";stems=")

    vocals = stems_dir / "vocals.wav"
    audio, rate = decode(vocals)
    write_pcm16(vocals, audio * 0.5, rate)  # same size, new content
    os.utime(vocals, ns=(1, 1))
    changed = list_sources(str(corpus / "manifest.jsonl"))[0]
    assert changed.version != source.version and changed.version.startswith(mix_version + ";stems=")

    lines = _lines(corpus / "manifest.jsonl")
    _write_lines(corpus / "manifest.jsonl", [{k: v for k, v in line.items() if k != "stems"} for line in lines])
    plain = list_sources(str(corpus / "manifest.jsonl"))[0]
    assert plain.stems == () and plain.version == mix_version and "stems" not in json.loads(plain.metadata)


def test_a_csv_manifest_gives_stems_as_a_json_object(small_corpus, tmp_path) -> None:
    vocals = small_corpus / "stems" / "song_00000" / "vocals.wav"
    manifest = tmp_path / "m.csv"
    stems = json.dumps({"vocals": str(vocals)}).replace('"', '""')
    manifest.write_text(f'uri,stems\n{small_corpus / "mix" / "song_00000.wav"},"{stems}"\n')
    (source,) = list_sources(str(manifest))
    assert source.stems == (("vocals", str(vocals.resolve())),)


@pytest.mark.parametrize(
    ("stems", "words"),
    [({"guitar": "g.wav"}, "['guitar'], which are not stems"), (7, "must map stem names to URIs"),
     ({"vocals": " "}, "stem 'vocals' has an empty URI"), ("[1, 2", "is not a JSON object")],
)  # fmt: skip
def test_stems_that_name_no_stem_or_no_file_are_refused(tmp_path, stems, words) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": "a.wav"}) + "\n" + json.dumps({"uri": "b.wav", "stems": stems}) + "\n")
    with pytest.raises(ConfigError, match="row 2") as exc:
        list_sources(str(manifest))
    assert words in str(exc.value)


# --- decode and separate steps ---------------------------------------------------------------------------------------


def _decoded(manifest: Path) -> list:
    return from_table(DecodeStep(ExtractConfig(segment_s=SEGMENT_S))(source_rows(list_sources(str(manifest)))))


def test_given_stems_are_read_in_the_mix_segments_and_a_mono_stem_becomes_stereo(small_corpus, tmp_path) -> None:
    song = small_corpus / "stems" / "song_00000"
    mono = tmp_path / "bass-mono.flac"
    audio, rate = decode(song / "bass.wav")
    write_pcm16(mono, to_mono(audio), rate, fmt="FLAC")
    manifest = tmp_path / "m.jsonl"
    _write_lines(manifest, [{"uri": str(small_corpus / "mix" / "song_00000.wav"),
                             "stems": {"vocals": str(song / "vocals.wav"), "bass": str(mono)}}])  # fmt: skip
    rows = _decoded(manifest)
    vocals, bass = _segments_of(song / "vocals.wav"), _segments_of(mono)
    assert [r.segment_index for r in rows] == [0, 1, 2] and all(r.error is None for r in rows)
    for r in rows:
        assert list(r.stems) == ["bass", "vocals"]  # STEMS order
        np.testing.assert_array_equal(r.stems["vocals"], vocals[r.segment_index])
        np.testing.assert_array_equal(r.stems["bass"], np.repeat(bass[r.segment_index], 2, axis=0))
        assert r.stems["bass"].shape == r.audio.shape


def test_a_stem_of_another_duration_or_a_missing_stem_makes_an_error_row(small_corpus, tmp_path) -> None:
    song = small_corpus / "stems" / "song_00000"
    audio, rate = decode(song / "drums.wav")
    cut = round((audio.shape[1] / rate - 2 * STEM_DURATION_TOLERANCE_S) * rate)
    short = tmp_path / "drums-short.wav"
    write_pcm16(short, audio[:, :cut], rate)
    within = tmp_path / "drums-within.wav"  # a little shorter: within the tolerance, zero-padded
    write_pcm16(within, audio[:, : round(audio.shape[1] - STEM_DURATION_TOLERANCE_S / 2 * rate)], rate)
    mix = str(small_corpus / "mix" / "song_00000.wav")
    for stems, stage, error_type, words in [
        ({"drums": str(short)}, "decode", "StemMismatchError", "stem 'drums'"),
        ({"vocals": str(tmp_path / "missing.wav")}, "read", "DecodeError:not_found", "stem 'vocals'"),
        ({"lead": str(mix + ".txt")}, "read", "DecodeError:not_found", "stem 'lead'"),
    ]:
        manifest = tmp_path / "m.jsonl"
        _write_lines(manifest, [{"uri": mix, "stems": stems}])
        (row,) = _decoded(manifest)
        assert (row.segment_index, row.error.stage, row.error.error_type) == (-1, stage, error_type)
        assert words in row.error.message and row.stems is None
    _write_lines(manifest, [{"uri": mix, "stems": {"drums": str(within)}}])
    rows = _decoded(manifest)
    assert all(r.error is None for r in rows)
    assert not rows[-1].stems["drums"][:, -100:].any()  # the missing end is silence


def test_separation_runs_only_for_the_stems_not_given(small_corpus, tmp_path) -> None:
    """With the null stage (the project's own separator stand-in, no model): given stems pass through untouched."""
    song = small_corpus / "stems" / "song_00000"
    mix = str(small_corpus / "mix" / "song_00000.wav")
    step = SeparateStep(ExtractConfig(segment_s=SEGMENT_S, stages="null"))
    manifest = tmp_path / "m.jsonl"
    for given in (STEMS, ("vocals", "bass"), ()):
        _write_lines(manifest, [{"uri": mix, "stems": {s: str(song / f"{s}.wav") for s in given}}])
        decoded = _decoded(manifest)
        rows = from_table(step(to_table(decoded)))
        assert len(rows) == 3
        for before, row in zip(decoded, rows, strict=True):
            separated = NullSeparator().separate(before.audio, FEATURE_SAMPLE_RATE).as_dict()
            assert list(row.stems) == list(STEMS)
            assert row.stem_origins == [GIVEN if s in given else "null-separate" for s in STEMS]
            for s in STEMS:
                expected = before.stems[s] if s in given else separated[s]
                np.testing.assert_array_equal(row.stems[s], expected)


# --- real extraction -----------------------------------------------------------------------------------------------


def _config(corpus: Path, manifest: Path, out: Path, **kw) -> ExtractConfig:
    models = ModelsConfig(kind="tiny", cache_dir=str(corpus.parent / "models"))
    return ExtractConfig(input=str(manifest), output=str(out), segment_s=SEGMENT_S, commit_rows=2, models=models, **kw)


def _audio_rows(out: Path) -> dict[str, list[dict]]:
    """The current audio-feature rows by song id, in segment order."""
    from hummingml.output import read_set

    rows: dict[str, list[dict]] = {}
    for row in sorted(read_set(str(out), "audio-feature").to_pylist(), key=lambda r: r["segment_index"]):
        rows.setdefault(json.loads(row["metadata"])["song_id"], []).append(row)
    return rows


def _codec(corpus: Path):
    from hummingml.stages.codec import Codec

    return Codec(_config(corpus, corpus, corpus).codec_config())


@pytest.fixture(scope="module")
def extracted(ray_local, tmp_path_factory):
    """Three 2 s songs: the first with its six true stems, the second with vocals and bass only, the third with a
    drums stem half a second short; extracted once with the tiny models."""
    from hummingml.extract.job import run

    root = tmp_path_factory.mktemp("extract-given")
    corpus = root / "corpus"
    write_corpus(corpus, n_songs=3, seed=12, seconds=2.0, stems_in_manifest=True)
    lines = _lines(corpus / "manifest.jsonl")
    lines[1]["stems"] = {s: lines[1]["stems"][s] for s in ("vocals", "bass")}
    audio, rate = decode(corpus / lines[2]["stems"]["drums"])
    write_pcm16(corpus / "drums-short.wav", audio[:, : audio.shape[1] - rate // 2], rate)
    lines[2]["stems"]["drums"] = "drums-short.wav"
    _write_lines(corpus / "manifest.jsonl", lines)
    out = root / "out"
    summary = run(_config(corpus, corpus / "manifest.jsonl", out), log=io.StringIO())
    return corpus, out, summary


@pytest.mark.slow
def test_all_six_given_stems_skip_separation_and_are_coded_as_given(extracted, one_torch_thread) -> None:
    corpus, out, summary = extracted
    assert (summary["inputs"], summary["ok"], summary["failed"], summary["unaccounted"]) == (3, 2, 1, 0)
    rows = _audio_rows(out)["song_00000"]
    assert [r["segment_index"] for r in rows] == [0, 1]
    codec = _codec(corpus)
    stems = {s: _segments_of(corpus / "stems" / "song_00000" / f"{s}.wav") for s in STEMS}
    for row in rows:
        assert row["stem_names"] == list(STEMS) and row["stem_origins"] == [GIVEN] * len(STEMS)
        assert json.loads(row["metadata"])["stems"]["vocals"] == str(
            (corpus / "stems" / "song_00000" / "vocals.wav").resolve()
        )
        for s, codes in zip(STEMS, row["stem_codes"], strict=True):
            expected = codec.encode(to_mono(stems[s][row["segment_index"]]), FEATURE_SAMPLE_RATE).codes
            np.testing.assert_array_equal(np.array(codes, dtype=np.int16), expected, err_msg=s)


@pytest.mark.slow
def test_two_given_stems_are_kept_and_the_other_four_separated(extracted, one_torch_thread) -> None:
    corpus, out, summary = extracted
    (demucs,) = [m["name"] for m in summary["models"] if m["library"] == "demucs"]
    codec = _codec(corpus)
    for row in _audio_rows(out)["song_00001"]:
        assert row["stem_origins"] == [GIVEN if s in ("vocals", "bass") else demucs for s in STEMS]
        for s in ("vocals", "bass"):
            segment = _segments_of(corpus / "stems" / "song_00001" / f"{s}.wav")[row["segment_index"]]
            expected = codec.encode(to_mono(segment), FEATURE_SAMPLE_RATE).codes
            np.testing.assert_array_equal(np.array(row["stem_codes"][STEMS.index(s)], dtype=np.int16), expected)


@pytest.mark.slow
def test_a_given_stem_of_another_duration_fails_its_input_with_the_reason(extracted) -> None:
    from hummingml.output import read_set

    _, out, _ = extracted
    (error,) = read_set(str(out), "errors").to_pylist()
    assert (error["stage"], error["error_type"], error["segment_index"]) == ("decode", "StemMismatchError", -1)
    assert "stem 'drums'" in error["message"] and "lasts 1.500 s but the mix 2.000 s" in error["message"]


@pytest.mark.slow
def test_outputs_of_the_older_schema_read_with_null_origins(extracted, tmp_path) -> None:
    from hummingml.output import read_set

    _, out, _ = extracted
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for path in (old / "audio-feature").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["stem_origins"]), path)  # as schema 2.1 wrote it
    rows = read_set(str(old), "audio-feature").to_pylist()
    assert len(rows) == 4 and all(r["stem_origins"] is None for r in rows)
    assert all(len(r["stem_codes"]) == len(STEMS) for r in rows)


@pytest.mark.slow
def test_a_changed_stem_file_makes_its_input_changed(extracted, tmp_path, one_torch_thread) -> None:
    """A stem rewritten after a run is a changed input: the rerun processes it again and its rows use the new file."""
    from hummingml.extract.job import run

    corpus, _, _ = extracted
    song = tmp_path / "song"  # a copy of the first song, its manifest beside it
    shutil.copytree(corpus / "stems" / "song_00000", song / "stems")
    shutil.copy(corpus / "mix" / "song_00000.wav", song / "mix.wav")
    line = _lines(corpus / "manifest.jsonl")[0]
    _write_lines(song / "manifest.jsonl", [{**line, "uri": "mix.wav", "stems": {s: f"stems/{s}.wav" for s in STEMS}}])
    config = _config(corpus, song / "manifest.jsonl", tmp_path / "out")
    run(config, log=io.StringIO())
    again = run(config, log=io.StringIO())
    assert (again["changed_inputs"], again["ok"], again["feature_rows"]) == (0, 1, 2)

    vocals = song / "stems" / "vocals.wav"
    audio, rate = decode(vocals)
    write_pcm16(vocals, audio[:, ::-1].copy(), rate)  # another take of the same length, in place
    changed = run(config, log=io.StringIO())
    assert (changed["changed_inputs"], changed["ok"], changed["unaccounted"]) == (1, 1, 0)
    out = tmp_path / "out"
    codec = _codec(corpus)
    segments = _segments_of(vocals)
    for row in _audio_rows(out)["song_00000"]:
        expected = codec.encode(to_mono(segments[row["segment_index"]]), FEATURE_SAMPLE_RATE).codes
        np.testing.assert_array_equal(np.array(row["stem_codes"][STEMS.index("vocals")], dtype=np.int16), expected)
