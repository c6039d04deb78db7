"""Reliability: hostile inputs each end as their stated outcome; injected faults lose and duplicate nothing.

The killed-driver and killed-model-actor cases live in tests/extract/test_job.py (they compare with its clean run).
docs/reliability.md lists every case with its outcome and the command that runs it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from hummingml.audio import DecodeError
from hummingml.extract.config import ExtractConfig
from hummingml.extract.sources import SourceUnavailable, canonical_uri, printable, read_bytes, source_id
from hummingml.testing.corpus import write_corpus
from hummingml.testing.hostile import write_hostile_corpus
from hummingml.testing.signals import output_keys
from hummingml.weights.config import ModelsConfig
from schemas.features import SCHEMAS
from tests.ray_internals import TRAIN_WORKER, checkpoint_registered, processes

pytestmark = pytest.mark.slow

SEGMENT_S = 2.0
SETS = tuple(SCHEMAS)  # the output sets


def config(inputs: Path | str, out: Path, models: Path, **kw) -> ExtractConfig:
    return ExtractConfig(input=str(inputs), output=str(out), segment_s=SEGMENT_S, commit_rows=4,
                         models=ModelsConfig(kind="tiny", cache_dir=str(models)), **kw)


def all_keys(out: Path) -> dict[str, list[tuple[str, int]]]:
    return {name: sorted(output_keys(out, name)) for name in SETS}


@pytest.fixture(scope="module")
def hostile(ray_local, tmp_path_factory):
    from hummingml.extract.job import run

    root = tmp_path_factory.mktemp("hostile")
    inputs = write_hostile_corpus(root / "corpus", SEGMENT_S)
    out = root / "out"
    summary = run(config(root / "corpus", out, root / "models"), log=io.StringIO())
    return root, inputs, out, summary


def test_the_corpus_has_at_least_40_kinds(hostile) -> None:
    _, inputs, _, _ = hostile
    assert len({i.kind for i in inputs}) >= 40
    assert sum(i.expected.ok for i in inputs) >= 20 and sum(not i.expected.ok for i in inputs) >= 20


def test_every_hostile_kind_ends_as_its_expected_outcome(hostile) -> None:
    root, inputs, out, summary = hostile
    features = pads.dataset(out / "audio-feature", format="parquet").to_table(columns=["source_id"]).to_pylist()
    errors = pads.dataset(out / "errors", format="parquet").to_table().to_pylist()
    segments = Counter(r["source_id"] for r in features)
    error_of = {r["source_id"]: r for r in errors}
    wrong = []
    for item in inputs:
        sid = source_id(canonical_uri(str(root / "corpus" / item.path)))
        if item.expected.same_as:
            got = "same" if sid == source_id(canonical_uri(str(root / "corpus" / item.expected.same_as))) else "own"
            want = "same"
        elif item.expected.ok:
            got = f"{segments[sid]} segments" + (f", error {error_of[sid]['error_type']}" if sid in error_of else "")
            want = f"{item.expected.segments} segments"
        else:
            row = error_of.get(sid)
            got = (f"{row['stage']} {row['error_type']}, " if row else "") + f"{segments[sid]} segments"
            want = f"{item.expected.stage} {item.expected.error_type}, 0 segments"
            assert row is None or (row["segment_index"] == -1 and row["message"]), row
        if got != want:
            wrong.append(f"{item.kind}: expected {want}, got {got}")
    assert not wrong, "\n".join(wrong)
    listed = [i for i in inputs if not i.expected.same_as]
    assert (summary["inputs"], summary["unaccounted"], summary["accounted"]) == (len(listed), 0, True)


def test_odd_names_are_stored_readably(hostile) -> None:
    _, _, out, _ = hostile
    uris = pads.dataset(out / "audio-feature", format="parquet").to_table(columns=["source_uri"])["source_uri"]
    uris = uris.to_pylist()
    assert any("bad-\\xff\\xfe-name.wav" in u for u in uris)  # non-UTF-8 bytes as escapes, not a crash
    assert any(u.endswith("l" * 240 + ".wav") for u in uris)
    shas = pads.dataset(out / "audio-feature", format="parquet").to_table(columns=["source_uri", "content_sha256"])
    copies = {r["content_sha256"] for r in shas.to_pylist() if "copy-" in r["source_uri"]}
    assert len(copies) == 1  # the same content under two names: two sources, one content hash


def test_rerun_over_the_hostile_corpus_adds_nothing(hostile) -> None:
    from hummingml.extract.job import run

    root, _, out, _ = hostile
    before = all_keys(out)
    log = io.StringIO()
    run(config(root / "corpus", out, root / "models"), log=log)
    assert "0 to process" in log.getvalue()
    assert all_keys(out) == before
    for name, keys in before.items():
        assert len(keys) == len(set(keys)), name


def test_manifest_row_pointing_to_a_missing_object(ray_local, hostile, tmp_path) -> None:
    from hummingml.extract.job import run

    root, _, _, _ = hostile
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"uri": str(root / "corpus" / "s16.wav")}, {"uri": str(tmp_path / "gone.wav"), "artist": "x"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run(config(manifest, tmp_path / "out", root / "models"), log=io.StringIO())
    assert (summary["ok"], summary["failed"], summary["accounted"]) == (1, 1, True)
    error = pads.dataset(tmp_path / "out" / "errors", format="parquet").to_table().to_pylist()
    assert [(e["stage"], e["error_type"]) for e in error] == [("read", "DecodeError:not_found")]


def test_one_hour_file_becomes_its_segments(tmp_path) -> None:
    from hummingml.extract.record import from_table, source_rows
    from hummingml.extract.sources import Source
    from hummingml.extract.steps import DecodeStep

    inputs = write_hostile_corpus(tmp_path, segment_s=30.0, long_s=3600.0)
    long = next(i for i in inputs if i.kind.startswith("long"))
    uri = str(tmp_path / long.path)
    rows = from_table(DecodeStep(ExtractConfig(segment_s=30.0))(source_rows([Source(uri, "x")])))
    assert len(rows) == long.expected.segments == 120
    assert [r.segment_index for r in rows] == list(range(120))
    assert sum(r.segment_samples for r in rows) == (3600 * 22_050)
    assert all(r.n_segments == 120 and r.source_duration_s == 3600.0 for r in rows)


# --- faults -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three 3 s songs and their clean extraction (in a subprocess driver with its own local Ray)."""
    root = tmp_path_factory.mktemp("small")
    write_corpus(root / "corpus", n_songs=3, seed=7, seconds=3.0)
    clean = root / "clean"
    extract_job(root / "corpus" / "mix", clean, root / "models", timeout=600)
    return root, clean


