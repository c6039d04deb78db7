"""The training job's config (:class:`TrainConfig`), its parallel and optimizer sub-configs, and the named presets.

Each preset is a function returning a :class:`Preset` (model + parallel + optim); :class:`TrainConfig` holds the
three as sub-configs, next to ``data``. Field comments double as CLI help (``hummingml.config.add_flags``), so each
stays on its field's line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hummingml.audio import STEMS
from hummingml.config import above, at_least, names_in, within
from hummingml.model.config import ModelConfig
from hummingml.train.data import DataConfig

# Tokens of one packed row beyond P timbre frames and 2T target frames (hummingml.model.lm.packed_length).
_PACKED_EXTRA = {"humming": 3, "valle": 1}


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

    def problems(self, prefix: str = "") -> list[str]:
        """Degrees below 1, options the chosen backend ignores or cannot run; flags named ``--{prefix}{field}``.

        What the workers would refuse is refused here, before a cluster is asked for anything: bf16 on Neuron keeps
        fp32 master weights in NxD's ZeRO-1 optimizer, so it needs zero1; torch's ZeRO-1 optimizer shards over a
        flat dp group, so it needs tp == 1.
        """
        problems = at_least(f"--{prefix}dp", self.dp, 1) + at_least(f"--{prefix}tp", self.tp, 1)
        if self.compile and self.backend != "torch":
            problems.append(f"--{prefix}compile applies to --{prefix}backend torch only")
        if self.backend == "neuron":
            if self.mixed_precision == "bf16" and not self.zero1:
                problems.append(
                    f"--{prefix}mixed-precision bf16 on --{prefix}backend neuron keeps fp32 master weights in NxD's "
                    f"ZeRO-1 optimizer: add --{prefix}zero1 (or train in fp32)"
                )
            if self.fsdp:
                problems.append(
                    f"--{prefix}fsdp applies to --{prefix}backend torch only (Neuron: --{prefix}zero1 shards the "
                    "optimizer state)"
                )
        elif self.zero1 and self.tp > 1:
            problems.append(
                f"--{prefix}zero1 with --{prefix}backend torch needs --{prefix}tp 1 (use --{prefix}fsdp with tp > 1)"
            )
        return problems


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

    def problems(self, prefix: str = "") -> list[str]:
        """Values AdamW or the schedule cannot use; flags named ``--{prefix}{field}``."""
        problems = above(f"--{prefix}lr", self.lr, 0) + at_least(f"--{prefix}warmup", self.warmup, 0)
        problems += within(f"--{prefix}min-lr-ratio", self.min_lr_ratio, 0, 1)
        problems += at_least(f"--{prefix}weight-decay", self.weight_decay, 0)
        problems += at_least(f"--{prefix}grad-clip", self.grad_clip, 0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"--{prefix}betas must be two numbers in [0, 1), e.g. 0.9,0.95 (got {self.betas})")
        return problems + above(f"--{prefix}eps", self.eps, 0)


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
        max_seq_len=576,  # the default data config's longest row: 3 + 431 timbre + 2 x 64 frames = 562, padded to 16
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
    tensorboard: bool = True  # rank 0 writes every report as TensorBoard scalars to <storage>/<name>/tensorboard
    # (a local or shared-filesystem --storage; with an object store the curves are in each checkpoint's history)
    fail_at_step: int = 0  # fault injection: rank 0 raises once per run at this step (0 = never); tests use it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    @property
    def world_size(self) -> int:
        """Training workers: dp * tp."""
        return self.parallel.dp * self.parallel.tp

    def problems(self) -> list[str]:
        """Every value no run can use, one line per problem naming its flag (``--steps must be >= 1 ...``)."""
        problems = [] if self.preset in PRESETS else [f"--preset must be one of {', '.join(PRESETS)}"]
        if not self.name:
            problems.append("--name must not be empty")
        if not self.storage:
            problems.append("--storage must not be empty")
        problems += at_least("--steps", self.steps, 1)
        problems += at_least("--batch-size", self.batch_size, 1)
        problems += at_least("--checkpoint-every", self.checkpoint_every, 1)
        problems += at_least("--keep-checkpoints", self.keep_checkpoints, 1)
        problems += at_least("--max-failures", self.max_failures, 0)
        problems += above("--cpus-per-worker", self.cpus_per_worker, 0)
        if self.model.attention == "nki" and self.parallel.backend != "neuron":
            problems.append("--model-attention nki runs only with --parallel-backend neuron")
        if self.use_gpu and self.parallel.backend == "neuron":
            problems.append("--use-gpu applies to --parallel-backend torch only (neuron: one NeuronCore per worker)")
        problems += at_least("--peak-flops", self.peak_flops, 0)
        problems += at_least("--seed", self.seed, 0)
        problems += at_least("--fail-at-step", self.fail_at_step, 0)
        problems += _data_problems(self.data, self.model)
        problems += _model_problems(self.model)
        problems += self.parallel.problems("parallel-") + _tp_problems(self.model, self.parallel)
        return problems + self.optim.problems("optim-")


def _data_problems(data: DataConfig, model: ModelConfig) -> list[str]:
    """The ``--data-*`` flags' problems, and whether the longest example packs into ``model.max_seq_len``."""
    problems = [] if data.features else ["--data-features must not be empty"]
    if not data.parts:
        problems.append("--data-parts must name at least one stem")
    problems += names_in("--data-parts", data.parts, STEMS)
    problems += at_least("--data-frames", data.frames, 1)
    problems += at_least("--data-timbre-min-frames", data.timbre_min_frames, 1)
    if data.timbre_max_frames < data.timbre_min_frames:
        problems.append(
            f"--data-timbre-max-frames ({data.timbre_max_frames}) must be >= --data-timbre-min-frames "
            f"({data.timbre_min_frames})"
        )
    problems += within("--data-mono-noise", data.mono_noise, 0, 1)
    problems += within("--data-mono-variant-prob", data.mono_variant_prob, 0, 1)
    problems += at_least("--data-jitter-frames", data.jitter_frames, 0)
    problems += at_least("--data-seed", data.seed, 0)
    problems += at_least("--data-prefetch-batches", data.prefetch_batches, 0)
    tokens = _PACKED_EXTRA.get(model.layout, 0) + data.timbre_max_frames + 2 * data.frames
    if tokens > model.max_seq_len:
        problems.append(
            f"--data-frames {data.frames} and --data-timbre-max-frames {data.timbre_max_frames} pack "
            f"into {tokens} tokens > --model-max-seq-len {model.max_seq_len}"
        )
    return problems


