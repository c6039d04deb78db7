"""Training checkpoints: the files of one, written by the training loop and read back into models.

A checkpoint is a directory (Ray Train keeps them under ``<storage>/<name>/checkpoint_*``) holding the models'
weights, plus the run files rank 0 adds with :func:`write_run_files`: :data:`POSITION_FILE` (where in the data the
run stopped) and :data:`CONFIG_FILE` (the run's config). The weights come in one of two formats:

- torch backend: a torch.distributed.checkpoint (DCP) save of ``{"ar": {"model", "optim", "sched"}, "nar": {...}}``,
  written by every rank (:data:`DCP_METADATA` marks it);
- neuron backend: one ``nxd.save_checkpoint(directory, tag=...)`` per model, tags :data:`NXD_TAGS`. As
  neuronx-distributed writes it (``trainer/checkpoint.py`` and ``trainer/checkpoint_storage.py`` in
  aws-neuron/neuronx-distributed, default ``use_xser=False``): ``<tag>/checkpoint`` (a marker, written first),
  ``<tag>/model/dp_rank_00_tp_rank_{tp:02d}_pp_rank_{pp:02d}.pt`` (``torch.save`` of that tp rank's
  ``model.state_dict()``, our FQNs unprefixed, written by the first dp rank only), ``<tag>/optim/...``,
  ``<tag>/scheduler.pt``, and ``<tag>/done`` (:data:`NXD_DONE`) once every file of the tag is saved. NxD's own
  ``scripts/checkpoint_converter.py`` merges shards by Hugging Face Llama names and needs torch-xla, so it does not
  fit these models.

Reading back (:func:`load_checkpoint`) runs on the CPU, in one process, without a process group, and gives plain
unsharded models whatever the layout: DCP reshards on load; an NxD checkpoint is consolidated on load
(:func:`read_nxd_model`: the tp shards of each tag concatenated along the split dims of
:func:`hummingml.train.parallel.neuron.tp_split_dim`, the rule the neuron backend sliced them with), in memory, with
nothing written back. Only the two model state dicts are read; the optimizer and scheduler states stay on disk.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.api import CheckpointException

from hummingml.config import from_dict
from hummingml.model.lm import HummingLM, NARUpsampler
from hummingml.train.config import TrainConfig
from hummingml.train.parallel.neuron import tp_split_dim

CONFIG_FILE = "train_config.json"  # the run's TrainConfig, from which the models are rebuilt
POSITION_FILE = "position.npy"  # int64 [step, epoch, batch_in_epoch]
DCP_METADATA = ".metadata"  # the file every DCP checkpoint directory holds
HISTORY_FILE = "metrics_history.jsonl"  # every metrics report of the run up to this checkpoint, one JSON per line
NXD_TAGS = ("ar", "nar")  # the nxd.save_checkpoint tags of the neuron backend, one per model
NXD_DONE = "done"  # the file NxD writes into a tag's directory once all its files are saved
_NXD_MODEL_FILE = re.compile(r"dp_rank_(\d+)_tp_rank_(\d+)_pp_rank_(\d+)\.pt")


@dataclass(frozen=True)
class Position:
    """Where a run stands: optimizer steps taken, the epoch, and this rank's batches of that epoch already used."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def write_run_files(
    directory: str | Path, cfg: TrainConfig, position: Position, history: Sequence[dict[str, float]] = ()
) -> None:
    """Add the position, the config and the metrics history (every report of the run so far, resumed runs
    included) to a checkpoint directory (rank 0, after the shards are saved)."""
    directory = Path(directory)
    np.save(directory / POSITION_FILE, np.array([position.step, position.epoch, position.batch_in_epoch]))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(cfg), default=str))
    (directory / HISTORY_FILE).write_text("".join(json.dumps(report) + "\n" for report in history))


def read_history(directory: str | Path) -> list[dict[str, float]]:
    """The metrics reports a checkpoint's :data:`HISTORY_FILE` holds, oldest first; [] where it has none."""
    path = Path(directory) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_position(directory: str | Path) -> Position:
    """The :class:`Position` a checkpoint was taken at.

    Raises:
        FileNotFoundError: the directory has no :data:`POSITION_FILE`.
    """
    step, epoch, batch_in_epoch = (int(x) for x in np.load(Path(directory) / POSITION_FILE))
    return Position(step, epoch, batch_in_epoch)


