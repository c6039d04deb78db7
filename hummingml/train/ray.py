"""HummingLM training on Ray Train: the config, the per-worker loop, and the trainer.

Each step trains the AR model (codebook 0) and the NAR upsampler (one random level 1..N-1 per example) on the same
batch. Workers form a (dp, tp) device mesh; tensor parallelism and FSDP are applied by
``hummingml.train.parallel.torch``.
Every worker reads the whole joined dataset in the same order and takes every dp-th batch, starting at its dp rank,
so the tp ranks of one dp group see the same batch (a streaming split per worker would give them different ones).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from hummingml.train.config import TrainConfig
from hummingml.train.loop import train_loop_per_worker


def fit(cfg: TrainConfig) -> Any:
    """Run (or resume) training on the connected Ray cluster; returns the ``ray.train.Result``."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from hummingml.train.data import read_joined

    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # resumable batch order
    dataset = read_joined(cfg.data.features)
    if cfg.cache_dataset:
        dataset = dataset.materialize()
    if cfg.parallel.backend == "neuron":
        from hummingml.train.parallel.neuron import neuron_train_config

        placement = neuron_train_config(cfg.world_size)  # TorchXLAConfig, one worker per NeuronCore
    else:
        placement = {
            "torch_config": TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            "scaling_config": ray.train.ScalingConfig(
                num_workers=cfg.world_size, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
            ),
        }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(cfg),
        **placement,
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=os.path.abspath(cfg.storage) if "://" not in cfg.storage else cfg.storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    return trainer.fit()
