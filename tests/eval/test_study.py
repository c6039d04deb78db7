"""The study: three models trained with Ray Train on the same features, evaluated on seen and unseen instruments and
per mode, results written as JSON, markdown and PNG."""

from __future__ import annotations

import json

import pytest

from hummingml.config import ConfigError
from hummingml.eval.config import StudyConfig
from hummingml.eval.study import choose_holdout, compare

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_holdout_takes_one_instrument_per_part_that_has_two() -> None:
    assert choose_holdout({"vocals": {"voice-ah", "voice-oo"}, "lead": {"flute"}}) == ("voice-oo",)
    with pytest.raises(ConfigError, match="--holdout-instruments"):
        choose_holdout({"vocals": {"voice-ah"}, "lead": set()})


def test_comparisons_are_differences_of_the_rows() -> None:
    def row(name: str, split: str, full: float, modes: dict[str, float]) -> dict:
        def metrics(v: float) -> dict:
            return {"si_sdr_db": {"full": {"median": v}}}

        return {"run_name": name, "split": split, **metrics(full), "by_mode": {m: metrics(v) for m, v in modes.items()},
                "by_instrument": {("flute" if split == "unseen" else "organ"): metrics(full)}}  # fmt: skip

    rows = [row("hummingml", "train", -2.0, {"aeolian": -1.0, "dorian": -3.0}), row("valle", "train", -4.0, {}),
            row("hummingml_no_aug", "train", -5.0, {}), row("hummingml", "unseen", -3.0, {})]  # fmt: skip
    c = compare(rows)
    vs_valle = c["pairs"]["HummingLM vs VALL-E"]["train"]
    assert vs_valle["delta_db"] == 2.0 and vs_valle["relative_pct"] == 50.0  # -2 dB against -4 dB
    assert c["pairs"]["augmentation"]["train"]["delta_db"] == 3.0
    assert c["pairs"]["HummingLM vs VALL-E"]["unseen"]["delta_db"] is None  # no VALL-E row on unseen
    assert c["unseen_vs_seen"]["hummingml"]["delta_db"] == -1.0
    assert c["hummingml_best_mode"]["train"] == ["aeolian"]
    tied = compare([row("hummingml", "train", 0.0, {"aeolian": 60.0, "dorian": 60.0, "ionian": 1.0})])
    assert tied["hummingml_best_mode"]["train"] == ["aeolian", "dorian"]
    assert c["by_instrument"]["flute"] == {"split": "unseen", "hummingml": -3.0}
    assert c["by_instrument"]["organ"] == {"split": "train", "hummingml": -2.0, "valle": -4.0, "hummingml_no_aug": -5.0}


def test_study_flags_are_checked() -> None:
    problems = StudyConfig(features="", steps=0, preset="valle_debug", parts=("flute",)).problems()
    assert any("--features" in p for p in problems) and any("--steps" in p for p in problems)
    assert any("--preset" in p for p in problems) and any("--parts" in p for p in problems)


@pytest.mark.slow
def test_study_trains_three_models_and_compares_them_seen_unseen_and_per_mode(
    demo_features, tmp_path, capsys
) -> None:
    from ray_jobs.study import main

    manifest_file = demo_features.parent / "corpus" / "manifest.jsonl"
    manifest = [json.loads(line) for line in manifest_file.read_text().splitlines()]
    held_out = manifest[0]["instruments"]["vocals"]
    modes = {song["mode"] for song in manifest}
    out = tmp_path / "study"
    argv = [
        "--features", str(demo_features), "--out", str(out), "--steps", "4", "--checkpoint-every", "2",
        "--batch-size", "2", "--max-examples", "6", "--holdout-instruments", held_out,
        "--timbre-min-frames", "16", "--timbre-max-frames", "32",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["holdout_instruments"] == [held_out]
    assert set(results["runs"]) == {"hummingml", "valle", "hummingml_no_aug"}
    for run in results["runs"].values():
        assert [h["step"] for h in run["history"]] == [2, 4]  # the loss curve: one point per report
        assert all(h["ar_loss"] > 0 and h["nar_loss"] > 0 for h in run["history"])
    rows = results["evaluation"]["rows"]
    assert [(r["run_name"], r["split"]) for r in rows] == [
        (name, split) for name in ("hummingml", "valle", "hummingml_no_aug") for split in ("train", "unseen")
    ]
    assert [r["layout"] for r in rows[::2]] == ["humming", "valle", "humming"]
    assert [r["trained_with_augmentation"] for r in rows[::2]] == [True, True, False]
    for r in rows:
        assert r["n_examples"] > 0 and r["holdout_instruments"] == [held_out]
        assert set(r["by_mode"]) <= modes and sum(m["n_examples"] for m in r["by_mode"].values()) == r["n_examples"]
    by = {(r["run_name"], r["split"]): r["si_sdr_db"]["full"]["median"] for r in rows}
    pair = results["comparisons"]["pairs"]["HummingLM vs VALL-E"]["unseen"]
    assert pair["delta_db"] == pytest.approx(by["hummingml", "unseen"] - by["valle", "unseen"])
    assert results["comparisons"]["by_instrument"][held_out]["split"] == "unseen"
    assert "RANDOM WEIGHTS" in results["codec"]  # the tiny test DAC is labelled
    table = (out / "results.md").read_text()
    assert "HummingLM vs VALL-E" in table and "augmentation" in table and "Per mode" in table and held_out in table
    assert all(mode in table for mode in modes)
    for png in ("loss.png", "si_sdr.png", "modes.png", "eval.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    assert main(argv) == 0  # a rerun trains nothing again
    assert capsys.readouterr().out.count("already trained") == 3
