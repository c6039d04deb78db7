"""The training loop on the extraction's shards, without Ray: learning, resume after a failure equal to continuous
training, resume of a rerun; and the Ray Train adapter's placement for Trainium."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from hummingml.train.checkpoint import load_checkpoint, read_position, resolve_checkpoint
from hummingml.train.config import TrainConfig, from_preset
from hummingml.train.data import DataConfig, JoinedRows
from hummingml.train.loop import Batches, DirectoryReporter, loop, prefetch
from hummingml.train.parallel.torch import local_process_group


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The debug model is tiny: one intra-op thread is fastest on a shared 2-core machine."""


def config(features: Path, tmp_path: Path, name: str, **kw) -> TrainConfig:
    data = DataConfig(features=str(features), frames=64, timbre_min_frames=16, timbre_max_frames=32)
    return from_preset("debug", name=name, storage=str(tmp_path / "runs"), data=data, batch_size=4, **kw)


def run(cfg: TrainConfig) -> DirectoryReporter:
    """The loop in this process, checkpoints under ``<storage>/<name>``, as a rerun of the same run would find them."""
    reporter = DirectoryReporter(Path(cfg.storage) / cfg.name, keep=cfg.keep_checkpoints)
    with local_process_group():
        loop(cfg, JoinedRows(cfg.data.features), reporter)
    return reporter


def test_debug_model_learns_from_the_extraction_shards(demo_features, tmp_path) -> None:
    cfg = config(demo_features, tmp_path, "learn", steps=30, checkpoint_every=5)
    history = run(cfg).history
    first, last = history[0], history[-1]
    assert [r["step"] for r in history] == [5, 10, 15, 20, 25, 30]  # the first averages steps 1..5, untrained
    initial = math.log(1024)  # cross-entropy of an untrained model over 1024 codes
    assert last["ar_loss"] < 0.25 * initial and last["ar_loss"] < first["ar_loss"]
    assert last["nar_loss"] < 0.5 * initial and last["nar_loss"] < first["nar_loss"]
    assert 0 <= last["ar_top10_acc"] <= 1 and last["tokens_per_s"] > 0
    for level in (1, 2, 3):  # the debug preset has 4 codebooks: the NAR predicts levels 1..3
        assert 0 <= last[f"nar_level{level}_acc"] <= last[f"nar_level{level}_top10_acc"] <= 1
    newest = resolve_checkpoint(Path(cfg.storage) / cfg.name)
    assert read_position(newest).step == 30
    stored, ar, nar = load_checkpoint(newest)  # the round trip: the stored config rebuilds both models
    assert stored == cfg and not ar.training and not nar.training


def test_resume_after_a_failure_equals_continuous_training(demo_features, tmp_path) -> None:
    continuous = run(config(demo_features, tmp_path, "continuous", steps=8, checkpoint_every=4)).history
    failing = config(demo_features, tmp_path, "recovered", steps=8, checkpoint_every=4, fail_at_step=6)
    with pytest.raises(RuntimeError, match="injected failure at step 6"):
        run(failing)
    recovered = run(failing).history  # resumes from the step-4 checkpoint; the failure fires once per run
    assert [r["step"] for r in recovered] == [8]
    for key in ("ar_loss", "nar_loss", "ar_acc"):
        assert recovered[-1][key] == pytest.approx(continuous[-1][key], rel=1e-4, abs=1e-5), key


def test_rerun_with_the_same_name_resumes(demo_features, tmp_path) -> None:
    cfg = config(demo_features, tmp_path, "resume", steps=4, checkpoint_every=2)
    assert [r["step"] for r in run(cfg).history] == [2, 4]
    again = run(dataclasses.replace(cfg, steps=6)).history
    assert [r["step"] for r in again] == [6]  # continued after step 4: a fresh start would report step 2


def test_each_dp_shard_resumes_at_the_batches_a_continuous_epoch_yields(demo_features, tmp_path) -> None:
    cfg = dataclasses.replace(config(demo_features, tmp_path, "shards"), batch_size=1)
    joined = JoinedRows(cfg.data.features)
    for rank in range(2):
        batches = Batches(joined.shard(rank, 2), cfg)
        whole = list(batches.epoch(1))
        assert [i for i, _ in whole] == list(range(len(whole))) and whole
        for skip in range(len(whole) + 1):
            resumed = list(batches.epoch(1, skip=skip))
            assert [i for i, _ in resumed] == [i for i, _ in whole[skip:]]
            for (_, a), (_, b) in zip(resumed, whole[skip:], strict=True):
                assert all(torch.equal(a[k], b[k]) for k in a)


def test_prefetch_keeps_the_order_and_raises_where_the_items_failed() -> None:
    def items():
        yield from range(5)
        raise ValueError("bad row")

    out = []
    with pytest.raises(ValueError, match="bad row"):
        for item in prefetch(items(), depth=2):
            out.append(item)
    assert out == [0, 1, 2, 3, 4]
    assert list(prefetch(iter(range(10)), depth=0)) == list(range(10))
    ahead = prefetch(iter(range(100)), depth=3)
    assert next(ahead) == 0
    ahead.close()  # stops the thread


def test_neuron_backend_asks_ray_train_for_neuron_cores_over_xla(monkeypatch, demo_features, tmp_path) -> None:
    import hummingml.train.ray as train_ray

    captured = {}

    class FakeTrainer:
        def __init__(self, loop, **kwargs):
            captured.update(kwargs, loop=loop)

        def fit(self):
            return "result"

    monkeypatch.setattr(train_ray, "TorchTrainer", FakeTrainer)
    monkeypatch.setattr(train_ray, "connect", lambda: None)
    cfg = from_preset("debug", storage=str(tmp_path), data=DataConfig(features=str(demo_features)))
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend="neuron", tp=2, dp=2))
    assert train_ray.fit(cfg) == "result"
    assert type(captured["torch_config"]).__name__ == "TorchXLAConfig"
    scaling = captured["scaling_config"]
    assert scaling.num_workers == 4 and scaling.resources_per_worker == {"neuron_cores": 1}
    assert captured["loop"] is train_ray.train_loop_per_worker
    plan = train_ray.ray.get(captured["train_loop_config"]["commit_batches"])  # the workers' plan, by reference
    assert [b.batch for b in plan] == [b.batch for b in JoinedRows(str(demo_features)).batches]
    with train_ray.RayReporter(cfg, rank=0).checkpoint_dir(7) as directory:
        assert directory.startswith(str(tmp_path))  # NxD writes from every rank: a shared path, not a private tmp
