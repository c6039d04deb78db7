"""Trainium path: swap the plain model's layers for neuronx-distributed (NxD) parallel layers, NxD ZeRO-1.

Importable without the Neuron SDK: ``neuronx_distributed`` and ``torch_xla`` are imported inside the functions that
need them (Ray Train's placement for Trainium is ``hummingml.train.ray.neuron_train_config``). The swap walks
the same FQNs as ``hummingml.train.parallel.torch.tp_plan``:

====================================  ===========================================  ============================
module                                NxD layer                                    local weight on rank r
====================================  ===========================================  ============================
``layers.{i}.attention.{wq,wk,wv}``   ``ColumnParallelLinear(gather_output=False)``  rows r*out/tp..(r+1)*out/tp
``layers.{i}.feed_forward.{w1,w3}``   ``ColumnParallelLinear(gather_output=False)``  same
``output``                            ``ColumnParallelLinear(gather_output=False)``  same (vocab-sharded logits)
``layers.{i}.attention.wo``           ``RowParallelLinear(input_is_parallel=True)``  columns r*in/tp..
``layers.{i}.feed_forward.w2``        ``RowParallelLinear(input_is_parallel=True)``  same
``tok_embeddings``                    ``ParallelEmbedding`` (vocab-sharded)          rows r*n/tp..
====================================  ===========================================  ============================

The loss becomes ``parallel_cross_entropy`` on the vocab-sharded logits. With sequence parallelism the residual
stream is sharded along dim 1 (our layout is batch-first, so every layer gets ``sequence_dimension=1``): block 0's
input is scattered, column-parallel layers all-gather their input, row-parallel layers reduce-scatter their
output, and norm weights are tagged ``sequence_parallel_enabled`` so NxD's optimizer all-reduces their grads.

Usage in a Ray Train worker on trn1/trn2 (not run in CI: no Neuron SDK there)::

    nxd_config = neuron_config(cfg.parallel, cfg.optim)
    model = neuron_model(cfg.model, nxd_config)
    optimizer = neuron_optimizer(model, cfg.optim, nxd_config)
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hummingml.model.config import ModelConfig
from hummingml.model.lm import SDPA, CodecLM, HummingLM, TokenLoss, TransformerBlock
from hummingml.model.nki_attention import NKIFlashAttention
from hummingml.train.config import OptimConfig, ParallelConfig
from hummingml.train.optim import param_groups

_COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
_ROW = ("attention.wo", "feed_forward.w2")
_SEQUENCE_PARALLEL_FLAG = "sequence_parallel_enabled"
_NEEDS = "the Neuron SDK's torch-neuronx and neuronx-distributed (see README: Trainium hosts)"


def tp_split_dim(name: str) -> int | None:
    """The dim along which tensor parallelism splits state-dict entry ``name`` over the tp ranks, in rank order
    (rank r holds chunk r of ``tensor.chunk(tp, dim)``); None when every rank holds all of it.

    The one statement of the layout: :func:`parallelize_neuron` slices with it, and
    :func:`hummingml.train.checkpoint.merge_tp_shards` concatenates NxD checkpoint shards with it. Column-parallel
    weights and biases (``wq wk wv w1 w3``, ``output``) split dim 0, row-parallel weights (``wo w2``) dim 1 (their
    biases are whole), the vocab-parallel ``tok_embeddings`` dim 0; norms and everything else are replicated.
    """
    module, _, param = name.rpartition(".")
    if module == "output" or module.endswith(tuple(f".{s}" for s in _COLUMN)):
        return 0
    if module.endswith(tuple(f".{s}" for s in _ROW)):
        return 1 if param == "weight" else None
    return 0 if module == "tok_embeddings" else None


class LayerFactory(Protocol):
    """Builds the parallel replacement of one module from its already-sliced local weights."""

    tp_rank: int

    def column(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        """Column-parallel ``linear``: ``weight`` (out / tp, in), ``bias`` (out / tp,) or None."""
        ...

    def row(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        """Row-parallel ``linear``: ``weight`` (out, in / tp), ``bias`` (out,) (not sharded) or None."""
        ...

    def embedding(self, name: str, embedding: nn.Embedding, weight: Tensor) -> nn.Module:
        """Vocab-parallel ``embedding``: ``weight`` (num_embeddings / tp, embedding_dim)."""
        ...

    def loss(self) -> TokenLoss:
        """The loss head for vocab-sharded logits."""
        ...

    def scatter_to_sequence(self, x: Tensor, dim: int) -> Tensor:
        """This rank's chunk of ``x`` along ``dim`` (gradient: all-gather)."""
        ...


class NxDTokenLoss(TokenLoss):
    """:class:`TokenLoss` on vocab-sharded logits: NxD ``parallel_cross_entropy``; metrics on gathered logits."""

    def __init__(self) -> None:
        super().__init__()
        from neuronx_distributed.parallel_layers import parallel_cross_entropy
        from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region

        self._ce = parallel_cross_entropy
        self._gather = gather_from_tensor_model_parallel_region

    def per_token(self, logits: Tensor, labels: Tensor) -> Tensor:
        # parallel_cross_entropy has no ignore_index: clamp, then TokenLoss masks the ignored positions.
        return self._ce(logits.float(), labels.clamp(min=0))

    def full_vocab(self, logits: Tensor) -> Tensor:
        return self._gather(logits)


