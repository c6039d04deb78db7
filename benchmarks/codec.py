"""The codec's real limit and the ways to run its encoder: FLOPs, the machine's peak, time and agreement of the codes.

For the DAC encoder (and Demucs, for comparison) it counts the FLOPs per second of audio with
``torch.utils.flop_counter`` on the real architecture (``--kind random-full``: seeded random weights, the pretrained
model's compute). In the same run it measures the machine's fp32 peak at the same thread count (a 2048x2048 GEMM and
a DAC-sized convolution; the higher counts), then times each way of running the encoder on one 10 s window (median of
``--repeats`` calls after a warm-up) and compares its codes, all codebooks, with eager fp32's over ``--agree-s``
seconds of synthesized mixes and stems. A variant's fraction of peak is its GFLOP/s over the peak's.

    .venv/bin/python -m benchmarks.codec --out benchmarks/results/codec.json         # random-full, 1 thread (~15 min)
    .venv/bin/python -m benchmarks.codec --kind tiny --agree-s 6 --repeats 1 --out /tmp/codec.json     # seconds

The ONNX Runtime variant needs the ``onnx`` package (``pip install onnx``; not in the lock), and is skipped without it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine
from hummingml.audio import SOURCE_SAMPLE_RATE, resample
from hummingml.stages.separate import SeparateConfig, Separator
from hummingml.testing.corpus import make_song
from hummingml.weights import openvino
from hummingml.weights.config import ModelsConfig
from hummingml.weights.load import load_dac

Encoder = Callable[[torch.Tensor], torch.Tensor]  # (B, 1, T) -> latents (B, latent_dim, frames), float32


def gflop_per_call(fn: Callable[[], Any]) -> float:
    """GFLOP of one call of ``fn`` as ``torch.utils.flop_counter`` counts them (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / 1e9


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine_peak(repeats: int) -> dict[str, float]:
    """GFLOP/s of an fp32 2048x2048 GEMM and of a DAC-sized convolution (256 channels, kernel 7, 1 s at 44.1 kHz),
    and of the same GEMM in bf16, on torch's current threads."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv = torch.nn.Conv1d(256, 256, 7, padding=3).eval()
    x = torch.randn(1, 256, 44_100)
    with torch.inference_mode():
        gemm = 2 * 2048**3 / median_s(lambda: a @ b, repeats) / 1e9
        conv_gflops = 2 * 256 * 256 * 7 * 44_100 / median_s(lambda: conv(x), repeats) / 1e9
        a16, b16 = a.bfloat16(), b.bfloat16()
        bf16 = 2 * 2048**3 / median_s(lambda: a16 @ b16, repeats) / 1e9
    return {"gemm_fp32_gflops": gemm, "conv1d_fp32_gflops": conv_gflops, "fp32_peak_gflops": max(gemm, conv_gflops),
            "gemm_bf16_gflops": bf16}


def agreement_set(sample_rate: int, seconds: float) -> list[np.ndarray]:
    """Mono windows of synthesized mixes and stems (songs in different modes and instruments) at ``sample_rate``,
    ``seconds`` in all, each at most 5 s."""
    out: list[np.ndarray] = []
    left, index = seconds, 0
    while left > 1e-6:
        song = make_song(index, seed=11, seconds=5.0)
        for audio in (song.mix, song.stems["vocals"], song.stems["bass"], song.stems["drums"]):
            take = min(5.0, left)
            mono = resample(audio.mean(axis=0, keepdims=True), SOURCE_SAMPLE_RATE, sample_rate)[0]
            out.append(np.ascontiguousarray(mono[: round(take * sample_rate)], dtype=np.float32))
            left -= take
            if left <= 1e-6:
                break
        index += 1
    return out


def fresh_dac(kind: str) -> Any:
    """A newly loaded DAC (modules with weight norm cannot be deep-copied once they have run)."""
    return load_dac(ModelsConfig(kind=kind))[0].eval()


def folded(model: Any) -> Any:
    """``model`` with weight norm folded into plain weights."""
    for module in model.modules():
        with contextlib.suppress(ValueError):  # modules without weight norm
            torch.nn.utils.remove_weight_norm(module)
    return model


def variants(kind: str, threads: int, example: torch.Tensor) -> dict[str, Callable[[], Encoder]]:
    """Builders of each way of running the encoder; each returns a function of a (B, 1, T) batch."""

    def eager() -> Encoder:
        return fresh_dac(kind).encoder

    def fold() -> Encoder:
        return folded(fresh_dac(kind)).encoder

    def compiled() -> Encoder:
        return torch.compile(folded(fresh_dac(kind)).encoder)  # type: ignore[no-any-return]

    def jit_freeze() -> Encoder:  # TorchScript frozen and optimised for inference: oneDNN convolutions
        with torch.no_grad():
            traced = torch.jit.trace(folded(fresh_dac(kind)).encoder, example[..., : 4 * 512])
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))  # type: ignore[no-any-return]

    def bf16() -> Encoder:
        encoder = fresh_dac(kind).encoder

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return encoder(x).float()

        return run

    def onnxruntime() -> Encoder:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / "encoder.onnx"
        torch.onnx.export(folded(fresh_dac(kind)).encoder, (example,), str(path), input_names=["audio"],
                          output_names=["z"], dynamic_axes={"audio": {0: "b", 2: "t"}, "z": {0: "b", 2: "f"}},
                          dynamo=False, opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"audio": x.numpy()})[0])

    def openvino_at(precision: str) -> Callable[[], Encoder]:
        def build() -> Encoder:
            with tempfile.TemporaryDirectory() as cache:
                encoder = openvino.OpenVINOEncoder(fresh_dac(kind), threads, Path(cache), "benchmark", precision)
            return lambda x: torch.from_numpy(encoder(x.numpy()))

        return build

    return {"eager fp32 (reference)": eager, "weight norm folded": fold, "torch.compile (inductor)": compiled,
            "TorchScript freeze + optimize_for_inference (oneDNN)": jit_freeze, "bf16 autocast": bf16,
            "ONNX Runtime fp32": onnxruntime, "OpenVINO fp32 (shipped)": openvino_at("f32"),
            "OpenVINO bf16": openvino_at("bf16")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="random-full", choices=["tiny", "random-full", "pretrained"],
                        help="DAC and Demucs weights (pretrained: from the models cache, see docs/models.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch / runtime threads (one per core in the engine)")
    parser.add_argument("--window-s", type=float, default=10.0, help="audio per timed encoder call")
    parser.add_argument("--agree-s", type=float, default=60.0, help="audio over which codes are compared")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant (median)")
    parser.add_argument("--variants", default="all",
                        help="comma-separated names (as in the results) or words of them, e.g. 'eager,openvino fp32'")
    parser.add_argument("--no-demucs", action="store_true", help="skip Demucs's FLOPs and time")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/codec.json"), help="results JSON")
    args = parser.parse_args()
    if args.threads < 1 or args.window_s <= 0 or args.agree_s <= 0 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1, --window-s and --agree-s > 0")
    torch.set_num_threads(args.threads)

    reference = fresh_dac(args.kind)
    rate, hop, n_q = int(reference.sample_rate), int(reference.hop_length), int(reference.n_codebooks)
    song = make_song(0, seed=3, seconds=args.window_s + 1)
    mono = resample(song.mix.mean(axis=0, keepdims=True), SOURCE_SAMPLE_RATE, rate)[0]
    frames = round(args.window_s * rate / hop)
    window = torch.from_numpy(np.ascontiguousarray(mono[: frames * hop], dtype=np.float32))[None, None]
    window_s = window.shape[-1] / rate
    clips = [torch.from_numpy(np.pad(c, (0, -len(c) % hop)))[None, None] for c in agreement_set(rate, args.agree_s)]

    def codes(encoder: Encoder) -> list[torch.Tensor]:
        with torch.inference_mode():
            return [reference.quantizer(encoder(c).float(), n_q)[1] for c in clips]

    gflop_per_audio_s = gflop_per_call(lambda: reference.encoder(window)) / window_s
    peak = machine_peak(args.repeats)
    print(f"DAC encoder: {gflop_per_audio_s:.1f} GFLOP per audio-s; peak {peak}", flush=True)
    rows: list[dict[str, Any]] = []
    expected: list[torch.Tensor] = []
    wanted = [w.strip().lower() for w in args.variants.split(",")] if args.variants != "all" else []
    chosen = {name: build for name, build in variants(args.kind, args.threads, window).items()
              if not wanted or any(w in name.lower() for w in wanted)}
    if not chosen or "eager" not in next(iter(chosen)):
        parser.error("--variants must include eager (the reference the others are compared with)")
    for name, build in chosen.items():
        try:
            t0 = time.perf_counter()
            encoder = build()
            with torch.inference_mode():
                encoder(window)  # compiles where the variant compiles
            setup_s = time.perf_counter() - t0
            with torch.inference_mode():
                per_s = median_s(lambda e=encoder: e(window), args.repeats) * args.threads / window_s
            got = codes(encoder)
        except ImportError as exc:
            rows.append({"variant": name, "skipped": f"{type(exc).__name__}: {exc}"})
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        if not expected:
            expected = got
        equal = sum(int((a == b).sum()) for a, b in zip(got, expected, strict=True))
        equal_0 = sum(int((a[:, 0] == b[:, 0]).sum()) for a, b in zip(got, expected, strict=True))
        total = sum(a.numel() for a in expected)
        row = {"variant": name, "core_s_per_audio_s": per_s, "setup_s": setup_s,
               "speedup": rows[0]["core_s_per_audio_s"] / per_s if rows else 1.0,
               "gflops": gflop_per_audio_s / per_s, "fraction_of_fp32_peak": gflop_per_audio_s / per_s /
               peak["fp32_peak_gflops"], "codes_equal": equal / total, "codebook0_equal": equal_0 / (total // n_q),
               "codes_compared": total}
        rows.append(row)
        print(f"{name}: {per_s:.3f} core-s/audio-s, x{row['speedup']:.2f}, {row['fraction_of_fp32_peak']:.2f} of "
              f"peak, codes equal {row['codes_equal']:.5f}", flush=True)

    demucs: dict[str, Any] | None = None
    if not args.no_demucs:
        separator = Separator(SeparateConfig(device="cpu", models=ModelsConfig(kind=args.kind)))
        stereo = song.mix[:, : round(window_s * SOURCE_SAMPLE_RATE)]
        gflop = gflop_per_call(lambda: separator.separate(stereo, SOURCE_SAMPLE_RATE))
        per_s = median_s(lambda: separator.separate(stereo, SOURCE_SAMPLE_RATE), 1) * args.threads / window_s
        demucs = {"gflop_per_audio_s": gflop / window_s, "core_s_per_audio_s": per_s,
                  "fraction_of_fp32_peak": gflop / window_s / per_s / peak["fp32_peak_gflops"],
                  "note": "FLOPs of convolutions and matrix products; the STFTs are not counted"}
        print(f"Demucs: {demucs}", flush=True)

    result = {
        "benchmark": "codec", "date": datetime.date.today().isoformat(), "command": "python -m benchmarks.codec "
        + shlex.join(sys.argv[1:]),
        "machine": {**machine(), "torch": torch.__version__, "openvino": _version("openvino")},
        "kind": args.kind, "random_weights": args.kind != "pretrained", "threads": args.threads, "window_s": window_s,
        "agreement_audio_s": sum(c.shape[-1] for c in clips) / rate, "encoder_gflop_per_audio_s": gflop_per_audio_s,
        "peak": peak, "variants": rows, "demucs": demucs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
