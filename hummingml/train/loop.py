"""The training loop, with no Ray in it: build and parallelise the models, resume, train, report and checkpoint.

:func:`loop` runs on every worker of a run. What it reads (``data``: anything with ``iter_rows()``), where it writes
checkpoints and where its metrics go (a :class:`Reporter`) are given to it: ``hummingml.train.ray`` passes a Ray
Dataset shard and Ray Train's reports; :class:`DirectoryReporter` keeps both in a local directory (one process,
tests). Each step (:func:`train_step`) trains the AR model (codebook 0) and the NAR upsampler (one random level
1..N-1 per example) on the same batch. Workers form a (dp, tp) device mesh; tensor parallelism and FSDP are applied
by ``hummingml.train.parallel.torch``.
Each dp rank reads only its own shard of the rows (``data.shard(dp_rank, dp)``: a contiguous run of commit batches,
:func:`hummingml.train.data.shard`), so the tp ranks of one dp group read the same rows and train on the same
batches; with ``data.shuffle`` each epoch reads them in an order seeded by (seed, epoch) (:func:`epoch_order`).
A background thread cuts and collates the next batches (``data.prefetch_batches``) while the step runs.
Shards differ by at most one row but may cut into different numbers of batches, so every step the ranks agree
(one all-reduce of a flag) whether all of them still have a batch; the epoch ends for all at once when one has
none. Every rank is then at the same (epoch, batch index), which is the position a checkpoint stores.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from hummingml.model.batch import make_batch
from hummingml.model.flops import count_parameters, flops_per_token, mfu
from hummingml.model.lm import HummingLM, NARUpsampler, packed_length
from hummingml.train.checkpoint import (
    Position,
    read_history,
    read_position,
    resolve_checkpoint,
    write_run_files,
)
from hummingml.train.config import TrainConfig
from hummingml.train.curves import Curves, curves_dir
from hummingml.train.data import examples_from_row
from hummingml.train.optim import build_optimizer, lr_lambda
from hummingml.train.parallel.neuron import neuron_config, neuron_model, neuron_optimizer
from hummingml.train.parallel.torch import ParallelDims, autocast, clip_grad_norm_, parallelize_torch, sync_gradients

T = TypeVar("T")
KNOWN_PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def _peak_flops(cfg: TrainConfig) -> float:
    if cfg.peak_flops:
        return cfg.peak_flops

    if cfg.use_gpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in KNOWN_PEAK_BF16_FLOPS.items():
            if key in name:
                return value
    return 0.0


def epoch_order(seed: int, epoch: int) -> int:
    """The seed of an epoch's row order: the same on every rank of a run (tp ranks read the same batches) and in a
    resumed run (its checkpoint's batch index names the same batches)."""
    return seed * 1_000_003 + epoch


class Batches:
    """Fixed-shape batches of one dp rank's rows, resumable at (epoch, batch index)."""

    def __init__(self, rows: Rows, cfg: TrainConfig) -> None:
        self.rows, self.cfg = rows, cfg

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Yield ``(index, batch)`` of ``epoch``, skipping the first ``skip`` batches (cut, not collated)."""
        cfg, model = self.cfg, self.cfg.model
        shape = {"timbre_frames": cfg.data.timbre_max_frames, "frames": cfg.data.frames}  # fixed: one batch shape
        pending: list[dict[str, Any]] = []
        index = 0  # batch counter of this epoch on this rank
        order = epoch_order(cfg.data.seed, epoch) if cfg.data.shuffle else None
        for row in self.rows.iter_rows(order):
            pending.extend(examples_from_row(row, cfg.data, model.cond_codebooks, model.codebook_size, epoch))
            while len(pending) >= cfg.batch_size:
                chunk, pending = pending[: cfg.batch_size], pending[cfg.batch_size :]
                if index >= skip:
                    yield index, make_batch(chunk, model, **shape)
                index += 1


def prefetch(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """``items`` in the same order, up to ``depth`` of them made ahead by a background thread (``depth`` 0: none).

    An exception in the thread is raised here, at the item it stopped at; closing the generator stops the thread.
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=fill, name="hummingml-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def all_ranks_have(has: bool, backend: TorchBackend | NeuronBackend) -> bool:
    """Whether every rank has a batch for the next step (``has`` on this one); an all-reduce when dp > 1."""
    if backend.cfg.parallel.dp == 1 or not dist.is_initialized():
        return has  # the tp ranks of one dp group read the same rows: they agree already
    flag = torch.tensor([int(has)], dtype=torch.int32, device=backend.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def in_step(
    batches: Iterator[tuple[int, dict[str, torch.Tensor]]], backend: TorchBackend | NeuronBackend
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``batches`` while every rank still has one (:func:`all_ranks_have`): all ranks end an epoch at the same step."""
    for item in batches:
        if not all_ranks_have(True, backend):
            return
        yield item
    all_ranks_have(False, backend)


class TorchBackend:
    """PyTorch on CPU (gloo) or GPU (NCCL): DTensor TP + FSDP2 / ZeRO-1 on a (dp, tp) mesh, DCP checkpoints."""

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext) -> None:
        self.cfg = cfg
        self.device_type = "cuda" if cfg.use_gpu else "cpu"
        self.device = torch.device(self.device_type, ctx.local_rank) if cfg.use_gpu else torch.device("cpu")
        self.mesh = ParallelDims.from_config(cfg.parallel, ctx.world_size).build_mesh(self.device_type)
        self.dp_rank = self.mesh["dp"].get_local_rank()
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.models = {"ar": HummingLM(cfg.model), "nar": NARUpsampler(cfg.model)}
        self.optimizers, self.schedulers = {}, {}
        for key, m in self.models.items():
            m.to(self.device)
            parallelize_torch(m, self.mesh, cfg.parallel)
            self.optimizers[key] = build_optimizer(m, cfg.optim, cfg.parallel, self.mesh)
            self.schedulers[key] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers[key], lr_lambda(cfg.optim, cfg.steps)
            )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's autocast context (bf16 when ``mixed_precision`` asks for it)."""
        return autocast(self.cfg.parallel, self.device_type)

    def after_backward(self, model: Any) -> None:
        """Average grads over dp (FSDP does it inside backward) and clip."""
        if not self.cfg.parallel.fsdp:
            sync_gradients(model, self.mesh["dp"])
        if self.cfg.optim.grad_clip:
            clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip)

    def end_step(self) -> None:
        """Nothing to flush on eager devices."""

    def _state(self) -> dict[str, Any]:
        out = {}
        for key, m in self.models.items():
            model_sd, optim_sd = get_state_dict(m, self.optimizers[key])
            out[key] = {"model": model_sd, "optim": optim_sd, "sched": self.schedulers[key].state_dict()}
        return out

    def save(self, directory: str) -> None:
        """Every rank writes its shards of the models, optimizers and schedulers (torch.distributed.checkpoint)."""
        dcp.save(self._state(), checkpoint_id=directory)

    def load(self, directory: str) -> None:
        """Inverse of :meth:`save`, resharding to this run's layout."""
        state = self._state()
        dcp.load(state, checkpoint_id=directory)
        for key, m in self.models.items():
            set_state_dict(
                m, self.optimizers[key], model_state_dict=state[key]["model"], optim_state_dict=state[key]["optim"]
            )
            self.schedulers[key].load_state_dict(state[key]["sched"])


class NeuronBackend:
    """Trainium: neuronx-distributed's parallel layers and ZeRO-1 optimizer on the XLA device, NxD checkpoints.

    NxD writes one checkpoint directory from every rank, so it must be on a filesystem all nodes share (FSx for
    Lustre): ``--storage`` is used for it directly.
    """

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext) -> None:
        import torch_xla.core.xla_model as xm
        from neuronx_distributed.parallel_layers import parallel_state

        self.cfg, self.xm = cfg, xm
        self.device = xm.xla_device()
        nxd_config = neuron_config(cfg.parallel, cfg.optim)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        dtype = torch.bfloat16 if cfg.parallel.mixed_precision == "bf16" else torch.float32
        self.models = {
            "ar": neuron_model(cfg.model, nxd_config, HummingLM, cfg.seed, dtype),
            "nar": neuron_model(cfg.model, nxd_config, NARUpsampler, cfg.seed, dtype),
        }
        self.optimizers = {k: neuron_optimizer(m, cfg.optim, nxd_config) for k, m in self.models.items()}
        self.schedulers = {
            k: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg.optim, cfg.steps)) for k, o in self.optimizers.items()
        }

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """No autocast: the models are already in the run's dtype."""
        return contextlib.nullcontext()

    def after_backward(self, model: Any) -> None:
        """NxD's optimizer wrapper reduces grads over dp and clips inside ``step``."""

    def end_step(self) -> None:
        """Cut the lazily traced XLA graph: one compiled graph per step."""
        self.xm.mark_step()

    def save(self, directory: str) -> None:
        import neuronx_distributed as nxd

        for key, m in self.models.items():
            nxd.save_checkpoint(
                directory, tag=key, model=m, optimizer=self.optimizers[key], scheduler=self.schedulers[key]
            )

    def load(self, directory: str) -> None:
        import neuronx_distributed as nxd

        for key, m in self.models.items():
            nxd.load_checkpoint(
                directory, tag=key, model=m, optimizer=self.optimizers[key], scheduler=self.schedulers[key]
            )


