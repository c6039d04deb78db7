"""Ray Train on the extraction's shards: learning, fault recovery equal to continuous training, resume by name."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hummingml.data import DataConfig
from hummingml.train import fit, from_preset

pytestmark = pytest.mark.slow


def config(features, tmp_path, name: str, **kw):
    data = DataConfig(features=str(features), frames=64, timbre_min_frames=16, timbre_max_frames=32)
    return from_preset(
        "debug", name=name, storage=str(tmp_path / "runs"), data=data, batch_size=4, cpus_per_worker=0.5, **kw
    )


def test_debug_model_learns_from_the_extraction_shards(demo_features, tmp_path) -> None:
    result = fit(config(demo_features, tmp_path, "learn", steps=30, checkpoint_every=5))
    assert result.error is None
    history = result.metrics_dataframe
    first, last = history.iloc[0], history.iloc[-1]
    assert last["step"] == 30
    initial = math.log(1024)  # cross-entropy of an untrained model over 1024 codes
    assert last["ar_loss"] < 0.25 * initial and last["ar_loss"] < first["ar_loss"]
    assert last["nar_loss"] < 0.5 * initial and last["nar_loss"] < first["nar_loss"]
    assert 0 <= last["ar_top10_acc"] <= 1 and last["tokens_per_s"] > 0
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
