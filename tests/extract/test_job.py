from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from hummingml.extract.config import ExtractConfig
from hummingml.extract.sources import list_sources
from hummingml.testing.corpus import write_corpus
from hummingml.testing.signals import output_keys as keys
from hummingml.weights.config import ModelsConfig
from schemas.features import SCHEMA_VERSION, SCHEMAS
from tests.ray_internals import map_actor, processes

pytestmark = pytest.mark.slow

BAD_FILES = {  # name -> (bytes or None for a directory, expected stage, expected error type)
    "empty.wav": (b"", "decode", "DecodeError:empty"),
    "text.wav": (b"this is not audio\n" * 50, "decode", "DecodeError:not_audio"),
    "dir.wav": (None, "read", "DecodeError:unreadable"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, n_songs=2, seed=1, seconds=3.0)
    mix = root / "mix"
    good = (mix / "song_00000.wav").read_bytes()
    (mix / "truncated.wav").write_bytes(good[: len(good) // 2])
    for name, (data, _, _) in BAD_FILES.items():
        if data is None:
            (mix / name).mkdir()
        else:
            (mix / name).write_bytes(data)
    return root


def config(corpus: Path, out: Path, **kw) -> ExtractConfig:
    models = ModelsConfig(kind="tiny", cache_dir=str(corpus.parent / "models"))
    return ExtractConfig(input=str(corpus / "mix"), output=str(out), segment_s=2.0, commit_rows=2, models=models, **kw)


@pytest.fixture(scope="module")
def clean_run(ray_local, corpus, tmp_path_factory):
    from hummingml.extract.job import run

    out = tmp_path_factory.mktemp("clean")
    log = io.StringIO()
    summary = run(config(corpus, out), log=log)
    return out, summary, log.getvalue()


def test_every_input_is_accounted_for(clean_run) -> None:
    out, summary, log = clean_run
    assert summary["inputs"] == 2 + 1 + len(BAD_FILES)
    assert (summary["ok"], summary["failed"], summary["unaccounted"]) == (2, 1 + len(BAD_FILES), 0)
    assert summary["accounted"]
    assert summary["feature_rows"] == 4  # two 3 s songs in 2 s segments
    assert summary["random_weights"] is True
    assert "RANDOM WEIGHTS" in log
    assert json.loads((out / "summary.json").read_text())["ok"] == 2


def test_error_rows_say_what_went_wrong(clean_run) -> None:
    out, _, _ = clean_run
    errors = pads.dataset(out / "errors", format="parquet").to_table().to_pylist()
    by_name = {Path(e["source_uri"]).name: e for e in errors}
    assert set(by_name) == {"truncated.wav", *BAD_FILES}
    assert by_name["truncated.wav"]["error_type"] == "DecodeError:truncated"
    for name, (_, stage, error_type) in BAD_FILES.items():
        assert (by_name[name]["stage"], by_name[name]["error_type"]) == (stage, error_type), name
        assert by_name[name]["segment_index"] == -1 and by_name[name]["message"]


def test_outputs_match_their_schemas_and_carry_metadata(clean_run) -> None:
    out, _, _ = clean_run
    for name, schema in SCHEMAS.items():
        files = sorted((out / name).glob("*.parquet"))
        assert files, name
        file_schema = pq.read_schema(files[0])
        assert file_schema.remove_metadata().equals(schema.remove_metadata()), name
        run_meta = json.loads(file_schema.metadata[b"hummingml.run"])
        assert file_schema.metadata[b"hummingml.schema_version"].decode() == SCHEMA_VERSION
        assert run_meta["random_weights"] is True
        assert {m["kind"] for m in run_meta["models"]} == {"tiny"}
    assert sorted(keys(out, "audio-feature")) == sorted(keys(out, "sine-audio-feature"))
    assert len(set(keys(out, "audio-feature"))) == len(keys(out, "audio-feature"))


def test_feature_rows_have_consistent_shapes(clean_run) -> None:
    out, _, _ = clean_run
    rows = pads.dataset(out / "audio-feature", format="parquet").to_table().to_pylist()
    sine_rows = {(r["source_id"], r["segment_index"]): r
                 for r in pads.dataset(out / "sine-audio-feature", format="parquet").to_table().to_pylist()}
    for row in rows:
        frames = row["n_frames"]
        assert frames == -(-round(row["segment_duration_s"] * 22_050) // 256)
        codes = np.array(row["channel_codes"])
        assert codes.shape[0] == 2 and codes.shape[2] == frames
        assert row["stem_names"] == ["drums", "bass", "vocals", "lead", "chordal", "other"]
        assert all(np.array(c).shape[-1] == frames for c in row["stem_codes"])
        sine = sine_rows[(row["source_id"], row["segment_index"])]
        assert [m["stream"] for m in sine["melody"]] == ["mono", "vocals", "lead"]
        assert np.array(sine["mono_codes"]).shape == (1, codes.shape[1], frames)
        (variant,) = sine["mono_variants"]  # ExtractConfig.mono_variants = 1: one augmented copy
        assert np.array(variant["codes"]).shape == (1, codes.shape[1], frames)
        assert -12 <= variant["gain_db"] <= 6 and 15 <= variant["snr_db"] <= 40


def test_stored_sine_codes_are_the_encoding_of_the_stored_notes(clean_run, corpus) -> None:
    from hummingml.stages.codec import CodecConfig, encode
    from hummingml.stages.pitch import NoteEvent
    from hummingml.stages.synth import render_sine
    from hummingml.weights.load import load_dac

    out, _, _ = clean_run
    row = pads.dataset(out / "sine-audio-feature", format="parquet").to_table().to_pylist()[0]
    mono = row["melody"][0]
    assert mono["notes"], "the mono reference of a song has notes"
    notes = [NoteEvent(n["start_s"], n["end_s"], n["pitch"], n["amplitude"]) for n in mono["notes"]]
    sine = render_sine(notes, round(row["segment_duration_s"] * 22_050))
    model, _ = load_dac(ModelsConfig(kind="tiny", cache_dir=str(corpus.parent / "models")))
    codes = encode(sine, 22_050, model, CodecConfig()).codes
    np.testing.assert_array_equal(codes, np.array(mono["sine_codes"]))


def test_rerun_skips_everything_and_duplicates_nothing(clean_run, corpus) -> None:
    from hummingml.extract.job import run

    out, first, _ = clean_run
    before = sorted(keys(out, "audio-feature")), sorted(keys(out, "errors"))
    log = io.StringIO()
    summary = run(config(corpus, out), log=log)
    assert "0 to process" in log.getvalue()
    assert (sorted(keys(out, "audio-feature")), sorted(keys(out, "errors"))) == before
    assert (summary["ok"], summary["failed"]) == (first["ok"], first["failed"])


def test_per_stage_pools_give_the_fused_actors_rows(clean_run, corpus, tmp_path) -> None:
    """The clean run used whole-pipeline actors (the placement on 2 CPUs); per-stage pools write the same rows."""
    from hummingml.extract.job import run

    log = io.StringIO()
    run(config(corpus, tmp_path / "stages", placement="stages"), log=log)
    assert "separate 1 x 1 thread(s)" in log.getvalue() and "pipeline" in clean_run[2]
    for name in SCHEMAS:
        assert sorted(keys(tmp_path / "stages", name)) == sorted(keys(clean_run[0], name)), name
    for name in ("audio-feature", "sine-audio-feature"):
        columns = ["source_id", "segment_index", *(c for c in SCHEMAS[name].names if c.endswith("codes"))]
        fused, stages = (pads.dataset(root / name, format="parquet").to_table(columns=columns)
                         .sort_by([("source_id", "ascending"), ("segment_index", "ascending")])
                         for root in (clean_run[0], tmp_path / "stages"))
        assert fused.num_rows > 0 and len(columns) > 2 and fused.equals(stages), name


def test_killed_driver_then_rerun_equals_a_clean_run(clean_run, corpus, tmp_path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ray_jobs.extract", "--input", str(corpus / "mix"), "--output", str(out),
           "--segment-s", "2", "--commit-rows", "1", "--models-kind", "tiny",
           "--models-cache-dir", str(corpus.parent / "models")]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((out / "_commits").glob("*.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die together, mid-run
    proc.wait()
    assert list((out / "_commits").glob("*.json")), "the run committed something before it was killed"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    # 4 of the corpus's 6 inputs fail on purpose: above the default --max-failed-fraction 0.5, so the job exits 1,
    # with one line saying so, after writing every row
    assert rerun.returncode == 1, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    errors = [line for line in rerun.stderr.splitlines() if line.startswith("ray_jobs.extract: error:")]
    assert len(errors) == 1 and errors[0].startswith("ray_jobs.extract: error: 4 of 6 inputs failed (67%"), errors
    assert "inputs done" in rerun.stdout  # the job's own progress line
    assert "Total Progress" not in rerun.stdout + rerun.stderr  # Ray Data's per-operator lines: off by default
    clean_out = clean_run[0]
    for name in SCHEMAS:
        assert sorted(keys(out, name)) == sorted(keys(clean_out, name)), name


def test_manifest_and_sqlite_inputs(ray_local, corpus, tmp_path) -> None:
    manifest = corpus / "manifest.jsonl"
    sources = list_sources(str(manifest))
    assert len(sources) == 2 and json.loads(sources[0].metadata)["tempo_bpm"] > 0
    db = tmp_path / "tracks.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tracks (path TEXT, artist TEXT)")
        conn.executemany("INSERT INTO tracks VALUES (?, ?)",
                         [(str(corpus / "mix" / f"song_0000{i}.wav"), f"a{i}") for i in range(2)])
    sources = list_sources(f"sqlite:///{db}", query="SELECT path AS uri, artist FROM tracks ORDER BY path")
    assert [Path(s.uri).name for s in sources] == ["song_00000.wav", "song_00001.wav"]
    assert json.loads(sources[1].metadata) == {"artist": "a1"}
    cfg = dataclasses.replace(config(corpus, tmp_path / "from-db"), input=f"sqlite:///{db}",
                              query="SELECT path AS uri, artist FROM tracks", limit=1)
    from hummingml.extract.job import run

    summary = run(cfg, log=io.StringIO())
    assert (summary["inputs"], summary["ok"]) == (1, 1)
    row = pads.dataset(tmp_path / "from-db" / "audio-feature", format="parquet").to_table().to_pylist()[0]
    assert json.loads(row["metadata"])["artist"] in {"a0", "a1"}


def test_killed_model_actor_then_the_job_still_equals_a_clean_run(clean_run, corpus, tmp_path) -> None:
    out = tmp_path / "actor-killed"
    cmd = [sys.executable, "-m", "ray_jobs.extract", "--input", str(corpus / "mix"), "--output", str(out),
           "--segment-s", "2", "--commit-rows", "1", "--models-kind", "tiny",
           "--models-cache-dir", str(corpus.parent / "models"), "--max-failed-fraction", "1"]  # exit 0 wanted
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": "local"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        # kill a model actor (whole-pipeline ones: the placement on 2 CPUs) once it has work in flight: after the
        # first commit it has taken the next segment
        if list((out / "_commits").glob("*.json")):
            for p in processes(map_actor("PipelineStep"))[:1]:
                p.kill()
                killed = p.pid
        time.sleep(0.1)
    assert killed is not None, "found a model actor to kill while the job ran"
    assert proc.wait(timeout=600) == 0
    clean_out = clean_run[0]
    for name in SCHEMAS:
        assert sorted(keys(out, name)) == sorted(keys(clean_out, name)), name
