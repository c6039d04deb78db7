"""HummingLM training on Ray Train: the config, the per-worker loop, and the trainer.

Each step trains the AR model (codebook 0) and the NAR upsampler (one random level 1..N-1 per example) on the same
batch. Workers form a (dp, tp) device mesh; tensor parallelism and FSDP are applied by ``hummingml.parallelize``.
Every worker reads the whole joined dataset in the same order and takes every dp-th batch, starting at its dp rank,
so the tp ranks of one dp group see the same batch (a streaming split per worker would give them different ones).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hummingml.data import DataConfig, examples_from_row
from hummingml.train_config import PRESETS, ModelConfig, OptimConfig, ParallelConfig


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sub-configs ``model``, ``parallel`` and ``optim`` start from ``--preset``."""

    preset: str = "debug"  # debug | valle_debug | m385 | b2 | b10: the starting point of model/parallel/optim
    name: str = "hummingml-debug"  # run name: rerunning with the same name and storage resumes
    storage: str = "train-runs"  # Ray Train storage path (local dir or s3://...); checkpoints go here
    steps: int = 60  # optimizer steps in total
    batch_size: int = 4  # examples per step per dp rank
    checkpoint_every: int = 20  # steps between checkpoints (and metric reports)
    keep_checkpoints: int = 2  # newest checkpoints kept
    max_failures: int = 1  # worker failures Ray Train recovers from (restart from the last checkpoint)
    cpus_per_worker: float = 1.0  # CPUs reserved per training worker
    use_gpu: bool = False  # one GPU per worker (NCCL), else CPU (gloo)
    peak_flops: float = 0.0  # peak FLOP/s of one worker's device for the MFU estimate; 0: known GPUs only
    seed: int = 0  # model initialisation and NAR level sampling
    cache_dataset: bool = True  # keep the joined rows in Ray's object store (off when they do not fit)
    fail_at_step: int = 0  # fault injection: the first attempt raises at this step (0 = never); tests use it
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


KNOWN_PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def _peak_flops(cfg: TrainConfig) -> float:
    if cfg.peak_flops:
        return cfg.peak_flops
    import torch

    if cfg.use_gpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in KNOWN_PEAK_BF16_FLOPS.items():
            if key in name:
                return value
    return 0.0


