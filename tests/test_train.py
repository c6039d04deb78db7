"""Ray Train on the extraction's shards: learning, fault recovery equal to continuous training, resume by name."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hummingml.train.config import from_preset
from hummingml.train.data import DataConfig
from hummingml.train.ray import fit

pytestmark = pytest.mark.slow


def config(features, tmp_path, name: str, **kw):
    data = DataConfig(features=str(features), frames=64, timbre_min_frames=16, timbre_max_frames=32)
    return from_preset(
        "debug", name=name, storage=str(tmp_path / "runs"), data=data, batch_size=4, cpus_per_worker=0.5, **kw
    )


def test_debug_model_learns_from_the_extraction_shards(demo_features, tmp_path) -> None:
    # Ray Train's metrics history holds the reports of the kept checkpoints only: keep all six
    result = fit(config(demo_features, tmp_path, "learn", steps=30, checkpoint_every=5, keep_checkpoints=6))
    assert result.error is None
    history = result.metrics_dataframe
    first, last = history.iloc[0], history.iloc[-1]
    assert first["step"] == 5 and last["step"] == 30  # the first report averages steps 1..5, from the untrained model
    initial = math.log(1024)  # cross-entropy of an untrained model over 1024 codes
    assert last["ar_loss"] < 0.25 * initial and last["ar_loss"] < first["ar_loss"]
    assert last["nar_loss"] < 0.5 * initial and last["nar_loss"] < first["nar_loss"]
    assert 0 <= last["ar_top10_acc"] <= 1 and last["tokens_per_s"] > 0
    for level in (1, 2, 3):  # the debug preset has 4 codebooks: the NAR predicts levels 1..3
        assert 0 <= last[f"nar_level{level}_acc"] <= last[f"nar_level{level}_top10_acc"] <= 1
    assert result.checkpoint is not None


def test_recovery_from_a_worker_failure_equals_continuous_training(demo_features, tmp_path) -> None:
    continuous = fit(config(demo_features, tmp_path, "continuous", steps=8, checkpoint_every=4))
    recovered = fit(config(demo_features, tmp_path, "recovered", steps=8, checkpoint_every=4, fail_at_step=6))
    assert continuous.error is None and recovered.error is None
    for key in ("ar_loss", "nar_loss", "ar_acc"):
        assert recovered.metrics[key] == pytest.approx(continuous.metrics[key], rel=1e-4, abs=1e-5), key
    assert recovered.metrics["step"] == 8


def test_rerun_with_the_same_name_resumes(demo_features, tmp_path) -> None:
    cfg = config(demo_features, tmp_path, "resume", steps=4, checkpoint_every=2)
    fit(cfg)
    again = fit(dataclasses.replace(cfg, steps=6))
    assert again.error is None
    steps = list(again.metrics_dataframe["step"])
    assert min(steps) >= 4 and steps[-1] == 6  # continued after step 4: a fresh start would report step 2


def test_neuron_backend_asks_ray_train_for_neuron_cores_over_xla(monkeypatch, tmp_path) -> None:
    import ray.train.torch

    import hummingml.train.data
    import hummingml.train.loop

    captured = {}

    class FakeTrainer:
        def __init__(self, loop, **kwargs):
            captured.update(kwargs, loop=loop)

        def fit(self):
            return "result"

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    monkeypatch.setattr(hummingml.train.data, "read_joined", lambda features: "joined")
    cfg = from_preset("debug", storage=str(tmp_path), cache_dataset=False)
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend="neuron", tp=2, dp=2))
    assert hummingml.train.ray.fit(cfg) == "result"
    assert type(captured["torch_config"]).__name__ == "TorchXLAConfig"
    scaling = captured["scaling_config"]
    assert scaling.num_workers == 4 and scaling.resources_per_worker == {"neuron_cores": 1}
    assert captured["loop"] is hummingml.train.loop.train_loop_per_worker
    with hummingml.train.loop._checkpoint_dir(cfg, 7) as directory:
        assert directory.startswith(str(tmp_path))  # NxD writes from every rank: a shared path, not a private tmp
