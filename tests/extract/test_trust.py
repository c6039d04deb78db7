"""Extraction as operators run it: two drivers, a writer killed after its marker, one corpus under several spellings,
changed and removed inputs, a damaged marker, a changed config. Real Ray (local), real files, tiny models."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf

from hummingml.config import ConfigError
from hummingml.extract.config import ExtractConfig
from hummingml.extract.inspect import describe
from hummingml.extract.store import COMMITS, LEASE
from hummingml.output import QUARANTINE, read_set
from hummingml.testing.signals import output_keys, sine
from hummingml.train.data import JoinedRows
from hummingml.weights.config import ModelsConfig
from schemas.features import SCHEMAS

pytestmark = pytest.mark.slow

RATE = 22_050


def write_song(path: Path, seconds: float, hz: float) -> None:
    """A stereo tone (distinct per ``hz``) of ``seconds`` at 22.05 kHz."""
    tone = sine(hz, seconds, RATE)
    sf.write(path, np.concatenate([tone, 0.5 * tone]).T, RATE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trust") / "mix"
    root.mkdir()
    for i in range(3):
        write_song(root / f"song_{i}.wav", 3.0, 220.0 * (i + 1))  # 2 segments of 2 s each
    return root


def config(corpus: Path, out: Path, **kw) -> ExtractConfig:
    models = ModelsConfig(kind="tiny", cache_dir=str(corpus.parent.parent / "models"))
    return ExtractConfig(input=str(corpus), output=str(out), segment_s=2.0, commit_rows=2, models=models, **kw)


def run(cfg: ExtractConfig) -> tuple[dict, str]:
    from hummingml.extract.job import run as run_job

    log = io.StringIO()
    summary = run_job(cfg, log=log)
    return summary, log.getvalue()


@pytest.fixture(scope="module")
def clean(ray_local, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    summary, _ = run(config(corpus, out))
    assert (summary["ok"], summary["feature_rows"]) == (3, 6)
    return out


def all_keys(out: Path) -> dict[str, list[tuple[str, int]]]:
    return {name: sorted(output_keys(out, name)) for name in SCHEMAS}


def assert_no_key_twice(out: Path) -> None:
    """Every reader (the sets, the joined training rows, inspect) holds each key once."""
    for name in SCHEMAS:
        counts = Counter(output_keys(out, name))
        assert not [k for k, n in counts.items() if n > 1], name
    joined = [(r["source_id"], r["segment_index"]) for r in JoinedRows(str(out)).iter_rows()]
    assert len(joined) == len(set(joined))
    assert describe(str(out))["duplicate_keys"] == 0


def extract_cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ray_jobs.extract", "--input", str(corpus), "--output", str(out),
            "--segment-s", "2", "--commit-rows", "2", "--models-kind", "tiny",
            "--models-cache-dir", str(corpus.parent.parent / "models"), *extra]


def test_two_drivers_started_together_one_runs_the_other_is_refused(clean, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    started = time.monotonic()
    logs = [(tmp_path / f"driver-{i}.err").open("w") for i in range(2)]
    procs = [subprocess.Popen(extract_cmd(corpus, out), env=env, stdout=subprocess.DEVNULL, stderr=log)
             for log in logs]
    ended = {}
    while len(ended) < 2:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic() - started
        time.sleep(0.1)
        assert time.monotonic() - started < 600
    for log in logs:
        log.close()
    errs = [(tmp_path / f"driver-{i}.err").read_text() for i in range(2)]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [e[-2000:] for e in errs]
    refused = next(i for i, p in enumerate(procs) if p.returncode == 2)
    stderr = errs[refused].strip().splitlines()
    assert ended[refused] < 10, ended
    assert len(stderr) == 1 and "being written by another driver" in stderr[0] and "pid" in stderr[0], stderr
    assert all_keys(out) == all_keys(clean)
    assert not (out / LEASE).exists()  # released at the end


def test_writer_killed_right_after_a_marker_duplicates_no_key(clean, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    summary, _ = run(config(corpus, out, fail_after_commits=1))
    assert (out / "_fault-after-commit-1").exists(), "the fault fired"
    assert summary["accounted"]
    assert all_keys(out) == all_keys(clean)
    assert_no_key_twice(out)
    raw = pads.dataset(out / "audio-feature", format="parquet").to_table(columns=["source_id", "segment_index"])
    assert raw.num_rows == 6  # not even the files hold a second copy
    assert not any((out / "_staging").glob("*"))  # the restarted writer finished the interrupted batch's moves


def test_one_corpus_under_three_spellings_is_processed_once(clean, corpus, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    markers = sorted(p.name for p in (out / COMMITS).glob("*.json"))
    link = tmp_path / "linked-folder"
    link.symlink_to(corpus, target_is_directory=True)
    monkeypatch.chdir(corpus.parent)
    for spelling in (os.path.relpath(corpus), str(link), f"file://{corpus}"):
        summary, log = run(dataclasses.replace(config(corpus, out), input=spelling))
        assert "0 to process" in log, spelling
        assert (summary["ok"], summary["output"]["sources"]) == (3, 3), spelling
    assert sorted(p.name for p in (out / COMMITS).glob("*.json")) == markers
    assert all_keys(out) == all_keys(clean)


def test_rewritten_appended_shrunk_and_removed_inputs(ray_local, corpus, tmp_path) -> None:
    mix = tmp_path / "mix"
    shutil.copytree(corpus, mix)
    write_song(mix / "gone.wav", 1.0, 880.0)
    out = tmp_path / "out"
    cfg = dataclasses.replace(config(corpus, out), input=str(mix), commit_rows=1)
    first, _ = run(cfg)
    assert first["feature_rows"] == 7
    # song_2's last segment never committed (its run was cut short): drop that batch's marker
    sid = {Path(r["source_uri"]).name: r["source_id"] for r in read_set(str(out), "audio-feature").to_pylist()}
    for marker in (out / COMMITS).glob("*.json"):
        if [sid["song_2.wav"], 1] in [r[:2] for r in json.loads(marker.read_text())["rows"]]:
            marker.unlink()
    old_sha = {r["source_id"]: r["content_sha256"] for r in read_set(str(out), "audio-feature").to_pylist()}

    time.sleep(0.01)  # a new modification time even on coarse clocks
    write_song(mix / "song_0.wav", 3.0, 990.0)  # rewritten: same length, other sound
    write_song(mix / "song_1.wav", 5.0, 440.0)  # appended: now 3 segments
    write_song(mix / "song_2.wav", 1.0, 660.0)  # shrunk after the partial run: now 1 segment
    (mix / "gone.wav").unlink()
    summary, log = run(cfg)
    assert summary["accounted"] and summary["changed_inputs"] == 3, log
    assert summary["output"]["not_in_input"] == 1 and "not in this run's input" in log
    assert summary["output"]["superseded_rows"] >= 5
    rows = read_set(str(out), "audio-feature", ["source_id", "segment_index", "source_uri", "content_sha256",
                                                "n_segments"]).to_pylist()
    by_name = Counter(Path(r["source_uri"]).name for r in rows)
    assert by_name == {"song_0.wav": 2, "song_1.wav": 3, "song_2.wav": 1, "gone.wav": 1}
    for r in rows:
        if Path(r["source_uri"]).name != "gone.wav":
            assert r["content_sha256"] != old_sha[r["source_id"]]
            assert r["n_segments"] == by_name[Path(r["source_uri"]).name]
    assert_no_key_twice(out)
    summary, log = run(cfg)
    assert "0 to process" in log and summary["changed_inputs"] == 0


def test_an_empty_marker_is_set_aside_and_the_run_completes(clean, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (out / COMMITS / "0000-power-loss.json").write_bytes(b"")
    victim = sorted((out / COMMITS).glob("*.json"))[-1]
    victim.write_bytes(b"")  # a real batch's marker lost its bytes: that batch is processed again
    summary, log = run(config(corpus, out))
    assert "damaged commit marker" in log
    assert summary["accounted"]
    assert (out / COMMITS / QUARANTINE / victim.name).exists()
    assert all_keys(out) == all_keys(clean)
    assert_no_key_twice(out)


def test_a_rerun_with_another_config_is_refused_unless_allowed(clean, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    before = sorted(p.name for p in (out / COMMITS).glob("*.json"))
    with pytest.raises(ConfigError, match=re.escape("segment_s: 2.0 -> 3.0")):
        run(dataclasses.replace(config(corpus, out), segment_s=3.0))
    assert sorted(p.name for p in (out / COMMITS).glob("*.json")) == before
    assert not (out / LEASE).exists()
    summary, log = run(dataclasses.replace(config(corpus, out), mono_variants=2, allow_config_change=True))
    assert "config changed" in log and "mono_variants: 1 -> 2" in log
    assert summary["accounted"]


def test_a_pool_of_writers_gives_the_rows_of_a_clean_run(clean, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    summary, log = run(dataclasses.replace(config(corpus, out, writers=2), commit_rows=1))
    assert "2 writer(s)" in log and summary["accounted"]
    # which writer gets a batch is Ray Data's choice; tests/extract/test_store.py commits from two processes at once
    assert all(json.loads(m.read_text())["writer"] for m in (out / COMMITS).glob("*.json"))
    assert all_keys(out) == all_keys(clean)
    assert_no_key_twice(out)


def test_a_rolled_up_log_resumes_and_supersedes_like_the_markers(ray_local, tmp_path) -> None:
    from hummingml.extract.store import ROLL_UP_MIN
    from hummingml.output import LOG

    mix = tmp_path / "mix"
    mix.mkdir()
    inputs = ROLL_UP_MIN + 6
    for i in range(inputs):
        write_song(mix / f"tone_{i:03d}.wav", 0.5, 200.0 + 10 * i)
    cfg = ExtractConfig(input=str(mix), output=str(tmp_path / "out"), segment_s=1.0, commit_rows=1, stages="null")
    out = tmp_path / "out"
    summary, _ = run(cfg)
    assert summary["accounted"] and summary["feature_rows"] == inputs
    assert not list((out / COMMITS).glob("*.json")), "the run's markers were rolled up at its end"
    [log_file] = (out / COMMITS / LOG).glob("*.parquet")
    before = {name: sorted(output_keys(out, name)) for name in SCHEMAS}
    summary, log = run(cfg)  # nothing to do: the plan reads the log
    assert "0 to process" in log and summary["accounted"] and summary["output"]["sources"] == inputs
    assert list((out / COMMITS / LOG).glob("*.parquet")) == [log_file] and not list((out / COMMITS).glob("*.json"))
    write_song(mix / "tone_000.wav", 0.5, 5000.0)  # changed: its rolled-up row is superseded
    os.utime(mix / "tone_000.wav", ns=(1, 1))
    summary, log = run(cfg)
    assert "1 to process" in log and "1 changed" in log and summary["output"]["superseded_rows"] == 1
    assert {name: sorted(output_keys(out, name)) for name in SCHEMAS} == before
    assert_no_key_twice(out)
