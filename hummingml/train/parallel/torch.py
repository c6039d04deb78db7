"""PyTorch parallelism for a plain :class:`hummingml.model.lm.CodecLM`: TP -> AC -> compile -> FSDP2 (torchtitan order).

The model has no parallel code; everything here is keyed by module FQN. On one host with gloo this runs on CPU
(tests/train/test_parallel_torch.py); on GPUs use the nccl backend and ``ParallelDims.build_mesh("cuda")``.

Data parallelism: FSDP2 (``fsdp=True``) shards parameters, gradients and optimizer state and reduces gradients
itself. Otherwise call :func:`sync_gradients` after backward when dp > 1; ``zero1=True`` then shards only the
optimizer state with ``torch.distributed.optim.ZeroRedundancyOptimizer``, for tp == 1 only: it partitions and
broadcasts plain parameter tensors over one process group and is neither designed nor tested for DTensor parameters
of a TP mesh (use FSDP2 with tp > 1).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from hummingml.model.lm import CodecLM
from hummingml.train.config import ParallelConfig


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of data and tensor parallelism; ``dp * tp`` must equal the world size."""

    dp: int
    tp: int
    world_size: int

    def __post_init__(self) -> None:
        if self.dp * self.tp != self.world_size:
            raise ValueError(f"dp {self.dp} * tp {self.tp} != world_size {self.world_size}")
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"parallel dims: dp={self.dp} tp={self.tp} world_size={self.world_size}", flush=True)

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> ParallelDims:
        """The dims of ``cfg`` on ``world_size`` workers."""
        return cls(dp=cfg.dp, tp=cfg.tp, world_size=world_size)

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """A (dp, tp) mesh named ("dp", "tp"); needs an initialised process group."""
        return init_device_mesh(device_type, (self.dp, self.tp), mesh_dim_names=("dp", "tp"))


@contextlib.contextmanager
def local_process_group() -> Iterator[None]:
    """A gloo process group of this process alone (world size 1), for running the training loop without a launcher.

    Ray Train's workers and ``torchrun`` make their own; this one is destroyed when the context exits.
    """
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    with tempfile.TemporaryDirectory() as directory:
        dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def tp_plan(model: CodecLM, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """FQN -> ParallelStyle for ``model``'s blocks, final norm and head.

    ``tok_embeddings`` stays a replicated plain tensor (its rows are only (n_tables * codebook_size) x d_model and
    a lookup needs no communication). With sequence parallelism the residual stream between blocks is sharded along
    the sequence (dim 1): block 0 takes its local chunk of the replicated embeddings, each attention / MLP input is
    all-gathered and each output reduce-scattered, norms run on their sequence shard.
    """
    plan: dict[str, ParallelStyle] = {}
    seq = Shard(1)
    for i, block in enumerate(model.blocks()):
        p = f"layers.{i}"
        if sequence_parallel:
            plan[f"{p}.attention_norm"] = SequenceParallel()
            plan[f"{p}.ffn_norm"] = SequenceParallel()
            plan[f"{p}.attention"] = PrepareModuleInput(
                input_layouts=(seq, None, None), desired_input_layouts=(Replicate(), None, None)
            )
            plan[f"{p}.feed_forward"] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),))
        out_layout = seq if sequence_parallel else Replicate()
        for name in ("wq", "wk", "wv"):
            plan[f"{p}.attention.{name}"] = ColwiseParallel()
        plan[f"{p}.attention.wo"] = RowwiseParallel(output_layouts=out_layout)
        plan[f"{p}.feed_forward.w1"] = ColwiseParallel()
        if block.feed_forward.w3 is not None:
            plan[f"{p}.feed_forward.w3"] = ColwiseParallel()
        plan[f"{p}.feed_forward.w2"] = RowwiseParallel(output_layouts=out_layout)
    if sequence_parallel:
        # Replicate -> Shard(1) is a local slice: no communication.
        plan["layers.0"] = PrepareModuleInput(
            input_layouts=(Replicate(), None, None), desired_input_layouts=(seq, None, None), use_local_output=True
        )
        plan["norm"] = SequenceParallel()
    # Logits are gathered over the vocab (1024 codes: as small as one hidden state) so the loss and top-k metrics
    # stay plain PyTorch.
    plan["output"] = ColwiseParallel(
        input_layouts=seq if sequence_parallel else Replicate(), output_layouts=Replicate()
    )
    return plan


