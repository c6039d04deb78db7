"""Requests/s and latency of ``POST /v1/hum`` on this machine: the Ray Serve app on 127.0.0.1, a real HTTP client.

    python -m benchmarks.serve --concurrency 1,4,16 --out benchmarks/results/serve_tiny.json
    python -m benchmarks.serve --models-kind random-full --concurrency 1 --requests 8 \
        --out benchmarks/results/serve_random_full.json

Each level sends ``--requests`` hums of ``--hum-s`` seconds (a four-note melody at 16 kHz, preset ``flute``) from
that many client threads at once, after ``--warmup`` unmeasured requests; latency is from the request's start to
its last byte. Every answer must be a 200 WAV of the hum's length, else the run fails. The model without a
checkpoint is the untrained debug HummingLM (the compute of a real request, no musical meaning).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
import soundfile as sf

from benchmarks.common import machine


def hum_wav(seconds: float, sample_rate: int = 16_000) -> bytes:
    from hummingml.testing.signals import sine

    notes = (220.0, 247.0, 262.0, 294.0)
    audio = np.concatenate([sine(f, seconds / len(notes), sample_rate, amplitude=0.4) for f in notes], axis=1)
    buf = io.BytesIO()
    sf.write(buf, audio.T, sample_rate, format="WAV")
    return buf.getvalue()


def one(url: str, data: bytes, frames: int) -> tuple[float, dict[str, float]]:
    """One request's latency in seconds and its steps' (the Server-Timing header, seconds); raises unless it is a
    200 WAV of ``frames`` frames."""
    started = time.perf_counter()
    r = requests.post(f"{url}/v1/hum", files={"hum": ("hum.wav", data)}, data={"preset": "flute"}, timeout=600)
    took = time.perf_counter() - started
    if r.status_code != 200 or sf.info(io.BytesIO(r.content)).frames != frames:
        raise RuntimeError(f"bad answer {r.status_code}: {r.text[:200]}")
    steps = dict(item.strip().split(";dur=") for item in r.headers["server-timing"].split(","))
    return took, {k: float(v) / 1000 for k, v in steps.items()}


def level(url: str, data: bytes, frames: int, concurrency: int, n: int) -> dict[str, Any]:
    """``n`` requests from ``concurrency`` threads; throughput and latency percentiles."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda _: one(url, data, frames), range(n)))
    wall = time.perf_counter() - started
    latencies = sorted(took for took, _ in answers)
    steps = {k: round(statistics.median(s[k] for _, s in answers), 3) for k in answers[0][1]}
    q = statistics.quantiles(latencies, n=20, method="inclusive")  # 5 % steps: q[9] = p50, q[18] = p95
    return {"concurrency": concurrency, "requests": n, "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 3),
            "p50_s": round(q[9], 3), "p95_s": round(q[18], 3), "max_s": round(latencies[-1], 3),
            "median_step_s": steps}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,4,16", help="client threads per level, comma-separated")
    p.add_argument("--requests", type=int, default=48, help="measured requests per level (default 48)")
    p.add_argument("--warmup", type=int, default=4, help="unmeasured requests first (default 4)")
    p.add_argument("--hum-s", type=float, default=3.0, help="length of the hum in seconds (default 3)")
    p.add_argument("--models-kind", default="tiny", help="tiny | random-full (default tiny)")
    p.add_argument("--max-batch", type=int, default=8, help="ServeConfig.max_batch (default 8)")
    p.add_argument("--out", default="benchmarks/results/serve.json", help="results JSON")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from hummingml.serve.app import build_app
    from hummingml.serve.config import ServeConfig
    from hummingml.weights.config import ModelsConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = ServeConfig(port=port, max_inflight=64, max_batch=args.max_batch, max_replicas=1, request_timeout_s=600,
                      jobs_dir="/tmp/hummingml-bench-jobs", models=ModelsConfig(kind=args.models_kind))  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.perf_counter()
    serve.run(build_app(cfg), name="hummingml", route_prefix="/")
    startup = time.perf_counter() - started
    url, data = f"http://127.0.0.1:{port}", hum_wav(args.hum_s)
    frames = round(args.hum_s * 44_100)
    for _ in range(args.warmup):
        one(url, data, frames)
    levels = []
    for c in (int(x) for x in args.concurrency.split(",")):
        levels.append(level(url, data, frames, c, args.requests))
        print(json.dumps(levels[-1]), flush=True)
    model = requests.get(f"{url}/v1/health", timeout=30).json()["model"]
    serve.shutdown()
    report = {"benchmark": "serve", "machine": machine(), "models_kind": args.models_kind, "hum_s": args.hum_s,
              "max_batch": args.max_batch, "startup_s": round(startup, 1), "model": model["label"],
              "levels": levels}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
