"""SI-SDR, and the evaluation job on two short training runs (HummingLM and the VALL-E baseline)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hummingml.eval.config import EvalConfig
from hummingml.eval.metrics import SI_SDR_MAX_DB, SI_SDR_MIN_DB, si_sdr, summarize_db
from hummingml.testing.signals import chord, silence, sine


def noise(n: int, power: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, math.sqrt(power), n)


# --- SI-SDR --------------------------------------------------------------------------------------------------------


def test_identical_signals_reach_the_upper_clamp() -> None:
    x = chord([220.0, 330.0, 440.0], 1.0, 16_000)
    assert si_sdr(x, x) == SI_SDR_MAX_DB
    assert si_sdr(x + 0.3, x) == SI_SDR_MAX_DB  # a DC offset is removed (zero mean)


def test_si_sdr_ignores_the_scale_of_either_signal() -> None:
    ref = sine(440.0, 1.0, 16_000)[0]
    est = ref + noise(ref.size, 0.01)
    value = si_sdr(est, ref)
    assert value == pytest.approx(10 * math.log10(0.125 / 0.01), abs=0.2)  # sine power 0.5**2 / 2 over the noise's
    for scaled in (si_sdr(3.0 * est, ref), si_sdr(est, 0.2 * ref), si_sdr(-est, ref)):
        assert scaled == pytest.approx(value, abs=1e-6)
    assert si_sdr(1e-3 * est, ref) == pytest.approx(value, abs=1e-3)  # eps is absolute: it shows 60 dB down


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 30.0])
def test_white_noise_at_a_known_level_gives_that_level(snr_db: float) -> None:
    ref = sine(440.0, 2.0, 16_000)[0].astype(np.float64)
    power = float(np.mean(ref**2)) / 10 ** (snr_db / 10)
    # noise uncorrelated with the reference: SI-SDR is its SNR (32,000 samples: about 0.05 dB of estimation spread)
    assert si_sdr(ref + noise(ref.size, power, seed=int(snr_db)), ref) == pytest.approx(snr_db, abs=0.2)


def test_silent_references_are_not_scored() -> None:
    x = sine(440.0, 0.5, 16_000)
    assert math.isnan(si_sdr(x, silence(0.5, 16_000)))
    assert math.isnan(si_sdr(x, np.full(8000, 1e-3)))  # a constant is silence once the mean is removed
    assert math.isnan(si_sdr(x, []))
    assert si_sdr(silence(0.5, 16_000), x) == SI_SDR_MIN_DB  # a silent estimate is the worst score, not NaN
    assert si_sdr(x[:, :7000], x) == SI_SDR_MAX_DB  # lengths differ: the longer is cropped (DAC pads to frames)
    summary = summarize_db([10.0, math.nan, 20.0, 60.0])
    assert summary == {"mean": 30.0, "median": 20.0, "n_scored": 3, "n_skipped_silent": 1}
    assert summarize_db([math.nan])["median"] is None


def test_split_names_are_checked() -> None:
    assert EvalConfig(checkpoint="c", compare=("d",)).checkpoints == ("c", "d")
    with pytest.raises(ValueError, match="split"):
        EvalConfig(split=("seen",))


# --- the job -------------------------------------------------------------------------------------------------------

ROW_KEYS = {
    "checkpoint", "run_name", "step", "preset", "layout", "trained_with_augmentation", "trained_holdout_instruments",
    "split", "features", "holdout_instruments", "frames", "timbre_frames", "dac", "n_examples", "n_frames",
    "ar_teacher_forced", "ar_free_running_acc", "nar_teacher_forced", "nar_mean_acc", "si_sdr_db", "eval_s",
    "part_audio_unavailable", "by_mode", "by_instrument",
}  # fmt: skip


@pytest.mark.slow
def test_evaluate_job_compares_two_checkpoints_on_seen_and_unseen_instruments(
    demo_features, trained_run, tmp_path
) -> None:
    from ray_jobs.evaluate import main

    debug_dir, _ = trained_run("debug")
    valle_dir, _ = trained_run("valle_debug")
    manifest_file = demo_features.parent / "corpus" / "manifest.jsonl"
    manifest = [json.loads(line) for line in manifest_file.read_text().splitlines()]
    held_out = manifest[0]["instruments"]["vocals"]
    out, png = tmp_path / "results.json", tmp_path / "results.png"
    argv = [
        "--checkpoint", str(debug_dir), "--compare", str(valle_dir), "--data-features", str(demo_features),
        "--split", "train", "unseen", "--holdout-instruments", held_out, "--out", str(out), "--plot", str(png),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert {"reference", "metrics", "si_sdr", "config", "rows"} <= set(results)
    assert "not audio" in results["reference"] and "codec_ceiling" in results["reference"]
    rows = results["rows"]
    assert [(r["preset"], r["split"]) for r in rows] == [
        ("debug", "train"), ("debug", "unseen"), ("valle_debug", "train"), ("valle_debug", "unseen")
    ]  # fmt: skip
    assert [r["layout"] for r in rows] == ["humming", "humming", "valle", "valle"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["n_examples"] > 0 and row["n_frames"] == 64 * row["n_examples"] and row["step"] == 10
        assert row["holdout_instruments"] == [held_out]
        metrics = [*row["ar_teacher_forced"].values(), row["ar_free_running_acc"], row["nar_mean_acc"]]
        assert all(0 <= m <= 1 for m in metrics[1:]) and metrics[0] >= 0  # loss, then accuracies
        assert set(row["nar_teacher_forced"]) == {"1", "2", "3"}
        assert row["part_audio_unavailable"] == {}  # every source is still there: every example has its audio
        for combo in ("full", "ar_only", "nar_only", "codec_ceiling", "full_vs_audio"):
            sdr = row["si_sdr_db"][combo]
            assert sdr["n_scored"] + sdr["n_skipped_silent"] == row["n_examples"]
            if sdr["n_scored"]:
                assert SI_SDR_MIN_DB <= sdr["median"] <= SI_SDR_MAX_DB
    # the same examples for both checkpoints: one held-out part each time
    assert rows[0]["n_examples"] == rows[2]["n_examples"] and rows[1]["n_examples"] == rows[3]["n_examples"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# --- the parts' own audio ------------------------------------------------------------------------------------------


def _whole_segment_examples(features: Path) -> tuple[list[dict], list[np.ndarray]]:
    """One example per (segment, melodic stem) of an extraction output, spanning the whole segment; and its codes."""
    import pyarrow.parquet as pq

    table = pq.read_table(features / "audio-feature").to_pylist()
    examples, codes = [], []
    for row in table:
        for part in ("vocals", "lead"):
            target = np.asarray(row["stem_codes"][row["stem_names"].index(part)], dtype=np.int64)[0]
            examples.append({"source_id": row["source_id"], "segment_index": row["segment_index"], "part": part,
                             "target_start": 0, "target": target})
            codes.append(target)
    return examples, codes


def test_part_audio_is_what_the_codec_encoded(demo_features) -> None:
    """Re-read + re-separated audio re-encodes to the stored codes: it is the audio the extraction encoded."""
    from hummingml.eval.generate import extraction_record, recorded_models_config
    from hummingml.eval.part_audio import part_audio
    from hummingml.stages.codec import encode
    from hummingml.weights.load import load_dac

    record = extraction_record(str(demo_features))
    models = recorded_models_config(record)
    dac, _ = load_dac(models)
    examples, codes = _whole_segment_examples(demo_features)
    frames = min(c.shape[1] for c in codes) - 1  # whole frames only: the segment's last frame is part padding
    log = io.StringIO()
    found = part_audio(examples, str(demo_features), record, models, int(dac.sample_rate), frames, log)
    assert found.unavailable == {} and "re-reading 2 sources" in log.getvalue()
    for audio, stored in zip(found.audio, codes, strict=True):
        assert audio is not None and audio.shape == (frames * int(dac.hop_length),)
        again = encode(audio[None, :], int(dac.sample_rate), dac).codes[0]
        inner = slice(16, frames - 16)  # the stored codes saw the rest of the segment past the last frame
        assert np.mean(again[:, inner] == stored[:, inner]) > 0.99


def test_part_audio_counts_what_it_cannot_find(demo_features, monkeypatch) -> None:
    from hummingml.eval import part_audio as part_audio_module
    from hummingml.eval.generate import extraction_record, recorded_models_config

    record = extraction_record(str(demo_features))
    models = recorded_models_config(record)
    examples, _ = _whole_segment_examples(demo_features)
    stranger = {**examples[0], "source_id": "not-extracted"}
    found = part_audio_module.part_audio([stranger], str(demo_features), record, models, 44100, 8, io.StringIO())
    assert found.audio == [None] and found.unavailable == {"no audio-feature row": 1}
    found = part_audio_module.part_audio(examples[:1], str(demo_features), None, models, 44100, 8, io.StringIO())
    assert found.audio == [None] and found.unavailable == {"the features record no extraction config": 1}

    real = part_audio_module._provenance

    def changed(features: str, source_ids: set[str]) -> dict:
        return {k: {**v, "content_sha256": "0" * 64} for k, v in real(features, source_ids).items()}

    monkeypatch.setattr(part_audio_module, "_provenance", changed)
    found = part_audio_module.part_audio(examples[:2], str(demo_features), record, models, 44100, 8, io.StringIO())
    assert found.audio == [None, None] and found.unavailable == {"source changed since extraction": 2}

    def moved(features: str, source_ids: set[str]) -> dict:
        return {k: {**v, "source_uri": v["source_uri"] + ".moved"} for k, v in real(features, source_ids).items()}

    monkeypatch.setattr(part_audio_module, "_provenance", moved)
    found = part_audio_module.part_audio(examples[:1], str(demo_features), record, models, 44100, 8, io.StringIO())
    assert found.audio == [None] and list(found.unavailable) == ["read: DecodeError:not_found"]
