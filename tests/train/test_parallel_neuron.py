"""The NxD swap logic, checked with a fake layer factory (no Neuron packages needed)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hummingml.model.batch import build_example_batch
from hummingml.model.lm import CodecLM, HummingLM, NARUpsampler, TokenLoss
from hummingml.train.config import debug
from hummingml.train.parallel.neuron import NxDLayers, parallelize_neuron
from hummingml.train.ray import neuron_train_config


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest's ``one_torch_thread``)."""


class _LocalVocabEmbedding(nn.Module):
    """This rank's rows of a vocab-sharded table; other ids give zeros (NxD's lookup before its all-reduce)."""

    def __init__(self, weight: Tensor, start: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.start = start

    def forward(self, idx: Tensor) -> Tensor:
        local = idx - self.start
        inside = (local >= 0) & (local < self.weight.shape[0])
        return F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight) * inside.unsqueeze(-1)


class _LocalLoss(TokenLoss):
    """CE over this rank's vocab shard only: enough to run the sharded shapes end to end."""

    def per_token(self, logits: Tensor, labels: Tensor) -> Tensor:
        return super().per_token(logits, labels.clamp(min=0) % logits.shape[-1])


class FakeLayers:
    """Records every swap (name, kind, local weight) and returns plain modules of the local shapes."""

    def __init__(self, tp: int, rank: int) -> None:
        self.tp, self.tp_rank = tp, rank
        self.calls: dict[str, tuple[str, Tensor, bool | None]] = {}
        self.returned: dict[str, nn.Module] = {}
        self.scattered: list[tuple[int, ...]] = []

    def _linear(self, name: str, kind: str, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        assert name not in self.calls, f"{name} swapped twice"
        self.calls[name] = (kind, weight, sp)
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        lin.weight = nn.Parameter(weight)
        self.returned[name] = lin
        return lin

    def column(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        return self._linear(name, "column", weight, bias, sp)

    def row(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        return self._linear(name, "row", weight, bias, sp)

    def embedding(self, name: str, embedding: nn.Embedding, weight: Tensor) -> nn.Module:
        self.calls[name] = ("embedding", weight, None)
        self.returned[name] = _LocalVocabEmbedding(weight, self.tp_rank * weight.shape[0])
        return self.returned[name]

    def loss(self) -> TokenLoss:
        return _LocalLoss()

    def scatter_to_sequence(self, x: Tensor, dim: int) -> Tensor:
        self.scattered.append(tuple(x.shape))
        return x.chunk(self.tp, dim)[self.tp_rank]


def _expected(model: CodecLM, tp: int, rank: int) -> dict[str, tuple[str, Tensor]]:
    """What the swap must do, derived from the plain model: kind and local slice of every Linear / Embedding."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            out[name] = ("embedding", m.weight.detach().chunk(tp, 0)[rank])
        elif isinstance(m, nn.Linear):
            if name.endswith((".wo", ".w2")):
                out[name] = ("row", m.weight.detach().chunk(tp, 1)[rank])
            else:  # wq wk wv w1 w3 and the output head
                out[name] = ("column", m.weight.detach().chunk(tp, 0)[rank])
    return out


def _models() -> list[CodecLM]:
    cfg = debug().model
    return [
        HummingLM(cfg),
        HummingLM(replace(cfg, mlp="gelu")),
        HummingLM(replace(cfg, layout="valle")),
        NARUpsampler(cfg),
    ]


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("sp", [False, True])
def test_swap_covers_every_linear_and_embedding_with_local_slices(tp: int, sp: bool) -> None:
    for model in _models():
        rank = tp - 1
        expected = _expected(model, tp, rank)
        norms_before = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.RMSNorm)}
        fake = FakeLayers(tp, rank)
        parallelize_neuron(model, tp, sequence_parallel=sp, layers=fake)
        assert set(fake.calls) == set(expected)
        for name, (kind, local) in expected.items():
            got_kind, got, got_sp = fake.calls[name]
            assert got_kind == kind, name
            assert torch.equal(got, local), name
            assert got_sp in (None, sp)
            assert model.get_submodule(name) is fake.returned[name]
        cfg = model.cfg
        d, V = cfg.d_model, cfg.codebook_size
        assert fake.calls["layers.0.attention.wq"][1].shape == (d // tp, d)
        assert fake.calls["layers.0.attention.wo"][1].shape == (d, d // tp)
        assert fake.calls["layers.0.feed_forward.w1"][1].shape == (cfg.d_ff // tp, d)
        assert fake.calls["layers.0.feed_forward.w2"][1].shape == (d, cfg.d_ff // tp)
        assert fake.calls["output"][1].shape == (V // tp, d)
        assert fake.calls["tok_embeddings"][1].shape == (model.vocab.n_rows // tp, d)
        # Norms stay plain modules; with SP their weights are tagged for NxD's TP grad all-reduce.
        assert {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.RMSNorm)} == norms_before
        tags = [
            getattr(m.weight, "sequence_parallel_enabled", False) for m in model.modules() if isinstance(m, nn.RMSNorm)
        ]
        assert all(tags) if sp else not any(tags)
        assert isinstance(model.loss, _LocalLoss)


def test_sharded_shapes_run_end_to_end() -> None:
    """With tp=2 local shapes (no collectives) a forward still runs: the model infers its local head count."""
    torch.manual_seed(0)
    for model in _models():
        parallelize_neuron(model, 2, sequence_parallel=False, layers=FakeLayers(2, 1))
        batch = build_example_batch(model.cfg, 2, 4, 8, generator=torch.Generator().manual_seed(0))
        packed = model.pack(batch)
        logits = model.logits(packed)
        assert logits.shape == (*packed.labels.shape, model.cfg.codebook_size // 2)
        loss, metrics = model(batch)
        assert torch.isfinite(loss)
        assert int(metrics["tokens"]) == int(batch["target_len"].sum())


def test_sequence_parallel_scatters_block_input() -> None:
    model = HummingLM(debug().model)
    fake = FakeLayers(2, 0)
    parallelize_neuron(model, 2, sequence_parallel=True, layers=fake)
    x = torch.randn(2, 32, model.cfg.d_model)
    rope = model.rope[:, :32]
    with pytest.raises(RuntimeError):  # the local q has S/2 positions but rope has S: only the hook ran
        model.layers[0](x, rope)
    assert fake.scattered == [(2, 32, model.cfg.d_model)]
    assert model.pad_multiple % 2 == 0


def test_indivisible_sizes_are_rejected() -> None:
    model = HummingLM(debug().model)  # 4 heads
    with pytest.raises(ValueError, match="n_heads"):
        parallelize_neuron(model, 3, sequence_parallel=False, layers=FakeLayers(3, 0))


@pytest.mark.skipif(importlib.util.find_spec("neuronx_distributed") is not None, reason="Neuron SDK present")
def test_real_factory_explains_missing_sdk() -> None:
    with pytest.raises(ImportError, match="neuronx-distributed"):
        NxDLayers()


def test_neuron_train_config_for_ray() -> None:
    from ray.train.torch.xla import TorchXLAConfig

    pieces = neuron_train_config(8)
    assert isinstance(pieces["torch_config"], TorchXLAConfig)
    assert pieces["scaling_config"].num_workers == 8
    assert pieces["scaling_config"].resources_per_worker == {"neuron_cores": 1}


def _fake_nxd(monkeypatch) -> dict:
    """A stand-in ``neuronx_distributed`` module that records the config it is given."""
    import sys
    import types

    seen: dict = {}
    fake = types.ModuleType("neuronx_distributed")
    fake.neuronx_distributed_config = lambda **kw: seen.update(kw) or kw
    monkeypatch.setitem(sys.modules, "neuronx_distributed", fake)
    return seen


def test_bf16_on_neuron_keeps_fp32_master_weights_in_zero1(monkeypatch) -> None:
    from hummingml.train.config import OptimConfig, ParallelConfig
    from hummingml.train.parallel.neuron import neuron_config

    seen = _fake_nxd(monkeypatch)
    neuron_config(ParallelConfig(tp=2, zero1=True, mixed_precision="bf16", backend="neuron"), OptimConfig())
    assert seen["optimizer_config"]["zero_one_enabled"] is True
    assert seen["mixed_precision_config"] == {
        "use_master_weights": True, "use_fp32_grad_acc": True, "use_master_weights_in_ckpt": False
    }  # fmt: skip
    neuron_config(ParallelConfig(tp=2, zero1=True, backend="neuron"), OptimConfig())
    assert seen["mixed_precision_config"]["use_master_weights"] is False  # fp32: nothing to keep
    with pytest.raises(ValueError, match="zero1"):
        neuron_config(ParallelConfig(tp=2, mixed_precision="bf16", backend="neuron"), OptimConfig())


def test_neuron_model_is_built_in_fp32_then_cast(monkeypatch) -> None:
    from hummingml.train.parallel.neuron import build_neuron_model

    cfg = debug().model
    torch.manual_seed(0)  # the builder seeds the same way
    reference = HummingLM(cfg)
    model = build_neuron_model(HummingLM, cfg, 2, False, seed=0, dtype=torch.bfloat16, layers=FakeLayers(2, 1))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    half = reference.layers[0].attention.wq.weight.detach().chunk(2, dim=0)[1]
    assert torch.equal(model.layers[0].attention.wq.weight.detach(), half.to(torch.bfloat16))