def extract_job(inputs: Path | str, out: Path, models: Path, timeout: float = 600, check: bool = True,
                extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ray_jobs.extract", "--input", str(inputs), "--output", str(out),
           "--segment-s", "1", "--commit-rows", "1", "--models-kind", "tiny", "--models-cache-dir", str(models),
           "--max-failed-fraction", "1", *extra]  # hostile inputs fail on purpose
    done = subprocess.run(cmd, env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs CAP_SYS_ADMIN, as root in CI has): the output disk that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_output_disk_then_free_it_and_rerun_equals_a_clean_run(small, small_disk) -> None:
    root, clean = small
    clean_bytes = sum(p.stat().st_size for p in clean.rglob("*.parquet"))
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    leave = clean_bytes // 3  # room for about a third of the output: the disk fills mid-run
    filler.write_bytes(b"\0" * (free - leave))
    out = small_disk / "out"
    failed = extract_job(root / "corpus" / "mix", out, root / "models", check=False)
    assert failed.returncode != 0
    assert "No space left on device" in failed.stdout + failed.stderr
    assert "rerun the same command to resume" in failed.stdout
    committed = list((out / "_commits").glob("*.json"))
    assert committed, "some batches committed before the disk filled"
    filler.unlink()
    extract_job(root / "corpus" / "mix", out, root / "models")
    assert all_keys(out) == all_keys(clean)
    assert not [p for p in (out / "_staging").rglob("*") if p.is_file()]


def test_object_store_outage_defers_inputs_and_a_rerun_completes(s3, tmp_path, small) -> None:
    root, _ = small
    manifest = tmp_path / "s3.jsonl"
    manifest.write_text("".join(json.dumps({"uri": f"s3://audio/mix/{n}?{s3.query}"}) + "\n"
                                for n in ("song_00000.wav", "song_00001.wav", "bad.wav")))
    clean = tmp_path / "clean"
    extract_job(manifest, clean, root / "models")
    out = tmp_path / "out"
    s3.stop()
    try:
        down = extract_job(manifest, out, root / "models", check=False, extra=("--read-retries", "1",
                                                                                "--read-backoff-s", "0.1"))
    finally:
        s3.start()
    assert down.returncode == 1, down.stdout[-3000:] + down.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["deferred"], summary["unaccounted"], summary["ok"], summary["failed"]) == (3, 3, 0, 0)
    assert "rerun the same command" in down.stdout
    assert all(not keys for keys in all_keys(out).values())  # an outage is not an error of the input
    extract_job(manifest, out, root / "models")
    assert all_keys(out) == all_keys(clean)


