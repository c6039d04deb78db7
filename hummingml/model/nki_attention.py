"""NKI flash attention for the causal AR model on Trainium, and a plain-torch reference of the kernel's math.

The kernels are the Neuron SDK's flash attention forward ``flash_fwd`` and backward ``flash_attn_bwd``
(``neuronxcc.nki.kernels``), as read in:

- aws-neuron/nki-samples ``src/nki_samples/reference/attention.py``: the kernels' source (``flash_fwd``,
  ``_flash_attention_core``, ``flash_attn_bwd``, ``FlashConfig``);
- aws-neuron/neuronx-distributed ``src/neuronx_distributed/kernels/flash_attn.py``: how NxD calls them from
  torch-xla (``flash_fwd[batch, heads](...)``, the permutes around them, its autograd function);
- the Neuron documentation page ``nki.kernels.flash_fwd`` (awsdocs-neuron, v2.21).

What this module relies on from them:

- ``flash_fwd[B, H](q, k, v, seed, softmax_scale=, use_causal_mask=, mixed_precision=, dropout_p=)`` takes
  q (B, H, D, S), k (B, H, D, S), v (B, H, S, D) and returns o (B, H, S, D) and, in training mode (the default
  ``FlashConfig``), lse (B, H, 128, S // 128): the log-sum-exp of query ``i * 128 + p`` at ``[..., p, i]``.
  ``use_causal_mask`` is the kernel's own causal mask (no mask tensor goes in); ``seed`` is read only when
  ``dropout_p > 0`` (NxD passes None without dropout). D <= 128, and S must be a multiple of
  ``FlashConfig.seq_tile_size`` (2048).
- ``flash_attn_bwd[B, H](q, k, v, o, dy, lse, seed, use_causal_mask=, mixed_precision=, dropout_p=,
  softmax_scale=)`` takes q, k, v, o, dy all (B, H, D, S) and lse as the forward returned it, and returns dq, dk,
  dv (B, H, D, S).
- The forward's tiling: 128 query rows per tile; keys in steps of ``seq_tile_size`` (2048) with an online softmax
  (running max m, running log-sum-exp l, the output rescaled by exp(m_old - m_new) at each step); inside a step,
  QK^T in sub-tiles of 512 keys. With the causal mask, a step whose first key comes after the query tile's first
  row is skipped, and masked scores are set to float32's most negative value.
- ``mixed_precision=True`` (NxD's default, used here): matmuls in bf16, softmax statistics and accumulation in fp32.

Nothing here imports the Neuron SDK at module import; :class:`NeuronFlashKernels` does, when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hummingml.model.config import NKI_MAX_HEAD_DIM, NKI_SEQ_TILE

NEEDS = (
    "attention='nki' needs the Neuron SDK's neuronx-cc and torch-neuronx (Trainium hosts: "
    "pip install neuronx-cc torch-neuronx --extra-index-url https://pip.repos.neuron.amazonaws.com)"
)


@dataclass(frozen=True)
class FlashTiles:
    """Tile sizes of the flash forward; the defaults are the kernel's."""

    q: int = 128  # query rows per tile (the kernel's B_P_SIZE, the partition dimension)
    k: int = NKI_SEQ_TILE  # keys per online-softmax step (FlashConfig.seq_tile_size); S must be a multiple
    k_sub: int = 512  # keys per QK^T matmul inside a step (the kernel's B_F_SIZE)