def apply_tp(model: CodecLM, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard heads, MLP width and the head ``tp_mesh.size()`` ways (in place)."""
    tp, cfg = tp_mesh.size(), model.cfg
    for name, n in (("n_heads", cfg.n_heads), ("d_ff", cfg.d_ff), ("codebook_size", cfg.codebook_size)):
        if n % tp:
            raise ValueError(f"{name}={n} is not divisible by tp={tp}")
    if sequence_parallel:
        model.pad_multiple = math.lcm(model.pad_multiple, tp)  # every sequence shard gets S / tp positions
        if cfg.pad_to_max and cfg.max_seq_len % tp:
            raise ValueError(f"max_seq_len={cfg.max_seq_len} is not divisible by tp={tp}")
    parallelize_module(model, tp_mesh, tp_plan(model, sequence_parallel))


# Selective AC keeps the outputs of these ops and recomputes the rest of a block (norms, RoPE, activations).
_SAC_SAVE = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}


def _selective_context() -> tuple[Any, Any]:
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        return CheckpointPolicy.MUST_SAVE if op in _SAC_SAVE else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(model: CodecLM, mode: str) -> None:
    """Wrap every block in a checkpoint wrapper: "full" recomputes the block, "selective" all but ``_SAC_SAVE``."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if mode not in ("selective", "full"):
        raise ValueError(f"activation checkpoint mode {mode!r}")
    for name, block in model.layers.named_children():
        kwargs: dict[str, Any] = {"preserve_rng_state": False}  # the blocks have no dropout
        if mode == "selective":
            kwargs["context_fn"] = _selective_context
        model.layers.register_module(name, checkpoint_wrapper(block, **kwargs))


def apply_fsdp(model: CodecLM, dp_mesh: DeviceMesh, mixed_precision: str) -> None:
    """FSDP2 per block, then the root (embeddings, final norm, head); bf16 compute with fp32 reduce if asked."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    n = len(model.layers)
    for i, block in enumerate(model.layers):
        # The last block's params are needed again right away by backward: keep them gathered.
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=i < n - 1)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)


def parallelize_torch(model: CodecLM, mesh: DeviceMesh, cfg: ParallelConfig) -> CodecLM:
    """Apply TP (if tp > 1), activation checkpointing, torch.compile, FSDP2 (if fsdp), in that order, in place.

    ``mesh`` is the (dp, tp) mesh of :meth:`ParallelDims.build_mesh`. Works on a model on the meta device too
    (then ``to_empty`` + ``init_weights`` after). Returns ``model``.
    """
    if cfg.backend != "torch":
        raise ValueError(f"parallelize_torch got backend={cfg.backend!r}; "
                         "use hummingml.train.parallel.neuron for Neuron")
    if mesh["tp"].size() != cfg.tp or mesh["dp"].size() != cfg.dp:
        raise ValueError(f"mesh {tuple(mesh.shape)} does not match dp={cfg.dp}, tp={cfg.tp}")
    if cfg.tp > 1:
        apply_tp(model, mesh["tp"], cfg.sequence_parallel)
    if cfg.activation_checkpoint != "none":
        apply_activation_checkpointing(model, cfg.activation_checkpoint)
    if cfg.compile:
        for block in model.layers:
            block.compile()
    if cfg.fsdp:
        apply_fsdp(model, mesh["dp"], cfg.mixed_precision)
    return model


def autocast(cfg: ParallelConfig, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for mixed precision without FSDP (FSDP's MixedPrecisionPolicy casts by itself)."""
    if cfg.mixed_precision == "bf16" and not cfg.fsdp:
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def sync_gradients(model: nn.Module, dp_mesh: DeviceMesh, bucket_numel: int = 1 << 24) -> None:
    """Average gradients over the dp mesh in flat buckets (the non-FSDP data-parallel path; no-op for dp == 1)."""
    n = dp_mesh.size()
    if n == 1:
        return
    group = dp_mesh.get_group()
    grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    bucket: list[Tensor] = []

    def flush() -> None:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        flat /= n
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket.clear()

    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or sum(b.numel() for b in bucket) + g.numel() > bucket_numel):
            flush()
        bucket.append(g)
    if bucket:
        flush()


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Clip to a global L2 norm over plain and DTensor grads (any mix of meshes); returns the norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    by_mesh: dict[DeviceMesh, list[Tensor]] = {}
    for g in grads:
        if isinstance(g, DTensor):
            by_mesh.setdefault(g.device_mesh, []).append(g)
    squares: list[Tensor] = []
    if plain:
        squares.append(torch.nn.utils.get_total_norm(plain).float() ** 2)  # replicated: counted once
    for sharded in by_mesh.values():
        # cast: the norm of DTensors is a DTensor on their mesh; get_total_norm is annotated as returning a Tensor.
        norm = cast(DTensor, torch.nn.utils.get_total_norm(sharded))
        squares.append(norm.full_tensor().float() ** 2)
    if not squares:
        return torch.zeros(())
    total = torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()
    if max_norm > 0:
        # One call per mesh: a foreach op cannot mix DTensors of different meshes.
        for group in [plain, *by_mesh.values()]:
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