class Rows(Protocol):
    """What the loop reads: the joined feature rows, the same ones in the same order on every call
    (:class:`hummingml.train.data.JoinedRows`)."""

    def shard(self, index: int, count: int) -> Rows:
        """The rows of dp rank ``index`` of ``count``: disjoint shards that together hold every row."""
        ...

    def iter_rows(self, order: int | None = None) -> Iterable[dict[str, Any]]:
        """Every row once: in a fixed order, or in one drawn from the seed ``order`` (the same for the same seed)."""
        ...


class Reporter(Protocol):
    """Where the loop's checkpoints and metrics go, and where a resumed run finds its last checkpoint."""

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        """The directory of the checkpoint to resume from while the context is open, or None for a fresh run."""
        ...

    def checkpoint_dir(self, step: int) -> contextlib.AbstractContextManager[str]:
        """A directory to write the checkpoint of ``step`` into; it is handed to :meth:`report` inside the context."""
        ...

    def report(self, metrics: dict[str, float], directory: str) -> None:
        """Record ``metrics`` with the checkpoint just written to ``directory`` (called on every rank)."""
        ...


@dataclass(frozen=True)
class WorkerContext:
    """This worker's place in the run (Ray Train's ``get_context()`` numbers; one process: the defaults)."""

    world_rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the GPU index on this node


