"""Configs of the HummingLM model, its parallelism and its optimizer, and the named presets.

Each preset is a function returning a :class:`Preset` (model + parallel + optim); the training job's own config
holds the three as sub-configs. Field comments double as CLI help (``hummingml.config.add_flags``), so each stays
on its field's line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    """The shape of one HummingLM (AR) or NAR upsampler; parameter counts per preset are in docs/model.md."""

    layout: Literal["humming", "valle"] = "humming"  # AR token layout: timbre prompt + aligned cond, or VALL-E prompt
    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 16
    d_ff: int = 3584  # MLP hidden width (SwiGLU: per matrix)
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    codebook_size: int = 1024  # DAC codebook entries per level
    n_codebooks: int = 9  # DAC levels per frame (44.1 kHz DAC: 9)
    cond_codebooks: int = 4  # first levels of the sine and the mono codes summed into each conditioning frame
    max_seq_len: int = 2048  # longest packed sequence; humming layout needs 3 + P + 2T tokens
    pad_multiple: int = 64  # packed length is rounded up to this multiple (TP sequence parallel needs tp | length)
    pad_to_max: bool = False  # pad every batch to max_seq_len: one static shape for XLA / Neuron
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02  # std of embedding and input-projection init; output projections get std/sqrt(2*n_layers)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into n_heads {self.n_heads} heads of even width")
        if not 1 <= self.cond_codebooks <= self.n_codebooks:
            raise ValueError(f"cond_codebooks {self.cond_codebooks} must be in [1, n_codebooks={self.n_codebooks}]")
        if self.n_codebooks < 2:
            raise ValueError("n_codebooks must be >= 2 (level 0 for the AR model, the rest for the NAR)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class ParallelConfig:
    """How a model is distributed; applied by ``hummingml.parallelize`` or ``hummingml.neuron``, never in the model."""

    dp: int = 1  # data-parallel degree; dp * tp must equal the world size
    tp: int = 1  # tensor-parallel degree (heads, MLP width and the output head are split tp ways)
    sequence_parallel: bool = True  # with tp > 1, shard norms and residuals along the sequence
    fsdp: bool = False  # torch: FSDP2 fully_shard over the dp mesh (parameters, grads and optimizer state sharded)
    zero1: bool = False  # shard only optimizer state over dp (torch: ZeroRedundancyOptimizer, tp == 1; neuron: NxD)
    activation_checkpoint: Literal["none", "selective", "full"] = "none"  # selective = op-level SAC; pair with compile
    mixed_precision: Literal["fp32", "bf16"] = "fp32"  # bf16 compute with fp32 master weights and fp32 grad reduce
    backend: Literal["torch", "neuron"] = "torch"
    compile: bool = False  # torch.compile each transformer block (torch backend only)

    def __post_init__(self) -> None:
        if self.fsdp and self.zero1:
            raise ValueError("choose one of fsdp and zero1")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 3e-4
    warmup: int = 1000  # linear warmup steps
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    weight_decay: float = 0.1  # applied to matrices only (not norms, not the embedding table)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        # The CLI layer turns tuples into strings ("0.9,0.95" -> ("0.9", "0.95")).
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


@dataclass(frozen=True)
class Preset:
    """A named bundle of sub-configs; dp/tp are set by the job from its world size."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def debug() -> Preset:
    """Tiny AR model for CPU tests (790,848 parameters), codes shaped like the tiny test DAC (4 x 1024)."""
    model = ModelConfig(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=256,
        codebook_size=1024,
        n_codebooks=4,
        cond_codebooks=2,
        max_seq_len=256,
        pad_multiple=16,
    )
    return Preset(model=model, optim=OptimConfig(lr=3e-3, warmup=10, weight_decay=0.0))


def valle_debug() -> Preset:
    """:func:`debug` with the VALL-E baseline layout."""
    p = debug()
    return replace(p, model=replace(p.model, layout="valle"))


def m385() -> Preset:
    """The 385M model (384,943,104 parameters): 24 layers, d 1024, 16 heads, SwiGLU 3584, DAC-44k codes (9 x 1024).

    No activation checkpointing: batch 8 x 2048 tokens took 27.6 GiB on one GPU (docs/model.md).
    """
    return Preset(
        model=ModelConfig(),
        parallel=ParallelConfig(mixed_precision="bf16"),
        optim=OptimConfig(lr=3e-4, warmup=2000),
    )


def b2() -> Preset:
    """About 2.0B parameters: 36 layers, d 2048, 16 heads (head_dim 128), SwiGLU 6144."""
    return Preset(
        model=ModelConfig(n_layers=36, d_model=2048, n_heads=16, d_ff=6144),
        parallel=ParallelConfig(mixed_precision="bf16", activation_checkpoint="full", fsdp=True),
        optim=OptimConfig(lr=2e-4, warmup=2000),
    )


def b10() -> Preset:
    """About 10B parameters: 48 layers, d 4096, 32 heads (head_dim 128), SwiGLU 11264."""
    return Preset(
        model=ModelConfig(n_layers=48, d_model=4096, n_heads=32, d_ff=11264),
        parallel=ParallelConfig(mixed_precision="bf16", activation_checkpoint="full", fsdp=True),
        optim=OptimConfig(lr=1.5e-4, warmup=2000),
    )


PRESETS = {"debug": debug, "valle_debug": valle_debug, "m385": m385, "b2": b2, "b10": b10}
