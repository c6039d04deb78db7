"""The rolled-up commit log: the same output read through JSON markers and through the log, a roll-up stopped at
any point, merges, and readers racing roll-ups."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq

from hummingml.extract.store import COMMITS, STAGING, OutputStore
from hummingml.output import LOG, current_view, read_markers, read_set
from schemas.commit_log import COMMIT_LOG_SCHEMA
from tests.extract.test_store import error_table


def commit(store: OutputStore, source: str, version: str = "1:1", segments: int = 2) -> None:
    table = error_table(*[(source, i) for i in range(segments)])
    store.commit({"errors": table}, [(source, i, segments, False, version) for i in range(segments)], {})


def log_rows(root: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (root / COMMITS / LOG).glob("*.parquet"))


def test_the_log_reads_as_the_markers_did(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    for n in range(40):
        commit(store, f"s{n % 30}", version="1:1" if n < 30 else "2:2")  # ten sources processed again
    before, view_before = read_markers(store.fs, store.root)[0], store.current()
    rows_before = read_set(str(tmp_path), "errors").sort_by("source_id")
    assert store.roll_up(min_markers=1) == 40
    assert not list((tmp_path / COMMITS).glob("*.json")) and log_rows(tmp_path) == 40
    after, view_after = read_markers(store.fs, store.root)[0], store.current()
    assert [(m.batch, m.time_ns, m.files, m.rows, m.lease, m.writer) for m in after] == [
        (m.batch, m.time_ns, m.files, m.rows, m.lease, m.writer) for m in before
    ]
    assert view_after.sources == view_before.sources and view_after.superseded == view_before.superseded
    assert view_after.superseded_rows == 20
    assert read_set(str(tmp_path), "errors").sort_by("source_id").equals(rows_before)
    schema = pq.read_schema(next((tmp_path / COMMITS / LOG).glob("*.parquet")))
    assert schema.remove_metadata().equals(COMMIT_LOG_SCHEMA.remove_metadata())


def test_fewer_markers_than_the_minimum_are_left_as_they_are(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    commit(store, "a")
    assert store.roll_up(min_markers=2) == 0 and not (tmp_path / COMMITS / LOG).exists()


def test_a_roll_up_stopped_before_its_deletes_counts_each_batch_once(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    for n in range(5):
        commit(store, f"s{n}")
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / COMMITS, saved, ignore=shutil.ignore_patterns(LOG))
    assert store.roll_up(min_markers=1) == 5
    for marker in saved.glob("*.json"):  # as if the process stopped right after renaming the log file
        shutil.copy(marker, tmp_path / COMMITS / marker.name)
    markers = read_markers(store.fs, store.root)[0]
    assert len(markers) == 5 and len({m.batch for m in markers}) == 5
    assert store.roll_up(min_markers=1) == 5  # deletes the JSON copies, writes nothing new
    assert not list((tmp_path / COMMITS).glob("*.json")) and log_rows(tmp_path) == 5
    assert len(read_markers(store.fs, store.root)[0]) == 5


def test_a_temporary_log_file_of_a_stopped_roll_up_is_dropped_by_recover(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    commit(store, "a")
    (tmp_path / COMMITS / LOG).mkdir(parents=True)
    (tmp_path / COMMITS / LOG / "1-abc.parquet.tmp-1234").write_bytes(b"PAR1")
    store.recover()
    assert not list((tmp_path / COMMITS / LOG).iterdir()) and len(store.markers()) == 1


def test_log_files_are_merged_past_the_maximum(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    for n in range(6):
        commit(store, f"s{n}")
        store.roll_up(min_markers=1, max_files=3)
        assert len(list((tmp_path / COMMITS / LOG).glob("*.parquet"))) <= 3
    assert log_rows(tmp_path) == 6 and len(store.current().sources) == 6


def test_a_batch_whose_moves_are_unfinished_stays_a_json_marker(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    commit(store, "a")
    stopped: list[str] = []
    store._finish = lambda marker: stopped.append(marker.batch) or True  # type: ignore[method-assign]
    commit(store, "b")  # its writer stops between the marker and the moves
    assert list((tmp_path / STAGING).iterdir())
    assert OutputStore(str(tmp_path), log=None).roll_up(min_markers=1) == 1
    assert [p.stem for p in (tmp_path / COMMITS).glob("*.json")] == stopped
    fresh = OutputStore(str(tmp_path), log=None)
    fresh.recover()
    assert fresh.roll_up(min_markers=1) == 1 and log_rows(tmp_path) == 2
    assert len(read_set(str(tmp_path), "errors")) == 4


def test_readers_racing_roll_ups_never_miss_a_committed_batch(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path), log=None)
    committed = [0]
    done = threading.Event()
    problems: list[str] = []

    def write() -> None:
        for n in range(60):
            commit(store, f"s{n}", segments=1)
            committed[0] += 1
        done.set()

    def roll() -> None:
        roller = OutputStore(str(tmp_path), log=None)
        while not done.is_set():
            roller.roll_up(min_markers=1, max_files=2)

    threads = [threading.Thread(target=write), threading.Thread(target=roll)]
    for t in threads:
        t.start()
    reads = 0
    while not done.is_set() or reads < 5:
        floor = committed[0]
        markers = read_markers(store.fs, store.root, log=None)[0]
        batches = [m.batch for m in markers]
        if len(batches) < floor or len(set(batches)) != len(batches):
            problems.append(f"read {len(batches)} markers ({len(set(batches))} distinct) after {floor} commits")
        reads += 1
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert reads >= 5 and len(current_view(read_markers(store.fs, store.root)[0]).sources) == 60