class FlashKernels(Protocol):
    """A flash attention forward and backward in the NKI kernels' layouts (module docstring)."""

    tiles: FlashTiles

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float) -> tuple[Tensor, Tensor]:
        """q, k (B, H, D, S), v (B, H, S, D) -> (o (B, H, S, D), lse (B, H, tiles.q, S // tiles.q))."""
        ...

    def backward(
        self, q: Tensor, k: Tensor, v: Tensor, o: Tensor, dy: Tensor, lse: Tensor, causal: bool, softmax_scale: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v, o, dy (B, H, D, S) and the forward's lse -> dq, dk, dv (B, H, D, S)."""
        ...


def flash_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
    tiles: FlashTiles = FlashTiles(),
) -> tuple[Tensor, Tensor]:
    """The kernel's forward in torch, tile by tile: ``q, k, v`` (B, H, S, D) -> (o (B, H, S, D), lse (B, H, S)).

    Query tiles of ``tiles.q`` rows; for each, key steps of ``tiles.k`` with the online softmax, scores computed in
    ``tiles.k_sub``-key pieces, causal steps after the tile's first query skipped (module docstring). Any S: the
    last tiles may be short. ``q`` is scaled by ``softmax_scale`` (default D**-0.5) before QK^T, as in the kernel.
    Arithmetic in float32 (float64 for float64 inputs); ``o`` in q's dtype, ``lse`` in the arithmetic dtype.
    """
    B, H, S, D = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    lowest = torch.finfo(torch.float32).min  # the kernel's masked score and initial max
    qs, ks, vs = q.to(acc) * scale, k.to(acc), v.to(acc)
    pos = torch.arange(S, device=q.device)
    out = torch.empty(B, H, S, D, dtype=acc, device=q.device)
    lse = torch.empty(B, H, S, dtype=acc, device=q.device)
    for q0 in range(0, S, tiles.q):
        q1 = min(q0 + tiles.q, S)
        m = torch.full((B, H, q1 - q0, 1), lowest, dtype=acc, device=q.device)  # running max
        run_lse = torch.full_like(m, lowest)  # running log-sum-exp
        o = torch.zeros(B, H, q1 - q0, D, dtype=acc, device=q.device)  # unnormalised, relative to m
        for k0 in range(0, S, tiles.k):
            if causal and k0 > q0:  # every later step starts after this tile's first query
                break
            k1 = min(k0 + tiles.k, S)
            pieces = []
            for s0 in range(k0, k1, tiles.k_sub):
                s1 = min(s0 + tiles.k_sub, k1)
                s = qs[:, :, q0:q1] @ ks[:, :, s0:s1].transpose(-1, -2)  # (B, H, q1 - q0, s1 - s0)
                if causal:
                    s = s.masked_fill(pos[None, s0:s1] > pos[q0:q1, None], lowest)
                pieces.append(s)
            s = torch.cat(pieces, dim=-1)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            o = o * torch.exp(m - m_new) + p @ vs[:, :, k0:k1]
            run_lse = m_new + torch.log(torch.exp(run_lse - m_new) + p.sum(dim=-1, keepdim=True))
            m = m_new
        out[:, :, q0:q1] = o * torch.exp(m - run_lse)
        lse[:, :, q0:q1] = run_lse[..., 0]
    return out.to(q.dtype), lse


