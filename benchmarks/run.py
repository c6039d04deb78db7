"""Run every benchmark: ``--quick`` as a smoke test (minutes, figures not meaningful), or the full published set.

    python -m benchmarks.run --quick                 # results under benchmarks/results/quick/ (CI runs this)
    python -m benchmarks.run                         # the published figures under benchmarks/results/

Each benchmark is its own process (a clean Ray and torch state each time); the parameters of both modes are in
``PLANS`` below, and benchmarks/README.md gives each one's figures with the exact command that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PLANS: dict[str, list[tuple[str, list[str]]]] = {
    "quick": [
        ("stage_costs", ["benchmarks/stage_costs.py", "--seconds", "1", "--repeats", "1", "--stages", "basic_pitch"]),
        ("extraction", ["-m", "benchmarks.extraction", "--songs", "1", "--seconds", "2", "--models-kind", "tiny",
                        "--splits", "2x1"]),
        ("train_scaling", ["-m", "benchmarks.train_scaling", "--presets", "debug", "--layouts", "1x2", "--steps", "4"]),
        ("train_data", ["-m", "benchmarks.train_data", "--scales", "1,2", "--reader-scales", "1,2", "--repeats", "1",
                        "--steps", "4", "--memory-steps", "4"]),
        ("gpu_train_step", ["benchmarks/gpu_train_step.py", "--device", "cpu", "--preset", "debug", "--steps", "2",
                            "--warmup", "1"]),
        ("long_file_memory", ["-m", "benchmarks.long_file_memory", "--minutes", "1"]),
        ("generate_speed", ["-m", "benchmarks.generate_speed", "--presets", "debug", "--frames", "16",
                            "--timbre-frames", "16", "--repeats", "1"]),
        ("commit_log", ["-m", "benchmarks.commit_log", "--batches", "100"]),
        ("codec", ["-m", "benchmarks.codec", "--kind", "tiny", "--window-s", "2", "--agree-s", "4", "--repeats", "1",
                   "--variants", "eager,openvino fp32", "--no-demucs"]),
        ("scale", ["-m", "benchmarks.scale", "--inputs", "300", "--distinct", "30", "--job-flags=--writers 2"]),
        ("serve", ["-m", "benchmarks.serve", "--concurrency", "1,2", "--requests", "4", "--warmup", "1",
                   "--hum-s", "1"]),
    ],
    "full": [
        ("stage_costs", ["benchmarks/stage_costs.py"]),
        ("codec", ["-m", "benchmarks.codec"]),
        ("extraction", ["-m", "benchmarks.extraction", "--songs", "12", "--seconds", "10", "--models-kind",
                        "random-full", "--splits", "2x1", "--variants", "ray,ray-stages,sequential,pool"]),
        ("extraction_memory_1x", ["-m", "benchmarks.extraction", "--songs", "2", "--seconds", "5", "--models-kind",
                                  "tiny", "--variants", "ray"]),
        ("extraction_memory_10x", ["-m", "benchmarks.extraction", "--songs", "20", "--seconds", "5", "--models-kind",
                                   "tiny", "--variants", "ray"]),
        ("train_scaling_cpu", ["-m", "benchmarks.train_scaling"]),
        ("train_data", ["-m", "benchmarks.train_data"]),
        ("long_file_memory", ["-m", "benchmarks.long_file_memory", "--minutes", "10,30,60"]),
        ("generate_speed", ["-m", "benchmarks.generate_speed"]),
        ("commit_log", ["-m", "benchmarks.commit_log", "--batches", "1000,10000,100000"]),
        ("scale", ["-m", "benchmarks.scale", "--inputs", "10000,100000,1000000"]),
        ("serve_tiny", ["-m", "benchmarks.serve", "--concurrency", "1,4,16", "--requests", "48"]),
        ("serve_random_full", ["-m", "benchmarks.serve", "--models-kind", "random-full", "--concurrency", "1",
                               "--requests", "8", "--warmup", "2"]),
        ("soak", ["-m", "benchmarks.soak", "--files", "200", "--fault-rate", "0.1", "--kill-every-s", "30",
                  "--time-limit-s", "1500", "--work", "/tmp/soak-work"]),
    ],
}


def main(argv: list[str] | None = None) -> int:
    """Run the plan; exit non-zero when a benchmark fails."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smoke plan (minutes), results under results/quick/")
    p.add_argument("--only", default="", help="comma-separated names from the plan to run (default: all)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out_dir = Path("benchmarks/results") / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.only.split(",")))
    failed = []
    for name, cmd in PLANS[mode]:
        if wanted and name not in wanted:
            continue
        out = out_dir / f"{name}.json"
        started = time.monotonic()
        print(f"[bench] {name}: {' '.join(cmd)} --out {out}", flush=True)
        done = subprocess.run([sys.executable, *cmd, "--out", str(out)], env={**os.environ, "RAY_ADDRESS": "local"})
        took = time.monotonic() - started
        ok = done.returncode == 0 and out.exists() and json.loads(out.read_text())
        print(f"[bench] {name}: {'ok' if ok else 'FAILED'} in {took:.0f} s", flush=True)
        if not ok:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
