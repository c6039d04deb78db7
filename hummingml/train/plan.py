"""What a training run would do, from its config alone: the ``--dry-run`` of ``ray_jobs.train``.

The models are built on PyTorch's meta device (shapes, no memory), so the plan of a 10B model costs no more than the
debug one's. Nothing is read: neither the features nor the checkpoints under ``--storage``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hummingml.model.flops import count_parameters, flops_per_token
from hummingml.model.lm import HummingLM, NARUpsampler, packed_length
from hummingml.train.config import TrainConfig


def placement(cfg: TrainConfig) -> dict[str, Any]:
    """The Ray Train workers the run asks for, and what each reserves (as ``hummingml.train.ray.fit`` places them)."""
    if cfg.parallel.backend == "neuron":
        return {"workers": cfg.world_size, "per_worker": {"neuron_cores": 1}, "process_group": "XLA (TorchXLAConfig)"}
    per_worker: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        per_worker["GPU"] = 1
    return {"workers": cfg.world_size, "per_worker": per_worker, "process_group": "nccl" if cfg.use_gpu else "gloo"}


def dry_run_plan(cfg: TrainConfig) -> dict[str, Any]:
    """The plan of a run with ``cfg``: placement, mesh, sharding, the models' sizes, sequence and token counts."""
    with torch.device("meta"):
        ar, nar = HummingLM(cfg.model), NARUpsampler(cfg.model)
    seq_len = packed_length(cfg.model.layout, cfg.data.timbre_max_frames, cfg.data.frames)
    p = cfg.parallel
    if p.fsdp:
        sharding = "FSDP2: parameters, gradients and optimizer state sharded over dp"
    elif p.zero1:
        sharding = "ZeRO-1: optimizer state sharded over dp" + (" (NxD)" if p.backend == "neuron" else "")
    else:
        sharding = "replicated over dp"
    storage = cfg.storage if "://" in cfg.storage else os.path.abspath(cfg.storage)
    return {
        "job": "train",
        "preset": cfg.preset,
        "backend": p.backend,
        "placement": placement(cfg),
        "mesh": {"dp": p.dp, "tp": p.tp, "sequence_parallel": p.sequence_parallel and p.tp > 1},
        "sharding": sharding,
        "precision": p.mixed_precision + (" (fp32 master weights)" if p.mixed_precision == "bf16" else ""),
        "activation_checkpoint": p.activation_checkpoint,
        "compile": p.compile,
        "models": {
            "ar_parameters": count_parameters(ar),
            "nar_parameters": count_parameters(nar),
            "layout": cfg.model.layout,
            "attention": cfg.model.attention,
        },
        "sequence": {
            "target_frames": cfg.data.frames,
            "timbre_frames": [cfg.data.timbre_min_frames, cfg.data.timbre_max_frames],
            "longest_packed_tokens": seq_len,
            "padded_to_max_seq_len": cfg.model.pad_to_max,
        },
        "steps": cfg.steps,
        "examples_per_step": cfg.batch_size * p.dp,
        "target_tokens_per_step": cfg.batch_size * p.dp * cfg.data.frames,
        "train_flops_per_target_token": flops_per_token(cfg.model, seq_len),  # per model (AR, NAR), as the MFU
        "data": {
            "features": cfg.data.features,
            "parts": list(cfg.data.parts),
            "holdout_instruments": list(cfg.data.holdout_instruments),
        },
        "checkpoints": {
            "run_dir": f"{storage.rstrip('/')}/{cfg.name}",
            "every_steps": cfg.checkpoint_every,
            "keep": cfg.keep_checkpoints,
            "resume": "from the newest checkpoint in run_dir, if any",
        },
        "max_failures": cfg.max_failures,
    }
