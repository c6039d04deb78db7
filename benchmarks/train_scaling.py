"""Training throughput on CPU through Ray Train at several (dp, tp) layouts, with scaling efficiency.

    python -m benchmarks.train_scaling --out benchmarks/results/train_scaling_cpu.json

The features come from a small extraction with the tiny models (eight 4 s segments, made once under ``--work``).
Each case runs ``hummingml.train.ray.fit`` for ``--steps`` steps of the AR and NAR models and reads ``tokens_per_s``
(AR target tokens per second over all dp ranks) from the last report, which covers the second half of the run,
after warm-up.
Every case gets the same CPUs in total; ``1x1`` runs twice, with one CPU and with all of them, so that the speedup
of two workers is measured against both.

Scaling efficiency of a layout = its tokens/s / (world size x tokens/s of ``1x1`` on one CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PRESET_MODELS, machine


def features(work: Path) -> Path:
    """Eight 4 s segments (four songs) extracted with the tiny models (reused when present): every dp rank gets rows."""
    from hummingml.extract.config import ExtractConfig
    from hummingml.extract.job import run
    from hummingml.testing.corpus import write_corpus
    from hummingml.weights.config import ModelsConfig

    out = work / "features-4x8s"
    if not (out / "summary.json").exists():
        write_corpus(work / "corpus-4x8s", n_songs=4, seed=5, seconds=8.0)
        cfg = ExtractConfig(input=str(work / "corpus-4x8s" / "mix"), output=str(out), segment_s=4.0,
                            models=ModelsConfig(kind="tiny", cache_dir=str(work / "models")))
        run(cfg, log=io.StringIO())
    return out


def case(features_dir: Path, work: Path, preset: str, dp: int, tp: int, cpus: float, steps: int,
         batch_size: int) -> dict[str, Any]:
    """One fit; returns its throughput."""
    from hummingml.train.config import from_preset
    from hummingml.train.data import DataConfig
    from hummingml.train.ray import fit

    data = DataConfig(features=str(features_dir), frames=128, timbre_min_frames=32, timbre_max_frames=64)
    name = f"{preset}-{dp}x{tp}-{cpus:g}cpu-{time.time_ns()}"
    cfg = from_preset("debug", name=name, storage=str(work / "runs"), data=data, batch_size=batch_size,
                      steps=steps, checkpoint_every=steps // 2, cpus_per_worker=cpus / (dp * tp))
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, **PRESET_MODELS[preset]),
        parallel=dataclasses.replace(cfg.parallel, dp=dp, tp=tp),
    )
    started = time.perf_counter()
    result = fit(cfg)
    if result.error is not None:
        raise RuntimeError(f"{name} failed: {result.error}")
    metrics = result.metrics
    return {
        "preset": preset, "dp": dp, "tp": tp, "cpus": cpus, "steps": steps, "batch_size_per_dp_rank": batch_size,
        "tokens_per_s": metrics["tokens_per_s"], "ar_loss_last": metrics["ar_loss"],
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every case and write the JSON report."""
    import ray

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="debug,mid", help=f"any of {','.join(PRESET_MODELS)}")
    p.add_argument("--layouts", default="1x1,1x2,2x1", help="dp x tp layouts besides 1x1 on one CPU")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to every case")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per case (throughput of the second half)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step per dp rank")
    p.add_argument("--work", default="/tmp/hummingml-train-bench", help="features and runs go here")
    p.add_argument("--out", default="benchmarks/results/train_scaling_cpu.json", help="result JSON")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    feats = features(work)
    rows = []
    for preset in args.presets.split(","):
        base = case(feats, work, preset, 1, 1, 1, args.steps, args.batch_size)
        rows.append(base | {"scaling_efficiency": 1.0})
        for layout in args.layouts.split(","):
            dp, tp = (int(x) for x in layout.split("x"))
            row = case(feats, work, preset, dp, tp, args.cpus, args.steps, args.batch_size)
            row["speedup_vs_1cpu"] = row["tokens_per_s"] / base["tokens_per_s"]
            row["scaling_efficiency"] = row["speedup_vs_1cpu"] / (dp * tp)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "command": "python -m benchmarks.train_scaling " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine() | {"load_avg_1m_at_end": os.getloadavg()[0]},
        "cases": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
