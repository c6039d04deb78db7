"""The training data path: the per-commit-batch join against the two sets read whole, superseded rows, dp shards,
the same rows through Ray Data, and a dp=2 run under Ray Train killed and resumed equal to a continuous one."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hummingml.extract.store import OutputStore
from hummingml.output import read_set
from hummingml.train.config import from_preset
from hummingml.train.data import AUDIO_COLUMNS, DataConfig, JoinedRows, join_batch, shard


def keys_of(rows) -> list[tuple[str, int]]:
    return [(r["source_id"], int(r["segment_index"])) for r in rows]


def recommit(features: Path, source_id: str, segment_index: int, bump: int) -> None:
    """Commit one existing row again in a new batch, its stem codes changed: the old row becomes superseded."""
    store = OutputStore(str(features))
    tables, rows = {}, []
    for name in ("audio-feature", "sine-audio-feature"):
        table = read_set(str(features), name)
        mask = [s == source_id and i == segment_index for s, i in zip(table["source_id"].to_pylist(),
                                                                      table["segment_index"].to_pylist(), strict=True)]
        table = table.filter(pa.array(mask))
        if name == "audio-feature":
            stems = ((np.asarray(table["stem_codes"][0].as_py()) + bump) % 1024).tolist()
            table = table.set_column(table.schema.get_field_index("stem_codes"), table.schema.field("stem_codes"),
                                     pa.array([stems], table.schema.field("stem_codes").type))
        tables[name] = table
    marker = json.loads(next((features / "_commits").glob("*.json")).read_text())
    version = next(r[4] for r in marker["rows"] if r[0] == source_id and r[1] == segment_index)
    n_segments = next(r[2] for r in marker["rows"] if r[0] == source_id and r[1] == segment_index)
    rows.append((source_id, segment_index, n_segments, True, version))
    store.commit(tables, rows, {"test": "recommit"})


def test_the_per_batch_join_gives_the_current_rows_of_both_sets_once(demo_features, tmp_path) -> None:
    features = tmp_path / "features"
    shutil.copytree(demo_features, features)
    before = list(JoinedRows(str(features)).iter_rows())
    source_id, segment_index = keys_of(before)[0]
    recommit(features, source_id, segment_index, bump=1)
    joined = JoinedRows(str(features))
    rows = list(joined.iter_rows())
    # every current key of both sets, once: the key sets of the sets read whole (superseded rows dropped), inner-joined
    audio = read_set(str(features), "audio-feature", ["source_id", "segment_index"])
    sine = read_set(str(features), "sine-audio-feature", ["source_id", "segment_index"])
    expected = set(zip(audio["source_id"].to_pylist(), audio["segment_index"].to_pylist(), strict=True)) & set(
        zip(sine["source_id"].to_pylist(), sine["segment_index"].to_pylist(), strict=True))
    assert sorted(keys_of(rows)) == sorted(expected) and len(rows) == len(before)
    assert keys_of(rows)[-1] == (source_id, segment_index)  # the newest commit's row comes last, in commit order
    old = np.asarray(before[0]["stem_codes"])
    new = np.asarray(rows[-1]["stem_codes"])
    assert new.shape == old.shape and np.array_equal(new, (old + 1) % 1024)  # the recommitted row, not the old one
    for row in rows:  # the audio-feature columns of a row are those of its set
        assert set(AUDIO_COLUMNS) <= set(row) and {"mono_codes", "melody"} <= set(row)
    assert keys_of(rows) == keys_of(JoinedRows(str(features)).iter_rows())  # the same order on every read


def test_dp_shards_are_disjoint_cover_every_row_and_differ_by_at_most_one(demo_features) -> None:
    joined = JoinedRows(str(demo_features))
    every = keys_of(joined.iter_rows())
    for count in (1, 2, 3):
        shards = [keys_of(joined.shard(i, count).iter_rows()) for i in range(count)]
        assert [k for s in shards for k in s] == every  # contiguous, in order, nothing twice
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # a batch cut by a boundary is read by both shards, each keeping its own keys
    batches = [dataclasses.replace(b, keys=b.keys * 3) for b in joined.batches]  # 3x the keys: cut inside a batch
    sizes = [sum(len(b.keys) for b in shard(batches, i, 4)) for i in range(4)]
    assert sum(sizes) == sum(len(b.keys) for b in batches) and max(sizes) - min(sizes) <= 1
    assert all(len(shard(batches, i, 4)) == 1 for i in range(4))  # the one batch, read by every shard


def test_ray_data_reads_the_same_rows_through_the_same_join(demo_features, ray_local) -> None:
    from hummingml.output import open_root
    from hummingml.train.ray import read_joined

    joined = JoinedRows(str(demo_features))
    local = list(joined.iter_rows())
    remote = list(read_joined(str(demo_features)).iter_rows())
    assert keys_of(remote) == keys_of(local)
    for a, b in zip(local, remote, strict=True):
        assert np.array_equal(np.asarray(a["mono_codes"]), np.asarray(b["mono_codes"]))
    fs, _ = open_root(str(demo_features))
    assert sum(join_batch(fs, b).num_rows for b in joined.batches) == len(local)


def test_a_dp2_run_killed_and_resumed_equals_a_continuous_one(demo_features, ray_local, tmp_path) -> None:
    """Real Ray Train, two workers, one row each: a worker fails after the step-2 checkpoint, Ray Train restarts both
    from it, and the run ends where a continuous one does (several epochs: each rank's shard makes two batches)."""
    from hummingml.train.ray import fit

    data = DataConfig(features=str(demo_features), frames=64, timbre_min_frames=16, timbre_max_frames=32)

    def config(name: str, **kw):
        cfg = from_preset("debug", name=name, storage=str(tmp_path / "runs"), data=data, batch_size=1, steps=5,
                          checkpoint_every=2, cpus_per_worker=0.5, **kw)
        return dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, dp=2))

    continuous = fit(config("continuous"))
    recovered = fit(config("recovered", fail_at_step=3, max_failures=1))
    assert continuous.error is None and recovered.error is None
    assert (tmp_path / "runs" / "recovered" / "injected-failure-at-step-3").exists()  # the failure fired
    assert recovered.metrics["step"] == continuous.metrics["step"] == 5
    for key in ("ar_loss", "nar_loss", "ar_acc"):
        assert recovered.metrics[key] == pytest.approx(continuous.metrics[key], rel=1e-4, abs=1e-5), key