def is_nxd_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a complete neuron-backend checkpoint: :data:`NXD_DONE` in every tag of
    :data:`NXD_TAGS`."""
    return all((Path(directory) / tag / NXD_DONE).is_file() for tag in NXD_TAGS)


def _is_checkpoint(directory: Path) -> bool:
    return (directory / DCP_METADATA).is_file() or is_nxd_checkpoint(directory)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself if it is one, else its newest ``checkpoint_*`` subdirectory.

    So both a checkpoint directory and the run directory ``<storage>/<name>`` work, for either backend's format (a
    DCP save, or complete NxD tags; see the module docstring). The newest is the one with the highest training step
    (:data:`POSITION_FILE`), then the last by name (Ray Train 2.60 names checkpoints ``checkpoint_<date>_<time>``,
    which sort in creation order).

    Raises:
        FileNotFoundError: neither ``path`` nor any ``checkpoint_*`` below it holds a complete checkpoint.
    """
    root = Path(path).expanduser()
    if _is_checkpoint(root):
        return root
    found = [p for p in sorted(root.glob("checkpoint_*")) if _is_checkpoint(p)]
    if not found:
        raise FileNotFoundError(
            f"{root} is not a training checkpoint (no {DCP_METADATA}, nor {NXD_DONE} in each of the NxD tags "
            f"{', '.join(NXD_TAGS)}) and has no checkpoint_* directory holding one"
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


def nxd_model_files(directory: str | Path, tag: str) -> list[Path]:
    """The model files of NxD tag ``tag`` in ``directory``, one per tp rank, in rank order.

    Raises:
        FileNotFoundError: the tag has no model files.
        ValueError: a layout this module does not read: torch-xla serialization (``use_xser``), pipeline or expert
            parallel shards, or tp ranks missing.
    """
    folder = Path(directory) / tag / "model"
    if any(folder.glob("*.tensors")):
        raise ValueError(f"{folder} was saved with use_xser=True (torch-xla serialization), which is not read here")
    ranks: dict[int, Path] = {}
    for file in sorted(folder.glob("*.pt")):
        match = _NXD_MODEL_FILE.fullmatch(file.name)
        if match is None or int(match[1]) or int(match[3]):
            raise ValueError(f"{file}: only dp_rank_00_tp_rank_XX_pp_rank_00.pt files (no pipeline parallelism) load")
        ranks[int(match[2])] = file
    if not ranks:
        raise FileNotFoundError(f"{folder} holds no NxD model files")
    if sorted(ranks) != list(range(len(ranks))):
        raise ValueError(f"{folder} has the files of tp ranks {sorted(ranks)}, not 0..{len(ranks) - 1}")
    return [ranks[r] for r in range(len(ranks))]


def merge_tp_shards(shards: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """One unsharded state dict from the state dicts of tp ranks 0..tp-1 (in order): each entry concatenated along
    :func:`~hummingml.train.parallel.neuron.tp_split_dim`, or rank 0's copy where the entry is replicated.

    Raises:
        ValueError: the shards do not hold the same entries, or their parts do not concatenate.
    """
    names = list(shards[0])
    for rank, shard in enumerate(shards):
        if set(shard) != set(names):
            raise ValueError(f"tp rank {rank} holds entries {sorted(set(shard) ^ set(names))} that rank 0 does not")
    merged = {}
    for name in names:
        dim = tp_split_dim(name)
        try:
            merged[name] = shards[0][name] if dim is None else torch.cat([s[name] for s in shards], dim=dim)
        except RuntimeError as exc:
            raise ValueError(f"the tp shards of {name} do not concatenate along dim {dim}: {exc}") from exc
    return merged


def read_nxd_model(directory: str | Path, tag: str) -> dict[str, Tensor]:
    """The unsharded state dict of NxD tag ``tag`` (``"ar"`` or ``"nar"``) in a neuron checkpoint, on the CPU in the
    dtype it was saved in: :func:`merge_tp_shards` of :func:`nxd_model_files`."""
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in nxd_model_files(directory, tag)]
    return merge_tp_shards(shards)


def load_checkpoint(
    path: str | Path, cfg: TrainConfig | None = None
) -> tuple[TrainConfig, HummingLM, NARUpsampler]:
    """Rebuild the run's config and both models from a checkpoint, weights loaded on the CPU, in eval mode.

    Args:
        path: a checkpoint directory or a run directory (its newest checkpoint is used; see
            :func:`resolve_checkpoint`), of the torch (DCP) or the neuron (NxD, consolidated on load) backend; local
            paths only.
        cfg: the run's config, for checkpoints without ``train_config.json``; None reads the stored one.

    Returns:
        ``(cfg, ar, nar)``: the config, the :class:`~hummingml.model.lm.HummingLM` and the
        :class:`~hummingml.model.lm.NARUpsampler`, unsharded, float32, on the CPU. The models are built with the SDPA
        attention core whatever ``cfg.model.attention`` says (the NKI kernel holds no weights and runs only on
        Neuron); ``cfg`` is returned as stored.

    Raises:
        FileNotFoundError: no checkpoint at ``path``, or no stored config and ``cfg`` is None.
        ValueError: the checkpoint's tensors do not fit models built from the config (a missing key or a size
            mismatch, named in the message), or an NxD layout :func:`nxd_model_files` does not read.
    """
    directory = resolve_checkpoint(path)
    if cfg is None:
        cfg = load_train_config(directory)
    model_cfg = dataclasses.replace(cfg.model, attention="sdpa")
    with torch.device("cpu"):
        ar, nar = HummingLM(model_cfg), NARUpsampler(model_cfg)
    if not (directory / DCP_METADATA).is_file():
        for tag, model in zip(NXD_TAGS, (ar, nar), strict=True):
            try:
                model.load_state_dict(read_nxd_model(directory, tag))
            except RuntimeError as exc:  # load_state_dict lists every missing key and size mismatch
                reason = " ".join(str(exc).split())
                raise ValueError(f"{directory} ({tag}) does not fit models built from the config: {reason}") from exc
        return cfg, ar.eval(), nar.eval()
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