def flash_attention_reference_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    dy: Tensor,
    lse: Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`flash_attention_reference` from its output and log-sum-exp, as the backward kernel
    computes them: probabilities recomputed as exp(scaled QK^T - lse), D = rowsum(dy * o),
    dS = P * (dy V^T - D), dq = dS K * scale, dk = dS^T Q * scale, dv = P^T dy.

    ``q, k, v, o, dy`` (B, H, S, D), ``lse`` (B, H, S) -> dq, dk, dv (B, H, S, D) in q's dtype. Whole score matrices
    at once (O(S^2) memory): a check, not a kernel.
    """
    S, D = q.shape[-2:]
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    q_, k_, v_, o_, dy_ = (t.to(acc) for t in (q, k, v, o, dy))
    p = torch.exp((q_ * scale) @ k_.transpose(-1, -2) - lse.to(acc)[..., None])  # (B, H, S, S)
    if causal:
        pos = torch.arange(S, device=q.device)
        p = p.masked_fill(pos[None, :] > pos[:, None], 0.0)
    dv = p.transpose(-1, -2) @ dy_
    ds = p * (dy_ @ v_.transpose(-1, -2) - (dy_ * o_).sum(dim=-1, keepdim=True))
    dq = ds @ k_ * scale
    dk = ds.transpose(-1, -2) @ q_ * scale
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


class ReferenceFlashKernels:
    """:class:`FlashKernels` in plain torch: the reference functions behind the NKI kernels' layouts (any device)."""

    def __init__(self, tiles: FlashTiles = FlashTiles()) -> None:
        self.tiles = tiles

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float) -> tuple[Tensor, Tensor]:
        o, lse = flash_attention_reference(q.mT, k.mT, v, causal, softmax_scale, self.tiles)
        B, H, S = lse.shape
        return o, lse.view(B, H, S // self.tiles.q, self.tiles.q).mT  # [..., p, i] = query i * tiles.q + p

    def backward(
        self, q: Tensor, k: Tensor, v: Tensor, o: Tensor, dy: Tensor, lse: Tensor, causal: bool, softmax_scale: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        B, H, _, S = q.shape
        per_query = lse.mT.reshape(B, H, S)
        dq, dk, dv = flash_attention_reference_backward(q.mT, k.mT, v.mT, o.mT, dy.mT, per_query, causal, softmax_scale)
        return dq.mT, dk.mT, dv.mT


class NeuronFlashKernels:
    """The Neuron SDK's NKI flash kernels, launched on a (batch, heads) grid; run on XLA tensors on a NeuronCore.

    Raises:
        ImportError: neuronx-cc or torch-neuronx is not installed (:data:`NEEDS` says what to install).
    """

    tiles = FlashTiles()

    def __init__(self) -> None:
        try:
            import torch_neuronx  # noqa: F401  (registers the XLA integration that launches NKI kernels from torch)
            from neuronxcc.nki.kernels import flash_attn_bwd, flash_fwd
        except ImportError as e:
            raise ImportError(NEEDS) from e
        self._fwd: Any = flash_fwd
        self._bwd: Any = flash_attn_bwd

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float) -> tuple[Tensor, Tensor]:
        B, H = q.shape[:2]
        o, lse = self._fwd[B, H](
            q, k, v, None, softmax_scale=softmax_scale, use_causal_mask=causal, mixed_precision=True, dropout_p=0.0
        )
        return o, lse

    def backward(
        self, q: Tensor, k: Tensor, v: Tensor, o: Tensor, dy: Tensor, lse: Tensor, causal: bool, softmax_scale: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        B, H = q.shape[:2]
        dq, dk, dv = self._bwd[B, H](
            q, k, v, o, dy, lse, None,
            use_causal_mask=causal, mixed_precision=True, dropout_p=0.0, softmax_scale=softmax_scale,
        )  # fmt: skip
        return dq, dk, dv


class _Flash(torch.autograd.Function):
    """Flash attention of q, k, v (B, H, D, S) -> o (B, H, S, D), differentiated by the kernels' backward."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, kernels: FlashKernels, causal: bool, scale: float) -> Tensor:
        o, lse = kernels.forward(q, k, v.mT, causal, scale)  # the forward takes v as (B, H, S, D)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.kernels, ctx.causal, ctx.scale = kernels, causal, scale
        return o

    @staticmethod
    def backward(ctx: Any, do: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.kernels.backward(q, k, v, o.mT, do.mT, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


class NKIFlashAttention(nn.Module):
    """Attention core on flash kernels, a drop-in for :class:`hummingml.model.lm.SDPA` without a key-padding mask:
    q, k, v (B, H, S, head_dim) -> (B, H, S, head_dim), equal to SDPA with ``is_causal=causal``.

    ``kernels`` defaults to :class:`NeuronFlashKernels` (needs the Neuron SDK); :class:`ReferenceFlashKernels` runs
    the same layouts in torch. The transposes into the kernels' layouts happen here, around the autograd function.

    Raises:
        ImportError: from :class:`NeuronFlashKernels` when the Neuron SDK is missing.
    """

    def __init__(self, causal: bool = True, kernels: FlashKernels | None = None) -> None:
        super().__init__()
        self.causal = causal
        self.kernels = kernels if kernels is not None else NeuronFlashKernels()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """Raises ValueError for a key-padding mask, a length not a multiple of the kernel's key step, or
        head_dim > 128 (what the kernel cannot take)."""
        if key_padding is not None:
            raise ValueError("the NKI flash kernel takes no key-padding mask (the NAR model keeps SDPA)")
        S, D = q.shape[-2:]
        step = self.kernels.tiles.k
        if S % step or D > NKI_MAX_HEAD_DIM:
            raise ValueError(
                f"the NKI flash kernel needs a sequence length that is a multiple of {step} and head_dim <= "
                f"{NKI_MAX_HEAD_DIM}, got {S} and {D} (set pad_to_max with such a max_seq_len)"
            )
        return _Flash.apply(q.mT, k.mT, v.mT, self.kernels, self.causal, D**-0.5)