class Batches:
    """Fixed-shape batches for one dp rank, resumable at (epoch, batch index)."""

    def __init__(self, dataset: Any, cfg: TrainConfig, dp_rank: int) -> None:
        self.dataset, self.cfg, self.dp_rank = dataset, cfg, dp_rank

    def epoch(self, epoch: int, skip: int = 0) -> Any:
        """Yield ``(index, batch)`` of ``epoch``, skipping the first ``skip`` batches of this rank."""
        from hummingml.model import make_batch

        cfg, model = self.cfg, self.cfg.model
        pending: list[dict[str, Any]] = []
        index = 0  # global batch counter of this epoch, across all dp ranks
        for row in self.dataset.iter_rows():
            pending.extend(examples_from_row(row, cfg.data, model.cond_codebooks, model.codebook_size, epoch))
            while len(pending) >= cfg.batch_size:
                chunk, pending = pending[: cfg.batch_size], pending[cfg.batch_size :]
                mine = index % cfg.parallel.dp == self.dp_rank
                local = index // cfg.parallel.dp
                index += 1
                if mine and local >= skip:
                    yield (
                        local,
                        make_batch(chunk, model, timbre_frames=cfg.data.timbre_max_frames, frames=cfg.data.frames),
                    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: build, parallelize, resume, train, report metrics and checkpoints."""
    import ray.train
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from hummingml.config import from_dict
    from hummingml.model import HummingLM, NARUpsampler, count_parameters, flops_per_token, mfu, packed_length
    from hummingml.parallelize import (
        ParallelDims,
        autocast,
        build_optimizer,
        clip_grad_norm_,
        lr_lambda,
        parallelize_torch,
        sync_gradients,
    )

    cfg = from_dict(TrainConfig, config)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device_type = "cuda" if cfg.use_gpu else "cpu"
    device = torch.device(device_type, ctx.get_local_rank()) if cfg.use_gpu else torch.device("cpu")
    dims = ParallelDims.from_config(cfg.parallel, ctx.get_world_size())
    mesh = dims.build_mesh(device_type)
    dp_rank = mesh["dp"].get_local_rank()

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    models = {"ar": HummingLM(cfg.model), "nar": NARUpsampler(cfg.model)}
    optimizers, schedulers = {}, {}
    for key, m in models.items():
        m.to(device)
        parallelize_torch(m, mesh, cfg.parallel)
        optimizers[key] = build_optimizer(m, cfg.optim, cfg.parallel, mesh)
        schedulers[key] = torch.optim.lr_scheduler.LambdaLR(optimizers[key], lr_lambda(cfg.optim, cfg.steps))
    if rank == 0:
        print(
            f"[train] AR {count_parameters(models['ar']):,} parameters, NAR {count_parameters(models['nar']):,}",
            flush=True,
        )

    def state() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, m in models.items():
            model_sd, optim_sd = get_state_dict(m, optimizers[key])
            out[key] = {"model": model_sd, "optim": optim_sd, "sched": schedulers[key].state_dict()}
        return out

    step, epoch, batch_in_epoch = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            loaded = state()
            dcp.load(loaded, checkpoint_id=directory)
            for key, m in models.items():
                set_state_dict(
                    m, optimizers[key], model_state_dict=loaded[key]["model"], optim_state_dict=loaded[key]["optim"]
                )
                schedulers[key].load_state_dict(loaded[key]["sched"])
            position = np.load(os.path.join(directory, "position.npy"))
        step, epoch, batch_in_epoch = (int(x) for x in position)
        if rank == 0:
            print(f"[train] resumed at step {step} (epoch {epoch}, batch {batch_in_epoch})", flush=True)

    batches = Batches(ray.train.get_dataset_shard("train"), cfg, dp_rank)
    seq_len = packed_length(cfg.model.layout, cfg.data.timbre_max_frames, cfg.data.frames)
    flops_tok = flops_per_token(cfg.model, seq_len)
    peak = _peak_flops(cfg)
    window: dict[str, list[float]] = {}
    tokens, started = 0, time.perf_counter()
    while step < cfg.steps:
        produced = False
        for index, batch in batches.epoch(epoch, skip=batch_in_epoch):
            produced = True
            batch = {k: v.to(device) for k, v in batch.items()}
            # NAR levels are a function of the step, so a resumed run draws what a continuous one would
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            level = torch.randint(1, cfg.model.n_codebooks, (batch["target"].shape[0],), generator=generator)
            for key, m in models.items():
                optimizers[key].zero_grad(set_to_none=True)
                with autocast(cfg.parallel, device_type):
                    loss, metrics = m(batch) if key == "ar" else m(batch, level.to(device))
                loss.backward()
                if not cfg.parallel.fsdp:
                    sync_gradients(m, mesh["dp"])
                if cfg.optim.grad_clip:
                    clip_grad_norm_(m.parameters(), cfg.optim.grad_clip)
                optimizers[key].step()
                schedulers[key].step()
                for name in ("loss", "acc", "top10_acc"):
                    window.setdefault(f"{key}_{name}", []).append(float(metrics[name]))
                tokens += int(metrics["tokens"]) if key == "ar" else 0
            step += 1
            batch_in_epoch = index + 1
            if step == cfg.fail_at_step and checkpoint is None:
                raise RuntimeError(f"injected failure at step {step} (--fail-at-step)")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - started
                tokens_per_s = tokens * cfg.parallel.dp / elapsed  # AR target tokens over all dp ranks
                report = {k: float(np.mean(v)) for k, v in window.items()}
                report.update(step=step, epoch=epoch, tokens_per_s=tokens_per_s, lr=schedulers["ar"].get_last_lr()[0])
                if peak:
                    report["mfu"] = mfu(tokens_per_s / cfg.world_size * 2, flops_tok, peak)  # AR + NAR
                with tempfile.TemporaryDirectory() as directory:
                    dcp.save(state(), checkpoint_id=directory)
                    if rank == 0:
                        np.save(os.path.join(directory, "position.npy"), np.array([step, epoch, batch_in_epoch]))
                    dist.barrier()
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory))
                if rank == 0:
                    print(
                        f"[train] step {step}/{cfg.steps} "
                        + " ".join(f"{k}={v:.4g}" for k, v in sorted(report.items()) if k not in ("step",)),
                        flush=True,
                    )
                window, tokens, started = {}, 0, time.perf_counter()
            if step >= cfg.steps:
                break
        if not produced and batch_in_epoch == 0:
            raise RuntimeError(
                f"no training examples in {cfg.data.features}: the parts {cfg.data.parts} need notes and segments of "
                f">= {cfg.data.frames + cfg.data.timbre_min_frames} frames"
            )
        if step < cfg.steps:
            epoch, batch_in_epoch = epoch + 1, 0


def fit(cfg: TrainConfig) -> Any:
    """Run (or resume) training on the connected Ray cluster; returns the ``ray.train.Result``."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from hummingml.data import read_joined

    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # resumable batch order
    dataset = read_joined(cfg.data.features)
    if cfg.cache_dataset:
        dataset = dataset.materialize()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.world_size, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
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
