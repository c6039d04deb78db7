"""The Ray Train adapter: the joined feature sets as a Ray Dataset, the training loop as Ray Train workers.

:func:`fit` starts a ``TorchTrainer`` whose workers each run :func:`hummingml.train.loop.loop` with their Dataset
shard and a :class:`RayReporter` (reports and checkpoints go to Ray Train, which restarts failed workers from the
last one and resumes a rerun with the same ``name`` and ``storage``). Every worker gets the whole joined dataset
(``datasets_to_split=[]``); the loop takes its dp rank's share.

The only module of ``hummingml.train`` that imports ``ray`` directly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import ray
import ray.data
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from hummingml.cluster import connect
from hummingml.config import from_dict
from hummingml.output import set_files, superseded_filter
from hummingml.train.config import TrainConfig
from hummingml.train.data import AUDIO_COLUMNS, sine_columns
from hummingml.train.loop import WorkerContext, loop


def read_current(features: str, name: str, columns: list[str] | None = None) -> ray.data.Dataset:
    """The current rows of one set (``hummingml.output``: the files its commit markers name, superseded rows out).

    Args:
        features: the output root (local path or pyarrow URI).
        name: the set: ``audio-feature``, ``sine-audio-feature`` or ``errors``.
        columns: the columns to read (all when None).

    Raises:
        FileNotFoundError: the set has no committed files.
    """
    fs, files, superseded = set_files(features, name)
    if not files:
        raise FileNotFoundError(f"{features} has no committed {name} files")
    if not superseded:
        return ray.data.read_parquet(files, filesystem=fs, columns=columns)
    keys = [k for k in ("source_id", "segment_index") if columns is not None and k not in columns]
    read = None if columns is None else [*columns, *keys]  # the filter needs the key
    ds = ray.data.read_parquet(files, filesystem=fs, columns=read, include_paths=True)
    keep = superseded_filter(superseded)
    return ds.filter(lambda r: keep(r["path"], r["source_id"], r["segment_index"])).drop_columns(["path", *keys])


def read_joined(features: str, parallelism: int = 2) -> ray.data.Dataset:
    """The two feature sets' current rows as one Ray Dataset, joined on (source_id, segment_index), sorted by it."""
    audio = read_current(features, "audio-feature", list(AUDIO_COLUMNS))
    sine = read_current(features, "sine-audio-feature", sine_columns(features))
    joined = audio.join(sine, join_type="inner", num_partitions=parallelism, on=("source_id", "segment_index"))
    # a hash join's output order varies between runs; a fixed order makes the data position in a checkpoint mean
    # the same rows when a later run resumes from it
    return joined.sort(["source_id", "segment_index"])


class RayReporter:
    """The loop's :class:`~hummingml.train.loop.Reporter` under Ray Train: its checkpoint, its reports.

    Checkpoints are written to a private temporary directory (torch: every rank uploads its own shards), or, for the
    neuron backend whose checkpoint writer needs one directory that every node shares, under ``--storage`` (rank 0
    hands it to Ray Train).
    """

    def __init__(self, cfg: TrainConfig, rank: int) -> None:
        self.cfg, self.rank = cfg, rank
        self.shared = cfg.parallel.backend == "neuron"

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        """The checkpoint Ray Train restored this worker with (after a failure, or a rerun of the run), or None."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield directory

    @contextlib.contextmanager
    def checkpoint_dir(self, step: int) -> Iterator[str]:
        """A temporary directory (torch), or ``<storage>/<name>/neuron-staging/step_<step>`` (neuron)."""
        if not self.shared:
            with tempfile.TemporaryDirectory() as directory:
                yield directory
            return
        directory = os.path.join(self.cfg.storage, self.cfg.name, "neuron-staging", f"step_{step:08d}")
        os.makedirs(directory, exist_ok=True)
        yield directory

    def report(self, metrics: dict[str, float], directory: str) -> None:
        """``ray.train.report`` with the checkpoint; with a shared directory only rank 0 hands it over."""
        own = ray.train.Checkpoint.from_directory(directory) if self.rank == 0 or not self.shared else None
        ray.train.report(metrics, checkpoint=own)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker: the loop on this worker's Dataset shard, reporting to Ray Train."""
    cfg = from_dict(TrainConfig, config)
    ctx = ray.train.get_context()
    worker = WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())
    loop(cfg, ray.train.get_dataset_shard("train"), RayReporter(cfg, worker.world_rank), worker)


def neuron_train_config(num_workers: int, neuron_parallel_compile: bool = False) -> dict[str, Any]:
    """``TorchTrainer`` keyword arguments for Trainium: one worker per NeuronCore, XLA process group.

    ``TorchTrainer(train_fn, **neuron_train_config(32), run_config=...)``. ``neuron_parallel_compile`` runs
    the graph-extraction pass of ``neuron_parallel_compile`` (Ray's TorchXLAConfig field of that name).
    """
    from ray.train.torch.xla import TorchXLAConfig

    return {
        "torch_config": TorchXLAConfig(neuron_parallel_compile=neuron_parallel_compile),
        "scaling_config": ray.train.ScalingConfig(num_workers=num_workers, resources_per_worker={"neuron_cores": 1}),
    }


def fit(cfg: TrainConfig) -> ray.train.Result:
    """Run (or resume) training on the Ray cluster (:func:`hummingml.cluster.connect`); returns Ray Train's result."""
    connect()
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # resumable batch order
    dataset = read_joined(cfg.data.features)
    if cfg.cache_dataset:
        dataset = dataset.materialize()
    if cfg.parallel.backend == "neuron":
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