def test_a_shuffled_epoch_reads_every_row_once_in_an_order_its_seed_fixes(demo_features, tmp_path) -> None:
    from hummingml.train.loop import epoch_order

    features = tmp_path / "features"
    shutil.copytree(demo_features, features)
    first = keys_of(JoinedRows(str(features)).iter_rows())
    recommit(features, *first[0], bump=2)  # one row again in a batch of its own: two commit batches to order
    joined = JoinedRows(str(features))
    assert len(joined.batches) == 2
    plain = keys_of(joined.iter_rows())
    orders = {tuple(keys_of(joined.iter_rows(epoch_order(0, epoch)))) for epoch in range(8)}
    assert all(sorted(order) == sorted(plain) for order in orders)  # every row once, whatever the order
    assert len(orders) > 1  # epochs differ
    again = keys_of(JoinedRows(str(features)).iter_rows(epoch_order(0, 3)))
    assert again == keys_of(joined.iter_rows(epoch_order(0, 3)))  # another reader, the same seed: the same order


def test_a_batch_whose_file_is_missing_is_reported_and_left_out(demo_features, tmp_path) -> None:
    import io

    from hummingml.train.data import commit_batches

    features = tmp_path / "features"
    shutil.copytree(demo_features, features)
    first = keys_of(JoinedRows(str(features)).iter_rows())
    recommit(features, *first[0], bump=3)  # a second batch
    batches = commit_batches(str(features))
    assert len(batches) == 2
    Path(batches[0].sine).unlink()  # the older batch's sine-audio-feature file is gone
    log = io.StringIO()
    left = commit_batches(str(features), log)
    assert [b.batch for b in left] == [batches[1].batch]
    assert "committed file is missing" in log.getvalue() and batches[0].sine in log.getvalue()
