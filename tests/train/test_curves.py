"""Training curves: reports written as TensorBoard event files and read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from hummingml.train.curves import Curves, curves_dir, tag


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_reports_become_scalars_at_their_step(tmp_path: Path) -> None:
    reports = [{"step": 20, "ar_loss": 5.0, "nar_loss": 6.0, "nar_level1_acc": 0.1, "tokens_per_s": 100.0},
               {"step": 40, "ar_loss": 4.0, "nar_loss": 5.5, "nar_level1_acc": 0.2, "tokens_per_s": 110.0}]  # fmt: skip
    with Curves(str(tmp_path)) as curves:
        for report in reports:
            curves.add(report)
    scalars = _scalars(tmp_path)
    assert set(scalars) == {"ar/ar_loss", "nar/nar_loss", "nar_levels/nar_level1_acc", "run/tokens_per_s"}
    assert scalars["ar/ar_loss"] == [(20, 5.0), (40, 4.0)]
    assert [s for s, _ in scalars["run/tokens_per_s"]] == [20, 40]


def test_a_resumed_run_continues_the_same_curves(tmp_path: Path) -> None:
    with Curves(str(tmp_path)) as curves:
        curves.add({"step": 10, "ar_loss": 3.0})
    with Curves(str(tmp_path)) as curves:  # a second writer: a new event file in the same directory
        curves.add({"step": 20, "ar_loss": 2.0})
    assert _scalars(tmp_path)["ar/ar_loss"] == [(10, 3.0), (20, 2.0)]


def test_tags_and_where_curves_go(tmp_path: Path) -> None:
    assert tag("ar_top10_acc") == "ar/ar_top10_acc" and tag("lr") == "run/lr" and tag("nar_acc") == "nar/nar_acc"
    assert curves_dir(str(tmp_path), "run1") == str(tmp_path / "run1" / "tensorboard")
    assert curves_dir("s3://bucket/runs", "run1") is None


def test_a_training_run_writes_its_reports_as_curves(trained_run) -> None:
    from hummingml.train.checkpoint import read_history, resolve_checkpoint

    run_dir, last = trained_run("debug")
    history = read_history(resolve_checkpoint(run_dir))
    assert history[-1]["ar_loss"] == last["ar_loss"]
    scalars = _scalars(run_dir / "tensorboard")
    steps, values = zip(*scalars["ar/ar_loss"], strict=True)
    assert list(steps) == [int(h["step"]) for h in history]
    assert list(values) == pytest.approx([h["ar_loss"] for h in history], rel=1e-6)  # TensorBoard keeps float32
    assert {"nar/nar_loss", "run/tokens_per_s", "run/lr"} <= set(scalars)
