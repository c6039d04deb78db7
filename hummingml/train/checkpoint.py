"""Training checkpoints: the files of one, written by the training loop and read back into models.

A checkpoint is a directory (Ray Train keeps them under ``<storage>/<name>/checkpoint_*``) holding a
torch.distributed.checkpoint (DCP) save of ``{"ar": {"model", "optim", "sched"}, "nar": {...}}``, written by every
rank, plus the run files rank 0 adds with :func:`write_run_files`: :data:`POSITION_FILE` (where in the data the run
stopped) and :data:`CONFIG_FILE` (the run's config). The neuron backend writes NxD checkpoints instead, which only
training reads back.

Reading back (:func:`load_checkpoint`) runs on the CPU, in one process, without a process group: DCP reshards on load,
so a checkpoint written by any (dp, tp) layout, with or without FSDP, loads into plain unsharded models. Only the two
model state dicts are read; the optimizer and scheduler states stay on disk.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from hummingml.config import from_dict
from hummingml.model.lm import HummingLM, NARUpsampler
from hummingml.train.config import TrainConfig

CONFIG_FILE = "train_config.json"  # the run's TrainConfig, from which the models are rebuilt
POSITION_FILE = "position.npy"  # int64 [step, epoch, batch_in_epoch]
DCP_METADATA = ".metadata"  # the file every DCP checkpoint directory holds


@dataclass(frozen=True)
class Position:
    """Where a run stands: optimizer steps taken, the epoch, and this rank's batches of that epoch already used."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def write_run_files(directory: str | Path, cfg: TrainConfig, position: Position) -> None:
    """Add the position and the config to a checkpoint directory (rank 0, after the shards are saved)."""
    directory = Path(directory)
    np.save(directory / POSITION_FILE, np.array([position.step, position.epoch, position.batch_in_epoch]))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(cfg), default=str))


def read_position(directory: str | Path) -> Position:
    """The :class:`Position` a checkpoint was taken at.

    Raises:
        FileNotFoundError: the directory has no :data:`POSITION_FILE`.
    """
    step, epoch, batch_in_epoch = (int(x) for x in np.load(Path(directory) / POSITION_FILE))
    return Position(step, epoch, batch_in_epoch)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself if it is one, else its newest ``checkpoint_*`` subdirectory.

    So both a checkpoint directory and the run directory ``<storage>/<name>`` work. The newest is the one with the
    highest training step (:data:`POSITION_FILE`), then the last by name (Ray Train 2.60 names checkpoints
    ``checkpoint_<date>_<time>``, which sort in creation order).

    Raises:
        FileNotFoundError: neither ``path`` nor any ``checkpoint_*`` below it holds a DCP checkpoint.
        NotImplementedError: the checkpoint was written by the ``neuron`` backend (``nxd.save_checkpoint``), whose
            format this module does not read.
    """
    root = Path(path).expanduser()
    if (root / DCP_METADATA).is_file():
        return root
    candidates = [root, *sorted(root.glob("checkpoint_*"))]
    found = [p for p in candidates[1:] if (p / DCP_METADATA).is_file()]
    if not found:
        for p in candidates:
            config = p / CONFIG_FILE
            if config.is_file() and json.loads(config.read_text()).get("parallel", {}).get("backend") == "neuron":
                raise NotImplementedError(
                    f"{p} was written by the neuron backend (nxd.save_checkpoint); only torch (DCP) checkpoints load"
                )
        raise FileNotFoundError(
            f"{root} is not a training checkpoint (no {DCP_METADATA}) and has no checkpoint_* directory holding one"
        )
    return max(found, key=lambda p: (checkpoint_step(p), p.name))


def checkpoint_step(directory: str | Path) -> int:
    """The training step a checkpoint was taken at (:data:`POSITION_FILE`), -1 if it does not say."""
    return read_position(directory).step if (Path(directory) / POSITION_FILE).is_file() else -1


def load_train_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint (:data:`CONFIG_FILE`).

    Raises:
        FileNotFoundError: the checkpoint has no ``train_config.json`` (written by training since it was added; older
            checkpoints need the config passed to :func:`load_checkpoint`).
    """
    directory = resolve_checkpoint(path)
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_FILE}: it was written before training stored its config; "
            "pass the run's TrainConfig to load_checkpoint(path, cfg)"
        )
    return from_dict(TrainConfig, json.loads(file.read_text()))


def load_checkpoint(
    path: str | Path, cfg: TrainConfig | None = None
) -> tuple[TrainConfig, HummingLM, NARUpsampler]:
    """Rebuild the run's config and both models from a checkpoint, weights loaded on the CPU, in eval mode.

    Args:
        path: a checkpoint directory or a run directory (its newest checkpoint is used; see
            :func:`resolve_checkpoint`); local paths only.
        cfg: the run's config, for checkpoints without ``train_config.json``; None reads the stored one.

    Returns:
        ``(cfg, ar, nar)``: the config, the :class:`~hummingml.model.lm.HummingLM` and the
        :class:`~hummingml.model.lm.NARUpsampler`, unsharded, float32, on the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``, or no stored config and ``cfg`` is None.
        ValueError: the checkpoint's tensors do not fit models built from the config (a missing key or a size
            mismatch, named in the message).
    """
    directory = resolve_checkpoint(path)
    if cfg is None:
        cfg = load_train_config(directory)
    with torch.device("cpu"):
        ar, nar = HummingLM(cfg.model), NARUpsampler(cfg.model)
    # Only the model entries: DCP loads a subset of a checkpoint's keys, in place into these tensors.
    state = {"ar": {"model": ar.state_dict()}, "nar": {"model": nar.state_dict()}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*load in a single process.*")
        try:
            dcp.load(state, checkpoint_id=str(directory), no_dist=True)
        except CheckpointException as exc:  # a BaseException holding each rank's traceback; its last line says why
            reason = [line for line in str(exc).splitlines() if line.strip()][-1].strip()
            raise ValueError(f"{directory} does not fit models built from the config: {reason}") from exc
    ar.load_state_dict(state["ar"]["model"])
    nar.load_state_dict(state["nar"]["model"])
    return cfg, ar.eval(), nar.eval()
