"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from hummingml.train.config import OptimConfig, ParallelConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; norms and the embedding table are not decayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "tok_embeddings" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, optim: OptimConfig, parallel: ParallelConfig, mesh: DeviceMesh | None = None
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; ``parallel.zero1`` shards its state over ``mesh["dp"]`` (needs tp == 1)."""
    groups = param_groups(model, optim.weight_decay)
    if not parallel.zero1:
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)
    if problems := parallel.problems("parallel-"):
        raise ValueError("; ".join(problems))
    from torch.distributed.optim import ZeroRedundancyOptimizer

    group = mesh["dp"].get_group() if mesh is not None else None
    return ZeroRedundancyOptimizer(
        groups, torch.optim.AdamW, process_group=group, lr=optim.lr, betas=optim.betas, eps=optim.eps
    )


def lr_lambda(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of ``optim.lr`` at a step: linear warmup, then cosine down to ``min_lr_ratio`` at total_steps."""

    def f(step: int) -> float:
        if step < optim.warmup:
            return (step + 1) / optim.warmup
        t = min(1.0, (step - optim.warmup) / max(1, total_steps - optim.warmup))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f