class DirectoryReporter:
    """Checkpoints as ``<root>/checkpoint_<step>``, metrics in :attr:`history`; resumes from the newest checkpoint.

    For runs in one process without Ray (tests, debugging). ``keep`` newest checkpoints stay on disk.
    """

    def __init__(self, root: str | os.PathLike[str], keep: int = 2) -> None:
        self.root, self.keep = Path(root), keep
        self.history: list[dict[str, float]] = []

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        """The newest checkpoint under the root, or None."""
        try:
            newest: str | None = str(resolve_checkpoint(self.root))
        except FileNotFoundError:
            newest = None
        yield newest

    @contextlib.contextmanager
    def checkpoint_dir(self, step: int) -> Iterator[str]:
        """``<root>/checkpoint_<step>`` (created); older checkpoints beyond ``keep`` are deleted afterwards."""
        directory = self.root / f"checkpoint_{step:08d}"
        directory.mkdir(parents=True, exist_ok=True)
        yield str(directory)
        for old in sorted(self.root.glob("checkpoint_*"))[: -self.keep]:
            shutil.rmtree(old)

    def report(self, metrics: dict[str, float], directory: str) -> None:
        """Append ``metrics`` to :attr:`history`."""
        self.history.append(metrics)


def make_backend(cfg: TrainConfig, ctx: WorkerContext) -> TorchBackend | NeuronBackend:
    """The models, optimizers and schedulers of this worker, parallelised for ``cfg.parallel.backend``."""
    return NeuronBackend(cfg, ctx) if cfg.parallel.backend == "neuron" else TorchBackend(cfg, ctx)


def train_step(backend: TorchBackend | NeuronBackend, batch: dict[str, Any], step: int) -> dict[str, dict[str, Any]]:
    """One optimizer step of the AR model and of the NAR upsampler on ``batch`` (on the backend's device); returns
    each model's metrics.

    The NAR level of each example is drawn from a generator seeded by ``step``, so a resumed run draws what a
    continuous one would.
    """
    cfg = backend.cfg
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    level = torch.randint(1, cfg.model.n_codebooks, (batch["target"].shape[0],), generator=generator)
    metrics = {}
    for key, m in backend.models.items():
        backend.optimizers[key].zero_grad(set_to_none=True)
        with backend.autocast():
            loss, metrics[key] = m(batch) if key == "ar" else m(batch, level.to(backend.device))
        loss.backward()
        backend.after_backward(m)
        backend.optimizers[key].step()
        backend.schedulers[key].step()
    backend.end_step()
    return metrics


