"""The benchmarks' quick mode runs end to end (its figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import PLANS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_runs_every_benchmark_and_writes_its_json() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name, _ in PLANS["quick"]:
        report = json.loads((ROOT / "benchmarks" / "results" / "quick" / f"{name}.json").read_text())
        assert report, name
    extraction = json.loads((ROOT / "benchmarks/results/quick/extraction.json").read_text())
    assert {r["variant"] for r in extraction["results"]} >= {"ray", "sequential", "pool 2x1"}
    codec = json.loads((ROOT / "benchmarks/results/quick/codec.json").read_text())
    shipped = next(v for v in codec["variants"] if v["variant"] == "OpenVINO fp32 (shipped)")
    assert shipped["codes_equal"] == 1.0 and shipped["codes_compared"] > 0 and codec["encoder_gflop_per_audio_s"] > 0
    scaling = json.loads((ROOT / "benchmarks/results/quick/train_scaling.json").read_text())
    assert [(c["dp"], c["tp"]) for c in scaling["cases"]] == [(1, 1), (1, 2)]
    assert all(c["tokens_per_s"] > 0 for c in scaling["cases"])
    log = json.loads((ROOT / "benchmarks/results/quick/commit_log.json").read_text())
    assert [(r["batches"], r["sources"]) for r in log["results"]] == [(100, 320)]  # 10 segments per source
    # the rolled-up log holds every marker and reads as the same sources
    assert [(r["roll_up"]["markers"], r["rolled_read"]["sources"]) for r in log["results"]] == [(100, 320)]
    scale = json.loads((ROOT / "benchmarks/results/quick/scale.json").read_text())
    (result,) = scale["results"]
    # two writers, every input committed once, and a resume that writes nothing
    assert (result["inputs"], result["segments"], result["accounted"], result["resume_wrote"]) == (300, 300, True, [])
    assert result["files"]["audio-feature"]["files"] >= 2
    assert result["driver_rss_mib_curve"] and all(mib > 0 for _, mib in result["driver_rss_mib_curve"])
