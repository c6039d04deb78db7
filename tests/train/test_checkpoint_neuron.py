"""Neuron (NxD) checkpoints load for evaluation and generation: tp shards written in NxD's on-disk layout are merged
back into the plain models (``hummingml.train.checkpoint``)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hummingml.model.batch import build_example_batch
from hummingml.model.lm import CodecLM, HummingLM, NARUpsampler, TokenLoss
from hummingml.train.checkpoint import (
    Position,
    load_checkpoint,
    merge_tp_shards,
    resolve_checkpoint,
    write_run_files,
)
from hummingml.train.config import TrainConfig, from_preset
from hummingml.train.parallel.neuron import parallelize_neuron

TP = 2


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest's ``one_torch_thread``)."""


class _LocalLayers:
    """Plain modules holding one rank's slices, with NxD's parameter names (``weight``; no ``bias`` entry when the
    layer has none): the state dict of the swapped model is what ``nxd.save_checkpoint`` saves for that rank."""

    def __init__(self, rank: int) -> None:
        self.tp_rank = rank

    def column(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight = nn.Parameter(weight)
        return layer

    row = column

    def embedding(self, name: str, embedding: nn.Embedding, weight: Tensor) -> nn.Module:
        return nn.Embedding.from_pretrained(weight, freeze=False)

    def loss(self) -> TokenLoss:
        return TokenLoss()

    def scatter_to_sequence(self, x: Tensor, dim: int) -> Tensor:
        raise AssertionError("no sequence parallelism here")


def _expected_shard(model: CodecLM, rank: int) -> dict[str, Tensor]:
    """Rank ``rank``'s slice of every entry, from NxD's layer semantics: ColumnParallelLinear weight (out / tp, in),
    RowParallelLinear weight (out, in / tp), vocab-parallel ParallelEmbedding (rows / tp, dim); norms whole."""
    out = {}
    for name, tensor in model.state_dict().items():
        module = name.rpartition(".")[0]
        if isinstance(model.get_submodule(module), (nn.Linear, nn.Embedding)):
            dim = 1 if module.endswith((".wo", ".w2")) else 0
            out[name] = tensor.chunk(TP, dim=dim)[rank]
        else:
            out[name] = tensor
    return out


def _write_nxd_tag(directory: Path, tag: str, model: CodecLM, done: bool = True) -> None:
    """The files ``nxd.save_checkpoint(directory, tag=tag, model=..., optimizer=..., scheduler=...)`` writes
    (neuronx-distributed trainer/checkpoint.py, use_xser=False), with tp=2, dp=1, pp=1."""
    root = directory / tag
    (root / "model").mkdir(parents=True)
    (root / "optim").mkdir()
    (root / "checkpoint").write_text("1")
    for rank in range(TP):
        swapped = parallelize_neuron(copy.deepcopy(model), TP, sequence_parallel=False, layers=_LocalLayers(rank))
        state = swapped.state_dict()
        expected = _expected_shard(model, rank)
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
        name = f"dp_rank_00_tp_rank_{rank:02d}_pp_rank_00.pt"
        torch.save(state, root / "model" / name)
        torch.save({"state": {}, "param_groups": []}, root / "optim" / name)
    torch.save({"last_epoch": 3}, root / "scheduler.pt")
    if done:
        (root / "done").write_text("1")


def _neuron_cfg() -> TrainConfig:
    cfg = from_preset("debug")
    return dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend="neuron", tp=TP))


def _write_checkpoint(directory: Path, cfg: TrainConfig, ar: CodecLM, nar: CodecLM, step: int, nar_done: bool = True):
    _write_nxd_tag(directory, "ar", ar)
    _write_nxd_tag(directory, "nar", nar, done=nar_done)
    write_run_files(directory, cfg, Position(step=step, epoch=0, batch_in_epoch=step))


