"""Neural codec tokens with DAC (descript-audio-codec), on arrays.

Each channel is encoded as its own mono stream at the codec's rate (44.1 kHz for the 44 kHz model, resampled here).
Long audio is encoded in windows of ``chunk_s`` seconds with ``context_frames`` of real audio on each side, whose
frames are dropped: DAC's encoder is convolutional, so a frame only sees its receptive field (about 8 000 samples at
44.1 kHz for the 44 kHz strides) and windowed encoding equals whole-signal encoding up to float rounding, while memory
stays bounded by ``batch_size`` windows.

The encoder runs in eager PyTorch (``backend="torch"``, the reference) or, on a CPU, compiled by OpenVINO
(:mod:`hummingml.weights.openvino`): the same codes in about 0.6 of the time (benchmarks/README.md, "codec.py").

Frame count: ``ceil(samples_at_codec_rate / hop)``; for 22.05 kHz input to the 44 kHz model that is
``ceil(samples / 256)`` (:func:`hummingml.audio.n_frames`), the Basic Pitch frame grid.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hummingml.audio import F32, resample
from hummingml.weights import openvino
from hummingml.weights.config import ModelIdentity, ModelsConfig, cache_dir, resolve_device
from hummingml.weights.load import load_dac

BACKENDS = ("auto", "torch", "openvino")
# An encoder other than the model's own: float32 (B, 1, T) at the codec's rate -> latents (B, latent_dim, frames)
Encoder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CodecTokens:
    """DAC codes of one signal: int16 ``(channels, n_codebooks, frames)`` at ``frame_rate`` frames/s."""

    codes: npt.NDArray[np.int16]
    frame_rate: float  # frames/s: codec sample rate / hop, 86.13 for DAC 44 kHz


@dataclass(frozen=True)
class CodecConfig:
    """How :func:`encode` windows and batches the signal, and which model :class:`Codec` loads."""

    n_codebooks: int | None = None  # codebooks kept (the first, coarsest ones); None: all (9 for DAC 44 kHz)
    chunk_s: float = 10.0  # audio per encoder window, before context; rounded to whole frames
    context_frames: int | None = None  # frames of real audio added on each side of a window and dropped after;
    # None: one full encoder receptive field (16 frames for the 44 kHz strides), which makes windows exact
    batch_size: int = 0  # windows (any channel or clip) per encoder call, bounds memory; 0 = 1 on a CPU, 8 on a GPU
    # (on a CPU, batches of 8 windows were measured 1.2x (DAC 44 kHz, 10 s windows) to 2.8x (tiny, 3 s) slower)
    device: str = "auto"  # where Codec puts the model: "auto" = cuda when available, else cpu
    backend: str = "auto"  # what runs the encoder: "torch" (eager, the reference), "openvino" (CPU only, same codes,
    # about 0.6 of the time), "auto" = openvino on a CPU when it is installed, else torch
    models: ModelsConfig = field(default_factory=ModelsConfig)  # which weights Codec loads when none is injected


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("torch is not installed; run the project's install script (./install.sh)") from exc
    return torch


def receptive_field_frames(model: Any) -> int:
    """Frames spanned by the receptive field of ``model.encoder``: ``ceil(receptive field in samples / hop)``.

    Computed from the encoder's convolutions (kernel, dilation, stride), in forward order.
    """
    torch = _require_torch()
    field_samples, jump = 1, 1
    for layer in model.encoder.modules():
        if isinstance(layer, torch.nn.Conv1d):
            field_samples += (layer.kernel_size[0] - 1) * layer.dilation[0] * jump
            jump *= layer.stride[0]
    return math.ceil(field_samples / int(model.hop_length))


def frame_rate(model: Any) -> float:
    """Codec frames per second: ``model.sample_rate / model.hop_length`` (86.13 for DAC 44 kHz)."""
    return float(model.sample_rate) / int(model.hop_length)


def _model_device(model: Any) -> Any:
    return next(model.parameters()).device


def _encode_streams(
    streams: list[F32], model: Any, cfg: CodecConfig, return_latents: bool = False, encoder: Encoder | None = None
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Encode 1-D float32 streams at the codec's rate, with ``encoder`` when given, else ``model.encoder``.

    Returns:
        ``(codes, latents)``: per stream int64 ``(n_codebooks, frames)``, and (if asked) the encoder output float32
        ``(latent_dim, frames)`` before quantisation.
    """
    torch = _require_torch()
    hop = int(model.hop_length)
    n_q = int(cfg.n_codebooks or model.n_codebooks)
    if not 1 <= n_q <= model.n_codebooks:
        raise ValueError(f"n_codebooks must be in 1..{model.n_codebooks}, got {n_q}")
    chunk = max(1, round(cfg.chunk_s * frame_rate(model)))
    context = receptive_field_frames(model) if cfg.context_frames is None else int(cfg.context_frames)
    device = _model_device(model)
    per_call = cfg.batch_size or (1 if device.type == "cpu" else 8)

    n_frames = [-(-len(s) // hop) for s in streams]
    padded = [np.pad(s, (0, f * hop - len(s))) for s, f in zip(streams, n_frames, strict=True)]
    codes = [np.zeros((n_q, f), dtype=np.int64) for f in n_frames]
    latents = [np.zeros((model.latent_dim, f), dtype=np.float32) for f in n_frames] if return_latents else None

    # (stream, first output frame, end output frame, first input frame); windows of equal length share a batch
    groups: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for i, frames in enumerate(n_frames):
        for f0 in range(0, frames, chunk):
            f1 = min(frames, f0 + chunk)
            a, b = max(0, f0 - context), min(frames, f1 + context)
            groups[b - a].append((i, f0, f1, a))
    with torch.inference_mode():
        for length, windows in groups.items():
            for k in range(0, len(windows), per_call):
                batch = windows[k : k + per_call]
                x = np.stack([padded[i][a * hop : (a + length) * hop] for i, _, _, a in batch])[:, None, :]
                if encoder is None:
                    z = model.encoder(torch.from_numpy(x).to(device))  # (B, latent_dim, length)
                else:
                    z = torch.from_numpy(encoder(x)).to(device)
                c = model.quantizer(z, n_q)[1].cpu().numpy()  # (B, n_q, length)
                for j, (i, f0, f1, a) in enumerate(batch):
                    codes[i][:, f0:f1] = c[j, :, f0 - a : f1 - a]
                    if latents is not None:
                        latents[i][:, f0:f1] = z[j, :, f0 - a : f1 - a].float().cpu().numpy()
    return codes, latents


def _to_codec_rate(audio: F32, sample_rate: int, model: Any) -> F32:
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    return resample(audio.astype(np.float32, copy=False), sample_rate, int(model.sample_rate))


def encode_batch(
    audios: Sequence[F32],
    sample_rates: Sequence[int] | int,
    model: Any,
    cfg: CodecConfig = CodecConfig(),
    encoder: Encoder | None = None,
) -> list[CodecTokens]:
    """Encode several signals; windows of all their channels are batched together.

    Args:
        audios: float32 ``(channels, samples)`` each, any lengths and channel counts.
        sample_rates: the rate of each signal in Hz, or one rate for all.
        model: a ``dac.DAC`` in eval mode (see :func:`hummingml.weights.load.load_dac`); runs on its parameters' device.
        cfg: windowing and batching.
        encoder: runs the encoder instead of ``model.encoder`` (e.g. :class:`hummingml.weights.openvino.
            OpenVINOEncoder`); ``model``'s quantizer still makes the codes.

    Returns:
        One :class:`CodecTokens` per signal, codes int16 ``(channels, n_codebooks, ceil(samples_at_codec_rate /
        hop))``.
    """
    if model.codebook_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook_size {model.codebook_size} does not fit int16 codes")
    rates = [sample_rates] * len(audios) if isinstance(sample_rates, int) else list(sample_rates)
    if len(rates) != len(audios):
        raise ValueError(f"{len(audios)} signals but {len(rates)} sample rates")
    streams: list[F32] = []
    channels: list[int] = []
    for audio, rate in zip(audios, rates, strict=True):
        at_codec_rate = _to_codec_rate(audio, rate, model)
        streams.extend(at_codec_rate)
        channels.append(at_codec_rate.shape[0])
    codes, _ = _encode_streams(streams, model, cfg, encoder=encoder)
    out, start = [], 0
    for n in channels:
        stacked = np.stack(codes[start : start + n]).astype(np.int16)  # (channels, n_codebooks, frames)
        out.append(CodecTokens(codes=stacked, frame_rate=frame_rate(model)))
        start += n
    return out


def encode(
    audio: F32, sample_rate: int, model: Any, cfg: CodecConfig = CodecConfig(), encoder: Encoder | None = None
) -> CodecTokens:
    """Encode every channel of ``audio`` as its own mono stream.

    Args:
        audio: float32 ``(channels, samples)``; resampled to the codec's rate here (22.05 kHz -> 44.1 kHz).
        sample_rate: rate of ``audio`` in Hz.
        model: a ``dac.DAC`` in eval mode; runs on its parameters' device.
        cfg: windowing and batching.
        encoder: runs the encoder instead of ``model.encoder`` (see :func:`encode_batch`).

    Returns:
        :class:`CodecTokens` with codes int16 ``(channels, n_codebooks, frames)``, ``frames = ceil(samples *
        codec_rate / sample_rate / hop)``, e.g. ``ceil(samples / 256)`` for 22.05 kHz input to DAC 44 kHz.
    """
    return encode_batch([audio], [sample_rate], model, cfg, encoder)[0]


def decode(tokens: CodecTokens, model: Any) -> tuple[F32, int]:
    """Decode codes back to audio (whole signal in one call: meant for round-trip checks on short clips).

    Args:
        tokens: codes int16 ``(channels, n_codebooks, frames)`` from :func:`encode` with the same model.
        model: the ``dac.DAC`` that made them.

    Returns:
        ``(audio, sample_rate)``: float32 ``(channels, frames * hop)`` at the codec's rate (44 100 Hz for DAC 44 kHz).
    """
    torch = _require_torch()
    codes = torch.from_numpy(tokens.codes.astype(np.int64)).to(_model_device(model))
    with torch.inference_mode():
        z = model.quantizer.from_codes(codes)[0]  # (channels, latent_dim, frames)
        audio = model.decode(z)[:, 0, :].float().cpu().numpy()  # (channels, frames * hop)
    return np.ascontiguousarray(audio, dtype=np.float32), int(model.sample_rate)


def resolve_backend(backend: str, device: str) -> str:
    """The encoder backend ``backend`` means on ``device`` ("cpu" or "cuda..."): "torch" or "openvino".

    Raises:
        ValueError: an unknown backend, or "openvino" on a GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"codec backend must be one of {BACKENDS}, got {backend!r}")
    on_cpu = device == "cpu"
    if backend == "openvino" and not on_cpu:
        raise ValueError(f"the openvino codec backend runs on a CPU, not {device!r}: use --codec-backend torch")
    if backend == "auto":
        return "openvino" if on_cpu and openvino.available() else "torch"
    return backend


class Codec:
    """DAC loaded once per process (a Ray actor holds one); ``model`` injects an already loaded ``dac.DAC``.

    ``identity`` says which weights were loaded (None for an injected model). ``backend`` is what runs the encoder
    (:func:`resolve_backend`); an OpenVINO encoder is compiled for torch's thread count when the Codec is made, from
    IR cached under the weights cache (converted in memory for an injected model, which has no identity).
    """

    def __init__(self, cfg: CodecConfig = CodecConfig(), model: Any = None) -> None:
        self.cfg = cfg
        self.identity: ModelIdentity | None = None
        if model is None:
            model, self.identity = load_dac(cfg.models)
        device = resolve_device(cfg.device)
        self.model = model.to(device).eval()
        self.backend = resolve_backend(cfg.backend, device)
        self.encoder: Encoder | None = None
        if self.backend == "openvino":
            torch = _require_torch()
            sha256 = self.identity.sha256 if self.identity is not None else None
            self.encoder = openvino.OpenVINOEncoder(self.model, torch.get_num_threads(), cache_dir(cfg.models), sha256)

    def encode(self, audio: F32, sample_rate: int) -> CodecTokens:
        """Codes of ``audio`` (float32 ``(channels, samples)`` at ``sample_rate`` Hz); see :func:`encode`."""
        return encode(audio, sample_rate, self.model, self.cfg, self.encoder)

    def encode_batch(self, audios: Sequence[F32], sample_rates: Sequence[int] | int) -> list[CodecTokens]:
        """Codes of several signals, batched together; see :func:`encode_batch`."""
        return encode_batch(audios, sample_rates, self.model, self.cfg, self.encoder)

    def decode(self, tokens: CodecTokens) -> tuple[F32, int]:
        """Audio at the codec's rate from codes; see :func:`decode`."""
        return decode(tokens, self.model)
