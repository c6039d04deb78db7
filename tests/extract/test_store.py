from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from hummingml.extract.store import COMMITS, STAGING, OutputStore
from schemas.features import ERROR_SCHEMA, SCHEMA_VERSION


def error_table(*keys: tuple[str, int]) -> pa.Table:
    rows = [
        {
            "source_id": s,
            "segment_index": i,
            "source_uri": f"/x/{s}.wav",
            "stage": "decode",
            "error_type": "DecodeError:corrupt",
            "message": "bad",
        }
        for s, i in keys
    ]
    return pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)


def test_commit_makes_rows_visible_with_schema_metadata(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    store.commit(
        {"errors": error_table(("a", -1), ("b", -1))}, [("a", -1, -1, False), ("b", -1, -1, False)], {"models": []}
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
    store.commit({}, [("a", 0, 3, True), ("a", 1, 3, True)], {})
    assert not store.progress()["a"].complete
    store.commit({}, [("a", 2, 3, True)], {})
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