def test_neuron_checkpoint_loads_with_the_original_logits(tmp_path: Path) -> None:
    cfg = _neuron_cfg()
    torch.manual_seed(0)
    ar, nar = HummingLM(cfg.model).eval(), NARUpsampler(cfg.model).eval()
    run = tmp_path / "run"
    _write_checkpoint(run / "checkpoint_00000010", cfg, ar, nar, step=10)
    # A later save that stopped before NxD marked the nar tag done is not a checkpoint.
    _write_checkpoint(run / "checkpoint_00000020", cfg, ar, nar, step=20, nar_done=False)
    assert resolve_checkpoint(run) == run / "checkpoint_00000010"

    loaded_cfg, loaded_ar, loaded_nar = load_checkpoint(run)  # what evaluate and generate call

    assert loaded_cfg == cfg and not loaded_ar.training and not loaded_nar.training
    batch = build_example_batch(cfg.model, 3, 6, 10, generator=torch.Generator().manual_seed(1), variable_lengths=True)
    level = torch.tensor([1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(loaded_ar.logits(loaded_ar.pack(batch)), ar.logits(ar.pack(batch)), rtol=0, atol=0)
        torch.testing.assert_close(
            loaded_nar.logits(loaded_nar.pack(batch, level)), nar.logits(nar.pack(batch, level)), rtol=0, atol=0
        )
    fresh = HummingLM(cfg.model)
    assert not torch.equal(fresh.output.weight, loaded_ar.output.weight)  # the weights came from the files


def test_bf16_shards_load_into_float32_models(tmp_path: Path) -> None:
    cfg = _neuron_cfg()
    torch.manual_seed(0)
    ar, nar = HummingLM(cfg.model).to(torch.bfloat16), NARUpsampler(cfg.model).to(torch.bfloat16)
    _write_checkpoint(tmp_path / "ckpt", cfg, ar, nar, step=1)
    _, loaded_ar, _ = load_checkpoint(tmp_path / "ckpt")
    assert {p.dtype for p in loaded_ar.parameters()} == {torch.float32}
    assert torch.equal(loaded_ar.layers[1].feed_forward.w2.weight, ar.layers[1].feed_forward.w2.weight.float())


def test_unreadable_neuron_checkpoints_say_why(tmp_path: Path) -> None:
    cfg = _neuron_cfg()
    torch.manual_seed(0)
    ar, nar = HummingLM(cfg.model), NARUpsampler(cfg.model)
    ckpt = tmp_path / "ckpt"
    _write_checkpoint(ckpt, cfg, ar, nar, step=1)
    narrow = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_ff=128))
    with pytest.raises(ValueError, match=r"\(ar\) does not fit .*size mismatch .*feed_forward"):
        load_checkpoint(ckpt, narrow)
    (ckpt / "nar" / "model" / "dp_rank_00_tp_rank_01_pp_rank_00.pt").rename(
        ckpt / "nar" / "model" / "dp_rank_00_tp_rank_02_pp_rank_00.pt"
    )
    with pytest.raises(ValueError, match=r"tp ranks \[0, 2\]"):
        load_checkpoint(ckpt)
    (ckpt / "nar" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt.tensors").mkdir()
    with pytest.raises(ValueError, match="use_xser"):
        load_checkpoint(ckpt)
    (ckpt / "ar" / "done").unlink()
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        load_checkpoint(ckpt)


def test_merge_refuses_shards_that_do_not_match() -> None:
    a = {"norm.weight": torch.ones(4), "output.weight": torch.zeros(2, 4)}
    assert merge_tp_shards([a, a])["output.weight"].shape == (4, 4)
    assert merge_tp_shards([a, a])["norm.weight"].shape == (4,)
    with pytest.raises(ValueError, match="rank 0 does not"):
        merge_tp_shards([a, {"norm.weight": torch.ones(4)}])
    with pytest.raises(ValueError, match=r"output\.weight do not concatenate"):
        merge_tp_shards([a, {**a, "output.weight": torch.zeros(2, 3)}])
