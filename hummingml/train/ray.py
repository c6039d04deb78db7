"""The Ray Train adapter: the training loop as Ray Train workers, each reading its own shard of the feature sets.

:func:`fit` starts a ``TorchTrainer`` whose workers each run :func:`hummingml.train.loop.loop` with the rows of
their dp rank and a :class:`RayReporter` (reports and checkpoints go to Ray Train, which restarts failed workers from
the last one and resumes a rerun with the same ``name`` and ``storage``).

How the rows reach the workers. The driver reads the commit markers once (:func:`hummingml.train.data.commit_batches`:
each commit batch's two files and its current keys, superseded rows left out) and puts that plan in the object
store; each worker cuts its dp rank's shard from it (a contiguous run of rows, :func:`hummingml.train.data.shard`)
and reads only those commit batches' files, one batch at a time, joining the two sets within the batch
(:func:`hummingml.train.data.join_batch`). Nothing is joined across batches, sorted, or materialised.
Not Ray Train's dataset sharding: ``get_dataset_shard`` is a streaming split that hands each *worker* different rows
as they come, but the tp ranks of one dp group must train on the same batches, and a row's place in a streaming split
depends on timing, so a checkpoint's (epoch, batch) position would not name the same rows after a restart. A shard
that depends only on the plan and the dp rank gives both: tp ranks read identical rows, and a resumed worker skips
to exactly where a continuous run would be. The cost: shards are fixed for a run, and a worker's reads are not
spread over the cluster by Ray Data (each worker reads its own files, as a data loader would).

:func:`read_joined` gives the same rows as a Ray Dataset, for readers that want one (evaluation).

The only module of ``hummingml.train`` that imports ``ray`` directly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import ray
import ray.data
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from hummingml.cluster import connect
from hummingml.config import from_dict
from hummingml.output import open_root, set_files, superseded_filter
from hummingml.train.config import TrainConfig
from hummingml.train.data import CommitBatch, JoinedRows, commit_batches, join_batch
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


def read_joined(features: str, batches: list[CommitBatch] | None = None) -> ray.data.Dataset:
    """The two feature sets' current rows as one Ray Dataset, one commit batch per block, joined within each batch.

    The rows and their order are those of :class:`hummingml.train.data.JoinedRows` (commit order, key order within a
    batch; ``preserve_order`` is set on the current ``DataContext`` so that every run reads them in that order).

    Raises:
        FileNotFoundError: the output has no committed feature rows.
    """
    batches = commit_batches(features) if batches is None else batches
    if not batches:
        raise FileNotFoundError(f"{features} has no committed feature rows")
    ray.data.DataContext.get_current().execution_options.preserve_order = True

    def join(indices: dict[str, Any]) -> Any:
        fs, _ = open_root(features)
        return pa.concat_tables([join_batch(fs, batches[int(i)]) for i in indices["batch"]])

    items = ray.data.from_items([{"batch": i} for i in range(len(batches))], override_num_blocks=len(batches))
    return items.map_batches(join, batch_size=1, batch_format="numpy")


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
    """The Ray Train worker: the loop on its dp rank's rows, reporting to Ray Train.

    ``config`` is ``asdict(cfg)`` plus ``commit_batches``: the object ref of the run's plan (:func:`fit`).
    """
    config = dict(config)
    batches = ray.get(config.pop("commit_batches"))
    cfg = from_dict(TrainConfig, config)
    ctx = ray.train.get_context()
    worker = WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())
    loop(cfg, JoinedRows(cfg.data.features, batches), RayReporter(cfg, worker.world_rank), worker)


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
    """Run (or resume) training on the Ray cluster (:func:`hummingml.cluster.connect`); returns Ray Train's result.

    The commit markers are read here, once; the plan they give (every commit batch's files and current keys) goes to
    the workers through the object store. A rerun on an output that grew since reads the new plan: its rows,
    and so the shards and positions, differ from the first run's.

    Raises:
        FileNotFoundError: the output has no committed feature rows.
    """
    connect()
    batches = commit_batches(cfg.data.features)
    if not batches:
        raise FileNotFoundError(f"{cfg.data.features} has no committed feature rows")
    plan = ray.put(batches)  # held here until fit returns: the workers (and restarted ones) get it by reference
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
        train_loop_config={**asdict(cfg), "commit_batches": plan},
        **placement,
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=os.path.abspath(cfg.storage) if "://" not in cfg.storage else cfg.storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    return trainer.fit()