def test_read_retries_ride_out_a_short_outage(s3) -> None:
    uri = f"s3://audio/mix/song_00000.wav?{s3.query}"
    s3.stop()
    threading.Timer(2.0, s3.start).start()
    started = time.monotonic()
    data = read_bytes(uri, retries=6, backoff_s=0.5)  # waits 0.5, 1, 2, ... s between attempts
    assert data[:4] == b"RIFF"
    assert time.monotonic() - started >= 2.0  # it did fail first, and got the object once the store was back


def test_a_read_that_keeps_failing_is_unavailable_not_an_input_error(s3) -> None:
    s3.stop()
    try:
        with pytest.raises(SourceUnavailable, match="after 2 retries"):
            read_bytes(f"s3://audio/mix/song_00000.wav?{s3.query}", retries=2, backoff_s=0.05)
    finally:
        s3.start()
    with pytest.raises(DecodeError) as info:  # a missing object stays an input error, with no retries
        read_bytes(f"s3://audio/mix/missing.wav?{s3.query}", retries=2, backoff_s=10)
    assert info.value.kind == "not_found"


def test_killed_training_worker_resumes_from_its_last_checkpoint(demo_features, tmp_path) -> None:
    from hummingml.train.config import from_preset
    from hummingml.train.data import DataConfig
    from hummingml.train.ray import fit

    data = DataConfig(features=str(demo_features), frames=64, timbre_min_frames=16, timbre_max_frames=32)
    cfg = from_preset("debug", name="killed", storage=str(tmp_path / "runs"), data=data, batch_size=4,
                      cpus_per_worker=0.5, steps=15, checkpoint_every=3, keep_checkpoints=10, max_failures=2)
    seen: dict[str, list[int]] = {"killed": [], "after": []}
    done = threading.Event()

    def workers() -> list:
        return processes(TRAIN_WORKER)

    def kill_a_worker_after_the_first_checkpoint() -> None:
        # once Ray Train has registered a checkpoint (its snapshot lists it): a worker that dies between a report and
        # its registration restarts from the checkpoint before
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not checkpoint_registered(tmp_path / "runs" / "killed", 3):
            time.sleep(0.1)
        for p in workers()[:1]:
            p.kill()
            seen["killed"].append(p.pid)
        while not done.is_set():  # a replacement worker starts
            seen["after"].extend(p.pid for p in workers() if p.pid not in seen["killed"])
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_a_worker_after_the_first_checkpoint)
    watcher.start()
    try:
        result = fit(cfg)
    finally:
        done.set()
        watcher.join()
    assert seen["killed"], "found a training worker to kill"
    assert seen["after"], "a new worker replaced the killed one"
    assert result.error is None
    # resumed from a checkpoint: every report step appears once (a restart from scratch would report 3 again)
    assert list(result.metrics_dataframe["step"]) == [3, 6, 9, 12, 15]


def test_error_rows_name_the_file_readably(hostile) -> None:
    _, _, out, _ = hostile
    errors = pads.dataset(out / "errors", format="parquet").to_table().to_pylist()
    assert all(e["message"] == printable(e["message"]) for e in errors)
    by_type = Counter(e["error_type"] for e in errors)
    assert "DecodeError:channels" not in by_type  # more than two channels are mixed down since schema 2.1
    assert "sample rate 0" in next(e["message"] for e in errors if e["error_type"] == "DecodeError:corrupt")


def test_hostile_multichannel_inputs_become_stereo_features_that_keep_their_channel_count(hostile) -> None:
    _, _, out, _ = hostile
    rows = pads.dataset(out / "audio-feature", format="parquet").to_table(
        columns=["source_uri", "source_channels", "downmix", "channel_codes"]
    ).to_pylist()
    got = {Path(r["source_uri"]).name: (r["source_channels"], r["downmix"], len(r["channel_codes"])) for r in rows}
    for name, channels, rule in [
        ("ch3.wav", 3, "itu-r-bs775-3.0"), ("ch4.wav", 4, "itu-r-bs775-quad"), ("ch6.wav", 6, "itu-r-bs775-5.1"),
        ("ch8.wav", 8, "itu-r-bs775-7.1"), ("ch16.wav", 16, "alternate-lr"), ("ch6.ogg", 6, "itu-r-bs775-5.1"),
        ("ch6-extensible.wav", 6, "itu-r-bs775-5.1"), ("mono.wav", 1, ""), ("s16.wav", 2, ""),
    ]:  # fmt: skip
        assert got[name] == (channels, rule, min(channels, 2)), name


def test_docs_list_every_hostile_kind_as_the_generator_states_it() -> None:
    from hummingml.testing.hostile import markdown_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    stale = "docs/reliability.md is stale: paste the output of python -m hummingml.testing.hostile"
    assert markdown_table() in doc, stale