def _model_problems(model: ModelConfig) -> list[str]:
    """The ``--model-*`` flags' problems that ``ModelConfig.__post_init__`` lets through."""
    problems = [] if model.layout in _PACKED_EXTRA else [f"--model-layout must be one of {', '.join(_PACKED_EXTRA)}"]
    for name in ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len", "pad_multiple"):
        problems += at_least("--model-" + name.replace("_", "-"), getattr(model, name), 1)
    problems += at_least("--model-codebook-size", model.codebook_size, 2)
    for name in ("rope_theta", "norm_eps", "init_std"):
        problems += above("--model-" + name.replace("_", "-"), getattr(model, name), 0)
    return problems


def _tp_problems(model: ModelConfig, parallel: ParallelConfig) -> list[str]:
    """What tensor parallelism splits must divide by tp (hummingml.train.parallel checks it again on the workers)."""
    if parallel.tp < 1:
        return []
    problems = [
        f"--model-{name.replace('_', '-')} {n} is not divisible by --parallel-tp {parallel.tp}"
        for name, n in (("n_heads", model.n_heads), ("d_ff", model.d_ff), ("codebook_size", model.codebook_size))
        if n % parallel.tp
    ]
    if parallel.sequence_parallel and model.pad_to_max and model.max_seq_len % parallel.tp:
        problems.append(f"--model-max-seq-len {model.max_seq_len} is not divisible by --parallel-tp {parallel.tp}")
    return problems


def from_preset(preset: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig whose model/parallel/optim come from the preset named ``preset``."""
    p = PRESETS[preset]()
    return TrainConfig(preset=preset, model=p.model, parallel=p.parallel, optim=p.optim, **overrides)
