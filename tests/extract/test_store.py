from __future__ import annotations

import io
import json
import os
import time

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from hummingml.config import ConfigError
from hummingml.extract.store import COMMITS, LEASE, STAGING, Lease, LeaseHeld, LeaseLost, OutputStore
from hummingml.output import QUARANTINE, read_set
from schemas.features import ERROR_SCHEMA, SCHEMA_VERSION


def error_table(*keys: tuple[str, int], message: str = "bad") -> pa.Table:
    rows = [
        {
            "source_id": s,
            "segment_index": i,
            "source_uri": f"/x/{s}.wav",
            "source_version": "1:1",
            "stage": "decode",
            "error_type": "DecodeError:corrupt",
            "message": message,
        }
        for s, i in keys
    ]
    return pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)


def test_commit_makes_rows_visible_with_schema_metadata(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit(
        {"errors": error_table(("a", -1), ("b", -1))}, [("a", -1, -1, False, "1:1"), ("b", -1, -1, False, "1:1")],
        {"models": []},
    )
    table = pads.dataset(store.dataset_path("errors")).to_table()
    assert sorted(table["source_id"].to_pylist()) == ["a", "b"]
    meta = pq.read_schema(next((tmp_path / "errors").glob("*.parquet"))).metadata
    assert meta[b"hummingml.schema_version"].decode() == SCHEMA_VERSION
    assert json.loads(meta[b"hummingml.run"]) == {"models": []}
    assert list((tmp_path / STAGING).glob("*")) == []  # staging emptied once the batch is in place
    progress = store.progress()
    assert progress["a"].complete and progress["a"].failed


def test_partial_source_is_not_complete(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit({}, [("a", 0, 3, True, "v1"), ("a", 1, 3, True, "v1")], {})
    assert not store.progress()["a"].complete
    store.commit({}, [("a", 2, 3, True, "v1")], {})
    p = store.progress()["a"]
    assert p.complete and not p.failed and p.ok_segments == {0, 1, 2}


def test_recover_drops_uncommitted_staging(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    staged = tmp_path / STAGING / "deadbeef-00000000"
    staged.mkdir(parents=True)
    pq.write_table(error_table(("x", -1)), staged / "errors.parquet")
    (tmp_path / COMMITS).mkdir()
    (tmp_path / COMMITS / "zzz.json.tmp-1234").write_text("{")  # a marker that never got renamed
    assert store.recover() == 1
    assert not staged.exists()
    assert not list((tmp_path / COMMITS).iterdir())
    assert store.progress() == {}


def test_recover_rolls_a_committed_batch_forward(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    batch = "cafe-0001"
    staged = tmp_path / STAGING / batch
    staged.mkdir(parents=True)
    pq.write_table(error_table(("x", -1)), staged / "errors.parquet")
    (tmp_path / COMMITS).mkdir()
    marker = {
        "batch": batch,
        "files": {f"{STAGING}/{batch}/errors.parquet": f"errors/part-{batch}.parquet"},
        "rows": [["x", -1, -1, False]],
    }
    (tmp_path / COMMITS / f"{batch}.json").write_text(json.dumps(marker))  # crashed right after the commit point
    store.recover()
    assert (tmp_path / "errors" / f"part-{batch}.parquet").exists()
    assert not staged.exists()
    store.recover()  # idempotent
    assert pads.dataset(store.dataset_path("errors")).to_table().num_rows == 1


def test_committing_the_same_rows_again_rewrites_one_batch(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    rows = [("a", -1, -1, False, "1:1")]
    first = store.commit({"errors": error_table(("a", -1))}, rows, {})
    again = store.commit({"errors": error_table(("a", -1))}, rows, {})
    assert first == again
    assert len(list((tmp_path / COMMITS).glob("*.json"))) == 1
    assert pads.dataset(tmp_path / "errors").to_table().num_rows == 1


def test_the_newest_commit_of_a_key_wins_also_in_markers_written_before(tmp_path) -> None:
    """Two older-format markers (four-field rows, no commit time) hold the same key: readers see it once."""
    (tmp_path / COMMITS).mkdir()
    (tmp_path / "errors").mkdir()
    for n, batch in enumerate(["b1-0001", "b2-0002"]):
        pq.write_table(error_table(("x", -1), message=f"run {n}"), tmp_path / "errors" / f"part-{batch}.parquet")
        marker = {"batch": batch, "files": {f"{STAGING}/{batch}/errors.parquet": f"errors/part-{batch}.parquet"},
                  "rows": [["x", -1, -1, False]]}
        path = tmp_path / COMMITS / f"{batch}.json"
        path.write_text(json.dumps(marker))
        os.utime(path, ns=(10**18 + n, 10**18 + n))
    table = read_set(str(tmp_path), "errors")
    assert table.num_rows == 1 and table["message"].to_pylist() == ["run 1"]
    assert OutputStore(str(tmp_path)).current().superseded_rows == 1


def test_a_new_version_of_a_source_supersedes_every_older_row(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit({"errors": error_table(("a", 0), ("a", 1), ("a", 2))},
                 [("a", 0, 3, False, "v1"), ("a", 1, 3, False, "v1"), ("a", 2, 3, False, "v1")], {})
    store.commit({"errors": error_table(("a", 0), message="new")}, [("a", 0, 1, False, "v2")], {})
    p = store.progress()["a"]
    assert (p.version, p.n_segments, p.error_segments, p.complete) == ("v2", 1, {0}, True)
    table = read_set(str(tmp_path), "errors")
    assert table["message"].to_pylist() == ["new"]


def test_a_whole_source_error_is_superseded_by_a_newer_row_of_the_source(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit({"errors": error_table(("a", -1))}, [("a", -1, -1, False, "v1")], {})
    store.commit({}, [("a", 0, 1, True, "v1")], {})
    p = store.progress()["a"]
    assert (p.ok_segments, p.error_segments, p.failed) == ({0}, set(), False)
    assert read_set(str(tmp_path), "errors").num_rows == 0


def test_an_empty_marker_is_quarantined_and_its_batch_counts_as_uncommitted(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit({"errors": error_table(("a", -1))}, [("a", -1, -1, False, "v1")], {})
    marker = next((tmp_path / COMMITS).glob("*.json"))
    marker.write_bytes(b"")  # what a power loss can leave
    log = io.StringIO()
    store = OutputStore(str(tmp_path), log=log)
    store.recover()
    assert "damaged commit marker" in log.getvalue()
    assert (tmp_path / COMMITS / QUARANTINE / marker.name).exists()
    assert store.progress() == {}
    assert read_set(str(tmp_path), "errors", log=None) is None  # its visible file is named by no marker


def test_a_second_lease_is_refused_naming_the_holder(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    lease = Lease.acquire(store, timeout_s=60, ray_job="raysubmit_1")
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()} \\(Ray job raysubmit_1\\)"):
        Lease.acquire(OutputStore(str(tmp_path)), timeout_s=60)
    lease.release()
    assert not (tmp_path / LEASE).exists()
    Lease.acquire(store, timeout_s=60).release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_can_no_longer_commit(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    old = Lease.acquire(store, timeout_s=60)
    past = time.time() - 61
    os.utime(tmp_path / LEASE, (past, past))  # the holder stopped renewing a minute ago
    new = Lease.acquire(OutputStore(str(tmp_path)), timeout_s=60)
    with pytest.raises(LeaseLost, match="is now held by host"):
        store.commit({"errors": error_table(("a", -1))}, [("a", -1, -1, False, "v1")], {}, lease=old.token)
    assert not list((tmp_path / COMMITS).glob("*.json"))
    old.renew()
    assert old.lost
    store.commit({"errors": error_table(("a", -1))}, [("a", -1, -1, False, "v1")], {}, lease=new.token)
    assert store.progress()["a"].complete


def test_a_config_change_is_refused_with_the_differences_named(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    assert store.check_record({"segment_s": 30.0}, allow_change=False) == []
    assert store.check_record({"segment_s": 30.0}, allow_change=False) == []
    with pytest.raises(ConfigError, match=r"segment_s: 30\.0 -> 10\.0"):
        store.check_record({"segment_s": 10.0}, allow_change=False)
    assert store.check_record({"segment_s": 10.0}, allow_change=True) == ["segment_s: 30.0 -> 10.0"]
    assert store.check_record({"segment_s": 10.0}, allow_change=False) == []


def test_a_late_renewal_of_a_taken_over_lease_does_not_bring_it_back(tmp_path) -> None:
    old = Lease.acquire(OutputStore(str(tmp_path)), timeout_s=60)
    past = time.time() - 61
    os.utime(tmp_path / LEASE, (past, past))
    new = Lease.acquire(OutputStore(str(tmp_path)), timeout_s=60)
    old.renew()
    assert old.lost and json.loads((tmp_path / LEASE).read_text())["token"] == new.token
    old.release()  # not its record: left in place
    assert json.loads((tmp_path / LEASE).read_text())["token"] == new.token
    with pytest.raises(LeaseHeld, match="renewed 0 s ago"):
        Lease.acquire(OutputStore(str(tmp_path)), timeout_s=60)


def test_the_lease_of_a_process_that_is_gone_from_this_host_is_taken_over_at_once(tmp_path) -> None:
    import subprocess
    import sys

    code = "from hummingml.extract.store import Lease, OutputStore; Lease.acquire(OutputStore(%r), timeout_s=600)"
    subprocess.run([sys.executable, "-c", code % str(tmp_path)], check=True)  # exits holding the lease
    assert (tmp_path / LEASE).exists()
    Lease.acquire(OutputStore(str(tmp_path)), timeout_s=600).release()


def test_a_marker_whose_files_exist_nowhere_is_quarantined_and_its_batch_redone(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit({"errors": error_table(("a", -1))}, [("a", -1, -1, False, "v1")], {})
    next((tmp_path / "errors").glob("*.parquet")).unlink()  # e.g. staging deleted under a paused writer
    log = io.StringIO()
    OutputStore(str(tmp_path), log=log).recover()
    assert "names files that exist nowhere" in log.getvalue()
    assert OutputStore(str(tmp_path)).progress() == {}


def test_readers_read_a_committed_batch_that_was_not_moved_yet_from_staging(tmp_path) -> None:
    store = OutputStore(str(tmp_path))

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop  # the writer stops between its marker and its moves

    with pytest.raises(Stop):
        store.commit({"errors": error_table(("a", -1))}, [("a", -1, -1, False, "v1")], {}, after_marker=stop)
    assert not (tmp_path / "errors").exists()
    assert read_set(str(tmp_path), "errors")["source_id"].to_pylist() == ["a"]
    store.finish_committed()
    assert len(list((tmp_path / "errors").glob("*.parquet"))) == 1 and not any((tmp_path / STAGING).iterdir())


def test_a_held_lease_is_seen_without_creating_anything(tmp_path) -> None:
    Lease.refuse_if_held(str(tmp_path / "nothing-here"), timeout_s=60)
    assert not (tmp_path / "nothing-here").exists()
    lease = Lease.acquire(OutputStore(str(tmp_path / "out")), timeout_s=60)
    with pytest.raises(LeaseHeld, match="being written by another driver"):
        Lease.refuse_if_held(str(tmp_path / "out"), timeout_s=60)
    lease.release()
    Lease.refuse_if_held(str(tmp_path / "out"), timeout_s=60)


def _commit_many(root: str, first: int, count: int) -> None:
    store = OutputStore(root)
    for i in range(first, first + count):
        store.commit({"errors": error_table((f"s{i}", -1))}, [(f"s{i}", -1, -1, False, "v1")], {})


def test_several_writers_commit_at_once_without_a_conflict_or_a_lost_row(tmp_path) -> None:
    """Two processes commit 30 batches each at the same time; 10 of them are the same rows in both."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_commit_many, args=(str(tmp_path), first, 30)) for first in (0, 20)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    assert set(OutputStore(str(tmp_path)).progress()) == {f"s{i}" for i in range(50)}
    assert sorted(read_set(str(tmp_path), "errors")["source_id"].to_pylist()) == sorted(f"s{i}" for i in range(50))
    assert len(list((tmp_path / COMMITS).glob("*.json"))) == 50  # a batch both wrote is one batch
    assert not any((tmp_path / STAGING).glob("*"))