def loop(cfg: TrainConfig, data: Rows, reporter: Reporter, ctx: WorkerContext | None = None) -> None:
    """Train ``cfg.steps`` steps (resuming where ``reporter``'s latest checkpoint stopped) on ``data``.

    Every ``cfg.checkpoint_every`` steps and at the end, every rank writes its checkpoint shards into
    ``reporter.checkpoint_dir(step)``, rank 0 adds the run files (``hummingml.train.checkpoint``, with the metrics
    history) and the TensorBoard scalars (``hummingml.train.curves``, when ``cfg.tensorboard``), and every rank
    calls ``reporter.report`` with the metrics averaged since the last report. The torch backend needs a process group
    (Ray Train makes one; in one process, ``hummingml.train.parallel.torch.local_process_group``).

    Raises:
        RuntimeError: ``data`` yields no training example, or ``cfg.fail_at_step`` injected a failure.
    """
    ctx = ctx or WorkerContext()
    rank = ctx.world_rank
    backend = make_backend(cfg, ctx)
    models, schedulers = backend.models, backend.schedulers
    if rank == 0:
        print(
            f"[train] AR {count_parameters(models['ar']):,} parameters, NAR {count_parameters(models['nar']):,}",
            flush=True,
        )

    position = Position()
    history: list[dict[str, float]] = []  # every report of the run, resumed runs included (the loss curves)
    logdir = curves_dir(cfg.storage, cfg.name) if cfg.tensorboard and rank == 0 else None
    curves = Curves(logdir) if logdir is not None else None
    with reporter.latest_checkpoint() as directory:
        if directory is not None:
            backend.load(directory)
            position = read_position(directory)
            history = read_history(directory)
            if rank == 0:
                print(
                    f"[train] resumed at step {position.step} (epoch {position.epoch}, "
                    f"batch {position.batch_in_epoch})",
                    flush=True,
                )
    step, epoch, batch_in_epoch = position.step, position.epoch, position.batch_in_epoch

    batches = Batches(data.shard(backend.dp_rank, cfg.parallel.dp), cfg)
    seq_len = packed_length(cfg.model.layout, cfg.data.timbre_max_frames, cfg.data.frames)
    flops_tok = flops_per_token(cfg.model, seq_len)
    peak = _peak_flops(cfg)
    window: dict[str, list[float]] = {}
    tokens, started = 0, time.perf_counter()
    while step < cfg.steps:
        produced = False
        ahead = prefetch(batches.epoch(epoch, skip=batch_in_epoch), cfg.data.prefetch_batches)
        for index, batch in in_step(ahead, backend):
            produced = True
            batch = {k: v.to(backend.device) for k, v in batch.items()}
            step_metrics = train_step(backend, batch, step)
            for key, metrics in step_metrics.items():
                for name in ("loss", "acc", "top10_acc"):
                    window.setdefault(f"{key}_{name}", []).append(float(metrics[name]))
            tokens += int(step_metrics["ar"]["tokens"])
            step += 1
            batch_in_epoch = index + 1
            if step == cfg.fail_at_step and rank == 0:
                _inject_failure_once(cfg)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - started
                tokens_per_s = tokens * cfg.parallel.dp / elapsed  # AR target tokens over all dp ranks
                report = {k: float(np.mean(v)) for k, v in window.items()}
                lr = float(schedulers["ar"].get_last_lr()[0])
                report.update(step=step, epoch=epoch, tokens_per_s=tokens_per_s, lr=lr)
                if peak:
                    report["mfu"] = mfu(tokens_per_s / cfg.world_size * 2, flops_tok, peak)  # AR + NAR
                with torch.no_grad():  # teacher-forced accuracy of every NAR level on this step's batch
                    for level_index, level_metrics in cast(NARUpsampler, models["nar"]).level_metrics(batch).items():
                        for name in ("acc", "top10_acc"):
                            report[f"nar_level{level_index}_{name}"] = level_metrics[name]
                with reporter.checkpoint_dir(step) as directory:
                    backend.save(directory)
                    if rank == 0:
                        history.append(report)
                        write_run_files(directory, cfg, Position(step, epoch, batch_in_epoch), history)
                        if curves is not None:
                            curves.add(report)
                    if dist.is_initialized():
                        dist.barrier()
                    reporter.report(report, directory)
                if rank == 0:
                    print(
                        f"[train] step {step}/{cfg.steps} "
                        + " ".join(f"{k}={v:.4g}" for k, v in sorted(report.items()) if k not in ("step",)),
                        flush=True,
                    )
                window, tokens, started = {}, 0, time.perf_counter()
            if step >= cfg.steps:
                break
        ahead.close()  # stops the prefetch thread when the run ends inside the epoch
        if not produced and batch_in_epoch == 0:
            raise RuntimeError(
                f"no training examples in {cfg.data.features}: the parts {cfg.data.parts} need notes and segments of "
                f">= {cfg.data.frames + cfg.data.timbre_min_frames} frames"
            )
        if step < cfg.steps:
            epoch, batch_in_epoch = epoch + 1, 0
    if curves is not None:
        curves.close()


def _inject_failure_once(cfg: TrainConfig) -> None:
    """Raise the injected failure unless an earlier attempt of this run did (a marker file under ``--storage``).

    A marker, not "no checkpoint yet": a worker that fails right after a report can restart without that checkpoint
    (Ray Train registers reports asynchronously), and must not fail again.
    """
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(cfg.storage if "://" in cfg.storage else os.path.abspath(cfg.storage))
    marker = f"{base}/{cfg.name}/injected-failure-at-step-{cfg.fail_at_step}"
    if fs.get_file_info(marker).type != pafs.FileType.NotFound:
        return
    fs.create_dir(f"{base}/{cfg.name}", recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(b"fired\n")
    raise RuntimeError(f"injected failure at step {cfg.fail_at_step} (--fail-at-step)")
