"""The training job's config (:class:`TrainConfig`), its parallel and optimizer sub-configs, and the named presets.

Each preset is a function returning a :class:`Preset` (model + parallel + optim); :class:`TrainConfig` holds the
three as sub-configs, next to ``data``. Field comments double as CLI help (``hummingml.config.add_flags``), so each
stays on its field's line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hummingml.model.config import ModelConfig
from hummingml.train.data import DataConfig


@dataclass(frozen=True)
class ParallelConfig:
    """How a model is distributed; applied by ``hummingml.train.parallel``, never in the model."""

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


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sub-configs ``model``, ``parallel`` and ``optim`` start from ``--preset``."""

    preset: str = "debug"  # debug | valle_debug | m385 | b2 | b10: the starting point of model/parallel/optim
    name: str = "hummingml-debug"  # run name: rerunning with the same name and storage resumes
    storage: str = "train-runs"  # Ray Train storage path (local dir or s3://...); checkpoints go here
    steps: int = 60  # optimizer steps in total
    batch_size: int = 4  # examples per step per dp rank
    checkpoint_every: int = 20  # steps between checkpoints (and metric reports)
    keep_checkpoints: int = 2  # newest checkpoints kept (Ray Train keeps the metrics of these reports only)
    max_failures: int = 1  # worker failures Ray Train recovers from (restart from the last checkpoint)
    cpus_per_worker: float = 1.0  # CPUs reserved per training worker
    use_gpu: bool = False  # one GPU per worker (NCCL), else CPU (gloo)
    peak_flops: float = 0.0  # peak FLOP/s of one worker's device for the MFU estimate; 0: known GPUs only
    seed: int = 0  # model initialisation and NAR level sampling
    cache_dataset: bool = True  # keep the joined rows in Ray's object store (off when they do not fit)
    fail_at_step: int = 0  # fault injection: rank 0 raises once per run at this step (0 = never); tests use it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    @property
    def world_size(self) -> int:
        """Training workers: dp * tp."""
        return self.parallel.dp * self.parallel.tp


def from_preset(preset: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig whose model/parallel/optim come from the preset named ``preset``."""
    p = PRESETS[preset]()
    return TrainConfig(preset=preset, model=p.model, parallel=p.parallel, optim=p.optim, **overrides)
