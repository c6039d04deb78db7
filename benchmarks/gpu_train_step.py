"""Time training steps of a preset on one device with random codes; print the result and write it as JSON.

    python benchmarks/gpu_train_step.py --out bench.json                        # m385, bf16 autocast, one CUDA GPU
    python benchmarks/gpu_train_step.py --measure-peak --out bench.json         # MFU against a measured matmul
    python benchmarks/gpu_train_step.py --preset b2 --batch-size 4 --compile --out bench-b2.json
    python benchmarks/gpu_train_step.py --device cpu --preset debug --steps 2 --out /tmp/x.json   # smoke test

Rows are packed to exactly ``max_seq_len`` tokens (P = max_seq_len // 5 timbre frames, T the rest), so
tokens/s counts every position. MFU = tokens/s * flops_per_token / peak, with flops_per_token from
``hummingml.model.flops.flops_per_token`` (6N + attention term) and the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hummingml.model.batch import build_example_batch
from hummingml.model.flops import count_parameters, flops_per_token, mfu
from hummingml.model.lm import HummingLM, NARUpsampler
from hummingml.train.config import PRESETS
from hummingml.train.parallel.torch import apply_activation_checkpointing

# Dense bf16 tensor-core peak FLOP/s (NVIDIA datasheets; the sparse figures are twice these).
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s or None when unknown)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


def measured_matmul_peak(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n bf16 matrix product on random data (mean of ``repeats`` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="m385", choices=sorted(PRESETS))
    p.add_argument("--model", default="ar", choices=["ar", "nar"], help="HummingLM (ar) or NARUpsampler (nar)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="bf16 = autocast, fp32 master weights")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cuDNN, compile)")
    p.add_argument("--ac", default=None, choices=["none", "selective", "full"], help="default: the preset's")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--peak-flops", type=float, default=None, help="override the detected peak FLOP/s")
    p.add_argument("--measure-peak", action="store_true", help="MFU against a measured 8192^3 bf16 matmul instead")
    p.add_argument("--out", required=True, type=Path, help="JSON result path")
    args = p.parse_args(argv)

    preset = PRESETS[args.preset]()
    cfg = preset.model
    ac = args.ac or preset.parallel.activation_checkpoint
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)

    P = cfg.max_seq_len // 5
    T = (cfg.max_seq_len - 3 - P) // 2 if args.model == "ar" else cfg.max_seq_len - 2 - P
    if cfg.layout == "valle" and args.model == "ar":
        T = (cfg.max_seq_len - 1 - P) // 2
    with torch.device("meta"):
        model = (HummingLM if args.model == "ar" else NARUpsampler)(cfg)
    model.to_empty(device=device)
    model.init_weights()
    if ac != "none":
        apply_activation_checkpointing(model, ac)
    if args.compile:
        for block in model.layers:
            block.compile()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=preset.optim.lr, betas=preset.optim.betas, fused=fused)
    batch = build_example_batch(cfg, args.batch_size, P, T, generator=torch.Generator().manual_seed(0), device=device)
    seq_len = model.pack(batch).labels.shape[1]
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()
    run = {k: v for k, v in vars(args).items() if k != "out"} | {"activation_checkpoint": ac, "seq_len": seq_len}
    print(json.dumps(run | {"model_config": asdict(cfg)}, default=str), flush=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    losses, times = [], []
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        with amp:
            loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.optim.grad_clip)
        opt.step()
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))

    name, datasheet_peak = peak_flops(device)
    measured_peak = measured_matmul_peak(device) if args.measure_peak and device.type == "cuda" else None
    peak = args.peak_flops or measured_peak or datasheet_peak
    step_s = statistics.median(times)
    tokens_per_s = args.batch_size * seq_len / step_s
    fpt = flops_per_token(cfg, seq_len)
    result = run | {
        "preset": args.preset,
        "device_name": name,
        "torch": torch.__version__,
        "params": count_parameters(model),
        "tokens_per_step": args.batch_size * seq_len,
        "step_time_s": step_s,
        "step_time_mean_s": statistics.fmean(times),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "peak_flops": peak,
        "peak_source": "--peak-flops" if args.peak_flops else "measured matmul" if measured_peak else "datasheet",
        "datasheet_peak_flops": datasheet_peak,
        "measured_matmul_peak_flops": measured_peak,
        "mfu": mfu(tokens_per_s, fpt, peak) if peak else None,
        "mfu_vs_datasheet": mfu(tokens_per_s, fpt, datasheet_peak) if datasheet_peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    print(json.dumps(result, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
