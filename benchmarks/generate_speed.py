"""Level-0 generation speed of HummingLM with and without the KV cache, same model, same batch.

    python -m benchmarks.generate_speed --out benchmarks/results/generate_speed.json

Random initial weights (generation costs the same whatever the weights), greedy decoding, ``--batch`` rows of
``--timbre-frames`` prompt frames and ``--frames`` target frames, on the CPU with torch's default threads (or on
``--device``, fp32). Each mode runs ``--repeats`` times after one warm-up; the median wall time is reported with
frames/s (target frames generated per second over the batch), and the two modes' codes are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import PRESET_MODELS, machine


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time both modes for each preset and write the JSON."""
    import torch

    from hummingml.model.batch import build_example_batch
    from hummingml.model.lm import HummingLM
    from hummingml.train.config import PRESETS, debug

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="debug,mid",
                   help=f"model sizes: {', '.join(PRESET_MODELS)} or a training preset ({', '.join(PRESETS)})")
    p.add_argument("--batch", type=int, default=4, help="rows generated together")
    p.add_argument("--timbre-frames", type=int, default=128, help="timbre prompt frames per row")
    p.add_argument("--frames", type=int, default=128, help="target frames generated per row")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", default="benchmarks/results/generate_speed.json", help="result JSON")
    args = p.parse_args(argv)
    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    for preset in args.presets.split(","):
        cfg = replace(debug().model, **PRESET_MODELS[preset]) if preset in PRESET_MODELS else PRESETS[preset]().model
        torch.manual_seed(0)
        model = HummingLM(cfg).to(args.device).eval()
        batch = build_example_batch(cfg, args.batch, args.timbre_frames, args.frames,
                                    generator=torch.Generator().manual_seed(1), device=args.device)
        batch.pop("target")
        times: dict[bool, list[float]] = {True: [], False: []}
        codes = {}
        for cached in (True, False):
            codes[cached] = model.generate(batch, use_cache=cached)  # warm-up
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                model.generate(batch, use_cache=cached)
                sync()
                times[cached].append(time.perf_counter() - start)
        frames = args.batch * args.frames
        row = {"preset": preset, "params": sum(p.numel() for p in model.parameters()), "batch": args.batch,
               "timbre_frames": args.timbre_frames, "frames": args.frames,
               "same_codes": bool(torch.equal(codes[True], codes[False]))}
        for cached, label in ((True, "kv_cache"), (False, "recompute")):
            median = statistics.median(times[cached])
            row[label] = {"wall_s": [round(t, 3) for t in times[cached]], "median_s": round(median, 3),
                          "frames_per_s": round(frames / median, 1)}
        row["speedup"] = round(row["recompute"]["median_s"] / row["kv_cache"]["median_s"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "command": "python -m benchmarks.generate_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {**machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
