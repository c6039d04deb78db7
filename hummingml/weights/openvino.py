"""The DAC encoder compiled by OpenVINO for CPUs: the same codes as eager PyTorch, in about 0.6 of its time.

The encoder is converted from the loaded ``dac.DAC`` once per weights file and OpenVINO version, and cached as
OpenVINO IR under the weights cache::

    openvino/<openvino version>/dac_encoder_<weights sha256[:16]>.xml   (+ .bin)

Converting the 44 kHz encoder takes over a minute, so the processes of one node that start together take a file lock:
one converts, the others wait and read. Each process then compiles the IR for its own thread count. The graph keeps
fp32 throughout (``INFERENCE_PRECISION_HINT=f32``): OpenVINO's bf16 is faster on CPUs with AMX but changes about
2 % of the codes (benchmarks/README.md, "codec.py").
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hummingml.weights.load import atomic_write


def available() -> bool:
    """Whether the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(
            "openvino is not installed: run ./install.sh (it is in requirements/lock.txt), or use --codec-backend torch"
        ) from exc
    return openvino


def ir_path(cache: Path, sha256: str) -> Path:
    """Where the IR of the encoder of the weights with ``sha256`` is cached under ``cache``, for this OpenVINO."""
    version = importlib.metadata.version("openvino")
    return cache / "openvino" / version / f"dac_encoder_{sha256[:16]}.xml"


def _convert(model: Any) -> Any:
    """The ``ov.Model`` of ``model.encoder``, with a dynamic batch and length: input (B, 1, T) float32."""
    ov = _require()
    import torch

    example = torch.zeros(1, 1, 4 * int(model.hop_length))  # any length traces the same graph; short converts fast
    # OpenVINO converts through torch.jit.trace, which warns that it is deprecated and that DAC's residual units test a
    # shape (`if pad > 0`): their convolutions keep the length, so pad is 0 at every length (tests check the codes).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return ov.convert_model(model.encoder, example_input=example, input=[ov.PartialShape([-1, 1, -1])])


def _cached_model(model: Any, path: Path) -> Path:
    """Convert ``model``'s encoder to ``path`` unless it is there; one process of a node converts, the rest wait."""
    ov = _require()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.is_file():
                converted = _convert(model)
                atomic_write(path, lambda p: ov.save_model(converted, str(p), compress_to_fp16=False), (".bin",))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


class OpenVINOEncoder:
    """``model.encoder`` compiled by OpenVINO on the CPU: ``encoder(x)`` maps float32 ``(B, 1, T)`` at the codec's
    rate to the latents float32 ``(B, latent_dim, ceil(T / hop))``, as ``model.encoder`` does.

    ``source`` is the cached IR file it was compiled from, or ``"memory"`` (converted without a cache).
    ``precision`` is OpenVINO's inference precision: "f32" (the same codes) or "bf16" (measured, not used).
    """

    def __init__(
        self, model: Any, threads: int, cache: Path | None = None, sha256: str | None = None, precision: str = "f32"
    ) -> None:
        ov = _require()
        if cache is not None and sha256:
            self.source = str(_cached_model(model, ir_path(cache, sha256)))
            graph: Any = self.source
        else:
            self.source, graph = "memory", _convert(model)
        config = {"INFERENCE_NUM_THREADS": max(1, threads), "INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = ov.Core().compile_model(graph, "CPU", config)

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(self._compiled([np.ascontiguousarray(x, dtype=np.float32)])[0])