class NxDLayers:
    """The real :class:`LayerFactory`: NxD layers for this process's tensor-parallel rank."""

    def __init__(self) -> None:
        try:
            from neuronx_distributed.parallel_layers import (
                ColumnParallelLinear,
                ParallelEmbedding,
                RowParallelLinear,
                parallel_state,
            )
            from neuronx_distributed.parallel_layers.mappings import scatter_to_sequence_parallel_region
        except ImportError as e:
            raise ImportError(f"parallelize_neuron needs {_NEEDS}") from e
        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("call neuron_config (nxd.neuronx_distributed_config) before building the model")
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.tp_size = parallel_state.get_tensor_model_parallel_size()
        self._column, self._row, self._embedding = ColumnParallelLinear, RowParallelLinear, ParallelEmbedding
        self._scatter = scatter_to_sequence_parallel_region

    @staticmethod
    @torch.no_grad()
    def _load(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
        layer.get_parameter("weight").copy_(weight)
        if bias is not None:
            layer.get_parameter("bias").copy_(bias)
        return layer

    def _linear(
        self, cls: Any, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool, **mode: bool
    ) -> nn.Module:
        """An NxD parallel linear layer ``cls`` shaped like ``linear``, holding this rank's ``weight``/``bias``."""
        layer = cls(
            input_size=linear.in_features,
            output_size=linear.out_features,
            bias=bias is not None,
            dtype=weight.dtype,
            sequence_parallel_enabled=sp,
            sequence_dimension=1 if sp else None,
            **mode,
        )
        return self._load(layer, weight, bias)

    def column(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        return self._linear(self._column, linear, weight, bias, sp, gather_output=False)

    def row(self, name: str, linear: nn.Linear, weight: Tensor, bias: Tensor | None, sp: bool) -> nn.Module:
        return self._linear(self._row, linear, weight, bias, sp, input_is_parallel=True)

    def embedding(self, name: str, embedding: nn.Embedding, weight: Tensor) -> nn.Module:
        layer = self._embedding(
            embedding.num_embeddings, embedding.embedding_dim, dtype=weight.dtype, shard_across_embedding=False
        )
        return self._load(layer, weight, None)

    def loss(self) -> TokenLoss:
        return NxDTokenLoss()

    def scatter_to_sequence(self, x: Tensor, dim: int) -> Tensor:
        return self._scatter(x, sequence_dimension=dim)


def _shard(t: Tensor, tp: int, rank: int, name: str) -> Tensor:
    """This rank's part of the full tensor ``t`` of state-dict entry ``name`` (:func:`tp_split_dim`), a copy."""
    dim = tp_split_dim(name)
    return t.detach().clone() if dim is None else t.detach().chunk(tp, dim=dim)[rank].clone()


def _mark_sequence_parallel(norm: nn.RMSNorm) -> None:
    """Tag ``norm``'s weight so NxD's optimizer all-reduces its grads over TP (each rank sees a sequence shard)."""
    # NxD reads a plain attribute of the Parameter, which torch does not declare: set it by name.
    setattr(norm.weight, _SEQUENCE_PARALLEL_FLAG, True)


def _set(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def parallelize_neuron(
    model: CodecLM, tp_size: int, sequence_parallel: bool, layers: LayerFactory | None = None
) -> CodecLM:
    """Swap every Linear / Embedding of ``model`` (built and initialised identically on all ranks) for its
    tensor-parallel NxD counterpart holding this rank's slice, in place (table in the module docstring).

    ``layers`` defaults to :class:`NxDLayers` (needs an initialised NxD parallel state); tests pass a fake.
    """
    cfg = model.cfg
    for what, n in (
        ("n_heads", cfg.n_heads),
        ("d_ff", cfg.d_ff),
        ("codebook_size", cfg.codebook_size),
        ("tok_embeddings rows", model.tok_embeddings.num_embeddings),
    ):
        if n % tp_size:
            raise ValueError(f"{what}={n} is not divisible by tp={tp_size}")
    layers = layers if layers is not None else NxDLayers()
    rank, sp = layers.tp_rank, sequence_parallel and tp_size > 1
    for i in range(len(model.layers)):
        for suffix in _COLUMN + _ROW:
            fqn = f"layers.{i}.{suffix}"
            owner, _, attr = fqn.rpartition(".")
            linear = getattr(model.get_submodule(owner), attr)
            if linear is None:  # w3 of a GELU MLP
                continue
            weight = _shard(linear.weight, tp_size, rank, f"{fqn}.weight")
            bias = None if linear.bias is None else _shard(linear.bias, tp_size, rank, f"{fqn}.bias")
            kind = layers.column if suffix in _COLUMN else layers.row
            _set(model, fqn, kind(fqn, linear, weight, bias, sp))
        if sp:
            block = model.blocks()[i]
            for norm in (block.attention_norm, block.ffn_norm):
                _mark_sequence_parallel(norm)
    # _set, not attribute assignment: the model declares the plain nn.Linear / nn.Embedding these replace.
    head = model.output
    _set(model, "output", layers.column("output", head, _shard(head.weight, tp_size, rank, "output.weight"), None, sp))
    _set(model, "tok_embeddings", layers.embedding(
        "tok_embeddings", model.tok_embeddings,
        _shard(model.tok_embeddings.weight, tp_size, rank, "tok_embeddings.weight"),
    ))  # fmt: skip
    model.loss = layers.loss()
    if sp:
        _mark_sequence_parallel(model.norm)

        def scatter_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (layers.scatter_to_sequence(args[0], 1), *args[1:])

        model.layers[0].register_forward_pre_hook(scatter_input)
        model.pad_multiple = math.lcm(model.pad_multiple, tp_size)  # every sequence shard gets S / tp positions
    return model


def neuron_config(parallel: ParallelConfig, optim: OptimConfig) -> dict[str, Any]:
    """``nxd.neuronx_distributed_config`` for our configs (also initialises NxD's parallel state).

    Activation checkpointing: "full" checkpoints each :class:`TransformerBlock`, "selective" the attention
    core, :class:`SDPA` or :class:`NKIFlashAttention` (NxD's own selective recipe checkpoints its CoreAttention the
    same way).

    ``mixed_precision="bf16"``: the model's weights are bf16 (:func:`neuron_model`) and NxD's ZeRO-1 optimizer keeps
    fp32 master weights and accumulates gradients in fp32 (its ``mixed_precision_config``), which is why bf16 on
    Neuron needs ``zero1``. With fp32 there are no master weights to keep.

    Raises:
        ValueError: a config :meth:`ParallelConfig.problems` refuses (bf16 without zero1, ...).
    """
    if problems := parallel.problems("parallel-"):
        raise ValueError("; ".join(problems))
    import neuronx_distributed as nxd

    bf16 = parallel.mixed_precision == "bf16"
    cores = [SDPA, NKIFlashAttention]
    ac = {"none": None, "full": [TransformerBlock], "selective": cores}[parallel.activation_checkpoint]
    return nxd.neuronx_distributed_config(
        tensor_parallel_size=parallel.tp,
        optimizer_config={
            "zero_one_enabled": parallel.zero1,
            "grad_clipping": optim.grad_clip > 0,
            "max_grad_norm": optim.grad_clip if optim.grad_clip > 0 else 1.0,
        },
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        activation_checkpoint_config=ac,
        mixed_precision_config={
            "use_master_weights": bf16,
            "use_fp32_grad_acc": bf16,
            "use_master_weights_in_ckpt": False,
        },
    )


def build_neuron_model(
    model_cls: type[CodecLM],
    model_cfg: ModelConfig,
    tp_size: int,
    sequence_parallel: bool,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    layers: LayerFactory | None = None,
) -> CodecLM:
    """``model_cls(model_cfg)`` seeded, initialised in fp32, swapped by :func:`parallelize_neuron`, then cast to
    ``dtype`` (every rank draws the same full weights and keeps its slices)."""
    torch.manual_seed(seed)
    model = parallelize_neuron(model_cls(model_cfg), tp_size, sequence_parallel, layers)
    return model.to(dtype)


def neuron_model(
    model_cfg: ModelConfig,
    nxd_config: dict[str, Any],
    model_cls: type[CodecLM] = HummingLM,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """``nxd.initialize_parallel_model`` of :func:`build_neuron_model`.

    Every rank builds the full model on CPU from the same ``seed`` and keeps its own slices (in ``dtype``), then
    NxD moves it to the XLA device and applies activation checkpointing. ``model_cfg.pad_to_max`` must be set: one
    static sequence length, so XLA compiles one graph and no step waits on a host read of the batch's longest row.
    """
    if not model_cfg.pad_to_max:
        raise ValueError("set ModelConfig.pad_to_max=True for Neuron (static shapes)")
    import neuronx_distributed as nxd

    def build() -> nn.Module:
        tp, sp = nxd_config["tensor_parallel_size"], nxd_config["sequence_parallel"]
        return build_neuron_model(model_cls, model_cfg, tp, sp, seed, dtype)

    return nxd.initialize_parallel_model(nxd_config, build)


def neuron_optimizer(model: nn.Module, optim: OptimConfig, nxd_config: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW through ``nxd.initialize_parallel_optimizer``: NeuronZero1Optimizer when ``zero_one_enabled``.

    NxD's optimizer wrapper also all-reduces sequence-parallel norm grads, reduces grads over dp and clips.
    """
    import neuronx_distributed as nxd

    groups = param_groups(model, optim.weight_decay)
    return nxd.initialize_parallel_optimizer(
        nxd_config, torch.optim.AdamW, groups, lr=optim.lr, betas=optim.betas, eps=optim.eps
    )
