"""Real-time factors (wall time / audio duration) of the neural stages, with full-size models.

DAC and Demucs load the ``random-full`` kind: the real architectures with seeded random weights, so the compute equals
that of the pretrained models without needing them. Basic Pitch uses its bundled ONNX model. Inputs are synthesized
songs (hummingml.testing.corpus). Each stage gets one untimed warm-up call, then ``--repeats`` timed calls; the median
counts.

    .venv/bin/python benchmarks/stage_costs.py                       # 2 threads, 10 s, writes results/stage_costs.json
    .venv/bin/python benchmarks/stage_costs.py --device cuda --out benchmarks/results/stage_costs_gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hummingml.audio import FEATURE_SAMPLE_RATE, SOURCE_SAMPLE_RATE, resample, to_mono
from hummingml.testing.corpus import make_song
from hummingml.weights.config import ModelsConfig, resolve_device

_stage_load = 0.0  # 1-minute load average when the current stage's timing began


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions: what the figures depend on."""
    import torch

    cpu_model = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for dist in ("descript-audio-codec", "demucs", "basic-pitch", "onnxruntime"):
        try:
            import importlib.metadata

            info[dist] = importlib.metadata.version(dist)
        except Exception:
            info[dist] = None
    return info


def time_calls(fn: Any, repeats: int, sync: Any = None) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    global _stage_load
    _stage_load = os.getloadavg()[0]
    fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def row(stage: str, model: str, params: int | None, audio: str, seconds: float, times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "stage": stage,
        "model": model,
        "params": params,
        "input": audio,
        "audio_s": seconds,
        "wall_s": [round(t, 4) for t in times],
        "median_wall_s": round(median, 4),
        "real_time_factor": round(median / seconds, 4),
        "real_time_factor_min": round(min(times) / seconds, 4),  # least disturbed by other processes
        "load_average_1m": {"start": round(_stage_load, 2), "end": round(os.getloadavg()[0], 2)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per call (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage after a warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto for DAC and Demucs (default cpu)")
    parser.add_argument("--cache-dir", default=None, help="model cache for the random-full weights (default: models')")
    parser.add_argument("--stages", default="dac,demucs,basic_pitch", help="comma-separated subset to run")
    parser.add_argument("--dac-chunk-s", type=float, default=None, help="CodecConfig.chunk_s (default: its default)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "stage_costs.json"), help="JSON file to write"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    stages = set(args.stages.split(","))
    load_at_start = os.getloadavg()
    song = make_song(0, seed=0, seconds=args.seconds)  # stereo 44.1 kHz
    mono_22k = resample(to_mono(song.mix), SOURCE_SAMPLE_RATE, FEATURE_SAMPLE_RATE)
    models_cfg = ModelsConfig(kind="random-full", cache_dir=args.cache_dir)
    results: list[dict[str, Any]] = []
    identities: list[dict[str, Any]] = []

    if "dac" in stages:
        from hummingml.stages.codec import Codec, CodecConfig

        codec_cfg = CodecConfig(device=device, models=models_cfg)
        if args.dac_chunk_s is not None:
            codec_cfg = dataclasses.replace(codec_cfg, chunk_s=args.dac_chunk_s)
        codec = Codec(codec_cfg)
        assert codec.identity is not None
        identities.append(codec.identity.to_dict())
        times = time_calls(lambda: codec.encode(mono_22k, FEATURE_SAMPLE_RATE), args.repeats, sync)
        results.append(row("DAC 44 kHz encode", "dac.DAC() default config, random weights, 9 codebooks",
                           codec.identity.n_params, f"{args.seconds:g} s, one mono stream at 22.05 kHz (incl. "
                           f"resample to 44.1 kHz), CodecConfig chunk_s={codec_cfg.chunk_s:g}", args.seconds, times))
        print(json.dumps(results[-1]), flush=True)
        del codec

    if "demucs" in stages:
        from hummingml.stages.separate import SeparateConfig, Separator

        separator = Separator(SeparateConfig(device=device, models=models_cfg))
        assert separator.identity is not None
        identities.append(separator.identity.to_dict())
        times = time_calls(lambda: separator.separate(song.mix, SOURCE_SAMPLE_RATE), args.repeats, sync)
        results.append(row("six-stem separation", "HTDemucs htdemucs_6s-sized (6 sources), random weights",
                           separator.identity.n_params, f"{args.seconds:g} s stereo at 44.1 kHz, shifts=0, split, "
                           "overlap 0.25, 7.8 s segments", args.seconds, times))
        print(json.dumps(results[-1]), flush=True)
        del separator

    if "basic_pitch" in stages:
        from hummingml.stages.pitch import PitchDetector

        detector = PitchDetector()  # pays onnxruntime set-up and numba compilation here
        times = time_calls(lambda: detector.detect(mono_22k, FEATURE_SAMPLE_RATE), args.repeats)
        results.append(row("Basic Pitch", "bundled ONNX (nmp.onnx)", None,
                           f"{args.seconds:g} s mono at 22.05 kHz, incl. note post-processing", args.seconds, times))
        print(json.dumps(results[-1]), flush=True)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device,
        "machine": machine_info(),
        # other processes on the machine slow every figure; 1-minute load averages around the run
        "load_average_1m": {"start": round(load_at_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "models": identities,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
