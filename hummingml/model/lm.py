"""HummingLM: an AR codec LM for DAC level 0 of a target part, and a NAR upsampler for levels 1..N-1.

Plain PyTorch, no parallelism inside (``hummingml.train.parallel.torch`` and ``hummingml.train.parallel.neuron``
apply it). Module names follow torchtitan (``tok_embeddings``, ``layers.{i}.attention.wq`` ...), so tensor-parallel
plans are keyed by FQN.

Batch contract (``hummingml.model.batch.make_batch`` builds it from per-example numpy arrays; all LongTensors):

- ``timbre`` (B, n_codebooks, P): all levels of a 1-5 s clip of the target instrument; ``timbre_len`` (B,) valid P.
- ``cond`` (B, 2, Kc', T) with Kc' >= cond_codebooks: stream 0 = codes of the sine rendering, stream 1 = codes of
  the mono reference, frame-aligned with the target; only the first ``cond_codebooks`` levels are used.
- ``target`` (B, n_codebooks, T): codes of the target part; ``target_len`` (B,) valid T (applies to ``cond`` too).
  ``target`` is not needed by ``generate``.
- NAR only, optional: ``level`` (B,) in [1, n_codebooks): the level to predict (drawn uniformly when absent).

Each example is packed left-aligned into one row, padding only at the end, so the AR model needs just a causal
mask (SDPA ``is_causal``; flash attention on GPU; the NKI flash kernel's own causal flag with ``attention="nki"``,
see :func:`attention_core`):

- humming: ``[BOS][TMB] t_1..t_P [MEL] c_1..c_T [GEN] y_1..y_{T-1}``; the position holding ``[GEN]`` or
  ``y_{j-1}`` predicts ``y_j`` (level 0 of the target). ``t_i`` sums the embeddings of all timbre levels, ``c_j``
  those of the first Kc sine levels and the first Kc mono levels.
- valle (baseline): ``[MEL] c_1..c_T [SEP] p_1..p_P y_1..y_{T-1}`` with ``p`` = level 0 of the timbre clip in the
  target's embedding table (an acoustic prompt to continue); ``p_P`` predicts ``y_1``.
- NAR (bidirectional, key-padding mask): ``[TMB] t_1..t_P [GEN] f_1..f_T``; ``f_j`` sums target levels < l,
  ``c_j`` and a learned embedding of l; the output at ``f_j`` predicts level l of frame j.

Every position also gets a segment embedding (timbre / conditioning / generation). All tables live in ONE
``nn.Embedding`` with per-table row offsets; a position's embedding is the masked sum over its slots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hummingml.model.config import ModelConfig
from hummingml.model.nki_attention import NKIFlashAttention

IGNORE_INDEX = -100
Batch = dict[str, Tensor]

# Position kinds; PAD must be 0 (the kind of every position past a row's end).
PAD, BOS, TMB, MEL, GEN, SEP, TIMBRE, COND, Y, PROMPT, FRAME = range(11)
_SPECIAL_KINDS = (BOS, TMB, MEL, GEN, SEP)
_SEGMENT = {TMB: 0, TIMBRE: 0, MEL: 1, COND: 1, GEN: 2, SEP: 2, PROMPT: 2, Y: 2, FRAME: 2}
_N_SEGMENTS = 3
_ROW_MULTIPLE = 64  # table rows are padded so a vocab-sharded embedding splits evenly for tp up to 64


def packed_length(layout: str, timbre_frames: int, frames: int) -> int:
    """Tokens in one packed row for ``layout`` in {"humming", "valle", "nar"} (P timbre frames, T target frames)."""
    extra = {"humming": 3 + frames, "valle": 1 + frames, "nar": 2}[layout]
    return extra + timbre_frames + frames


class CodeVocab:
    """Row offsets of the tables stacked in ``tok_embeddings`` for one layout."""

    def __init__(self, cfg: ModelConfig, layout: str) -> None:
        V, N, Kc = cfg.codebook_size, cfg.n_codebooks, cfg.cond_codebooks
        sizes: dict[str, int] = {}
        if layout in ("humming", "nar"):
            sizes["timbre"] = N * V
        if layout == "nar":
            sizes["target"] = (N - 1) * V  # levels 0..N-2 are inputs when predicting levels 1..N-1
            sizes["level"] = N - 1
        else:
            sizes["y"] = V
        sizes["sine"] = Kc * V
        sizes["mono"] = Kc * V
        sizes["special"] = len(_SPECIAL_KINDS)
        sizes["segment"] = _N_SEGMENTS
        self.offset: dict[str, int] = {}
        total = 0
        for name, size in sizes.items():
            self.offset[name] = total
            total += size
        self.n_used = total
        self.n_rows = -(-total // _ROW_MULTIPLE) * _ROW_MULTIPLE


@dataclass
class Packed:
    """One batch packed into token rows (see the module docstring for the layouts)."""

    idx: Tensor  # (B, S, K) rows of tok_embeddings summed at each position
    mask: Tensor  # (B, S, K) bool, which of the K slots are used
    labels: Tensor  # (B, S) code to predict at each position, IGNORE_INDEX elsewhere
    key_padding: Tensor  # (B, S) bool, True at real (non-pad) positions


def _gather_frames(codes: Tensor, frame: Tensor) -> Tensor:
    """``codes`` (B, L, F) read at ``frame`` (B, S) (clamped into [0, F)) -> (B, S, L)."""
    B, L, F_ = codes.shape
    i = frame.clamp(0, F_ - 1)[:, None, :].expand(B, L, -1)
    return codes.gather(2, i).transpose(1, 2)


def rope_table(head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None) -> Tensor:
    """cos and sin of rotary angles, (2, max_seq_len, head_dim // 2) float32."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float64), inv)
    return torch.stack([angles.cos(), angles.sin()]).float()


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x`` (B, S, H, head_dim) by ``rope`` (2, S, head_dim // 2)."""
    cos, sin = rope[0][None, :, None, :].to(x.dtype), rope[1][None, :, None, :].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class SDPA(nn.Module):
    """Attention core, swappable (NKI flash on Neuron); q, k, v (B, H, S, head_dim) -> (B, H, S, head_dim)."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding: Tensor | None = None) -> Tensor:
        if key_padding is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        mask = key_padding[:, None, None, :]  # (B, 1, 1, S): True = may attend
        if self.causal:
            S = q.shape[-2]
            mask = mask & torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_core(cfg: ModelConfig, causal: bool) -> nn.Module:
    """The attention core of one layer: :class:`~hummingml.model.nki_attention.NKIFlashAttention` (the Neuron SDK's
    kernel, with its causal flag) for a causal model when ``cfg.attention == "nki"``, else :class:`SDPA`.

    A non-causal model (the NAR upsampler) always gets SDPA: it needs a key-padding mask, which the kernel does not
    take. :meth:`Attention.extend` (KV-cache generation) always runs SDPA with an explicit mask, whatever the core.

    Raises:
        ImportError: ``"nki"`` for a causal model without the Neuron SDK installed.
    """
    if cfg.attention == "nki" and causal:
        return NKIFlashAttention(causal=True)
    return SDPA(causal)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        d = cfg.d_model
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.core = attention_core(cfg, causal)

    def forward(self, x: Tensor, rope: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """``x`` (B, S, d_model) -> (B, S, d_model)."""
        B, S, _ = x.shape
        # -1, not n_heads: TP may have sharded the heads.
        q = apply_rope(self.wq(x).view(B, S, -1, self.head_dim), rope)
        k = apply_rope(self.wk(x).view(B, S, -1, self.head_dim), rope)
        v = self.wv(x).view(B, S, -1, self.head_dim)
        out = self.core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_padding)  # (B, H, S, hd)
        return self.wo(out.transpose(1, 2).reshape(B, S, -1))

    def extend(self, x: Tensor, rope: Tensor, cache: KVCache, attn_mask: Tensor) -> Tensor:
        """Attention of new positions ``x`` (B, s, d_model) over ``cache`` plus themselves; appends their keys/values.

        ``rope`` (2, s, head_dim // 2) holds the new positions' angles; ``attn_mask`` (B, 1, s, cached + s) is True
        where a new position may attend. Always SDPA, not :attr:`core`: the NKI kernel takes no mask tensor.
        """
        B, s, _ = x.shape
        q = apply_rope(self.wq(x).view(B, s, -1, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(self.wk(x).view(B, s, -1, self.head_dim), rope).transpose(1, 2)
        v = self.wv(x).view(B, s, -1, self.head_dim).transpose(1, 2)
        k, v = cache.append(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.wo(out.transpose(1, 2).reshape(B, s, -1))


class KVCache:
    """Keys and values (B, H, S, head_dim) of the positions one attention layer has seen so far."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' keys and values; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False) if cfg.mlp == "swiglu" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.w3 is None:
            return self.w2(F.gelu(self.w1(x)))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then + feed_forward(norm(.))."""

    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attention = Attention(cfg, causal)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: Tensor, rope: Tensor, key_padding: Tensor | None = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, key_padding)
        return h + self.feed_forward(self.ffn_norm(h))

    def extend(self, x: Tensor, rope: Tensor, cache: KVCache, attn_mask: Tensor) -> Tensor:
        """The block on new positions only, attending over ``cache`` (see :meth:`Attention.extend`)."""
        h = x + self.attention.extend(self.attention_norm(x), rope, cache, attn_mask)
        return h + self.feed_forward(self.ffn_norm(h))


class TokenLoss(nn.Module):
    """Token-mean cross-entropy over labelled positions, plus top-1 / top-10 accuracy (no host sync)."""

    def per_token(self, logits: Tensor, labels: Tensor) -> Tensor:
        """CE at every position, (B, S) float32; ignored positions hold an arbitrary finite value."""
        flat = logits.float().flatten(0, -2)
        return F.cross_entropy(flat, labels.clamp(min=0).flatten(), reduction="none").view_as(labels)

    def full_vocab(self, logits: Tensor) -> Tensor:
        """Logits over the whole vocabulary (the NxD variant gathers vocab shards)."""
        return logits

    def forward(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``logits`` (B, S, V), ``labels`` (B, S) -> (loss, metrics); metrics are detached 0-dim tensors."""
        valid = labels != IGNORE_INDEX
        n = valid.sum()
        denom = n.clamp(min=1)
        with torch.no_grad():  # before the loss: NxD's parallel CE edits its input in place
            full = self.full_vocab(logits.detach())
            hit = full.topk(min(10, full.shape[-1]), dim=-1).indices == labels.unsqueeze(-1)  # (B, S, 10)
            acc = (hit[..., 0] & valid).sum() / denom
            top10 = (hit.any(-1) & valid).sum() / denom
        loss = (self.per_token(logits, labels) * valid).sum() / denom
        return loss, {"loss": loss.detach(), "acc": acc, "top10_acc": top10, "tokens": n}


class CodecLM(nn.Module):
    """Shared trunk of :class:`HummingLM` and :class:`NARUpsampler`: embeddings, blocks, norm, head."""

    causal: bool = True
    rope: Tensor  # (2, max_seq_len, head_dim // 2) float32, a non-persistent buffer

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = self._layout_name(cfg)
        self.vocab = CodeVocab(cfg, self.layout)
        self.tok_embeddings = nn.Embedding(self.vocab.n_rows, cfg.d_model)
        self.layers = nn.ModuleList(TransformerBlock(cfg, self.causal) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.codebook_size, bias=False)
        self.loss = TokenLoss()
        self.pad_multiple = cfg.pad_multiple  # parallelize_torch raises it to a multiple of tp
        self.register_buffer("rope", rope_table(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer; call after ``to_empty`` when built on the meta device."""
        cfg = self.cfg
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # residual branches, as GPT-2
        nn.init.normal_(self.tok_embeddings.weight, std=cfg.init_std)
        for block in self.blocks():
            a, f = block.attention, block.feed_forward
            for lin in (a.wq, a.wk, a.wv, f.w1, f.w3):
                if lin is not None:
                    nn.init.trunc_normal_(lin.weight, std=cfg.init_std, a=-3 * cfg.init_std, b=3 * cfg.init_std)
            for lin in (a.wo, f.w2):
                nn.init.trunc_normal_(lin.weight, std=out_std, a=-3 * out_std, b=3 * out_std)
            block.attention_norm.reset_parameters()
            block.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        head_std = cfg.d_model**-0.5
        nn.init.trunc_normal_(self.output.weight, std=head_std, a=-3 * head_std, b=3 * head_std)
        self.rope.copy_(rope_table(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.rope.device))

    def blocks(self) -> list[TransformerBlock]:
        """The blocks of :attr:`layers`, unwrapped from activation checkpointing's wrapper where it is applied."""
        # cast: ``layers`` holds only TransformerBlocks; nn.ModuleList types its items as plain Modules.
        return [cast(TransformerBlock, getattr(b, "_checkpoint_wrapped_module", b)) for b in self.layers]

    # --- packing -------------------------------------------------------------------------------------------------

    @staticmethod
    def _layout_name(cfg: ModelConfig) -> str:
        raise NotImplementedError

    def _segments(self, timbre_len: Tensor, target_len: Tensor) -> tuple[list[int], Tensor]:
        """Kinds of the layout's segments and their lengths (B, n_segments)."""
        raise NotImplementedError

    def _slots(self) -> int:
        raise NotImplementedError

    def _seq_len(self, lengths: Tensor) -> int:
        cfg = self.cfg
        if cfg.pad_to_max:
            return cfg.max_seq_len  # no host sync; make_batch checks lengths
        longest = int(lengths.max())
        if longest > cfg.max_seq_len:
            raise ValueError(f"packed length {longest} > max_seq_len {cfg.max_seq_len}")
        return min(-(-longest // self.pad_multiple) * self.pad_multiple, cfg.max_seq_len)

    def _layout(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """(kind (B, S), frame index within its segment (B, S), segment starts (B, n_seg), seg (B, S), S)."""
        kinds, seg_lens = self._segments(batch["timbre_len"], batch["target_len"])
        device = seg_lens.device
        ends = seg_lens.cumsum(1)
        starts = ends - seg_lens
        S = self._seq_len(ends[:, -1])
        pos = torch.arange(S, device=device)
        seg = (pos[None, :, None] >= ends[:, None, :]).sum(-1)  # (B, S); n_seg past the row's end
        kind = torch.tensor([*kinds, PAD], device=device)[seg]
        within = pos[None, :] - starts.gather(1, seg.clamp(max=len(kinds) - 1))
        return kind, within, starts, seg, S

    def _base_slots(self, kind: Tensor) -> tuple[Tensor, Tensor]:
        """idx, mask (B, S, K) holding the special-token rows (slot 0) and the segment rows (last slot)."""
        B, S = kind.shape
        K = self._slots()
        off = self.vocab.offset
        special = torch.full((FRAME + 1,), -1, dtype=torch.long)
        for i, k in enumerate(_SPECIAL_KINDS):
            special[k] = off["special"] + i
        segment = torch.full((FRAME + 1,), -1, dtype=torch.long)
        for k, s in _SEGMENT.items():
            segment[k] = off["segment"] + s
        idx = torch.zeros(B, S, K, dtype=torch.long, device=kind.device)
        mask = torch.zeros(B, S, K, dtype=torch.bool, device=kind.device)
        srow, grow = special.to(kind.device)[kind], segment.to(kind.device)[kind]
        idx[..., 0], mask[..., 0] = srow.clamp(min=0), srow >= 0
        idx[..., -1], mask[..., -1] = grow.clamp(min=0), grow >= 0
        return idx, mask

    def _put(self, idx: Tensor, mask: Tensor, where: Tensor, slot: int, rows: Tensor, valid: Tensor | None = None):
        """Write ``rows`` (B, S, L) into slots [slot, slot + L) at positions ``where`` (B, S)."""
        L = rows.shape[-1]
        sel = where[..., None] if valid is None else where[..., None] & valid
        idx[..., slot : slot + L] = torch.where(sel, rows, idx[..., slot : slot + L])
        mask[..., slot : slot + L] |= sel

    def _cond_rows(self, cond: Tensor, within: Tensor) -> Tensor:
        """Rows of the first Kc sine then mono levels of ``cond`` (B, 2, Kc', T) at frame ``within`` -> (B, S, 2Kc)."""
        V, Kc = self.cfg.codebook_size, self.cfg.cond_codebooks
        off = self.vocab.offset
        codes = cond[:, :, :Kc].flatten(1, 2)  # (B, 2Kc, T): sine levels then mono levels
        base = torch.cat([off["sine"] + V * torch.arange(Kc), off["mono"] + V * torch.arange(Kc)]).to(cond.device)
        return _gather_frames(codes, within) + base

    def _timbre_rows(self, timbre: Tensor, within: Tensor) -> Tensor:
        """Rows of all timbre levels at frame ``within`` -> (B, S, n_codebooks)."""
        base = self.vocab.offset["timbre"] + self.cfg.codebook_size * torch.arange(timbre.shape[1])
        return _gather_frames(timbre, within) + base.to(timbre.device)

    # --- trunk ---------------------------------------------------------------------------------------------------

    def hidden(self, packed: Packed) -> Tensor:
        """Final-norm hidden states (B, S, d_model)."""
        e = self.tok_embeddings(packed.idx)  # (B, S, K, d_model)
        h = (e * packed.mask.unsqueeze(-1).to(e.dtype)).sum(2)
        rope = self.rope[:, : h.shape[1]]
        key_padding = None if self.causal else packed.key_padding
        for layer in self.layers:
            h = layer(h, rope, key_padding)
        return self.norm(h)

    def logits(self, packed: Packed) -> Tensor:
        """(B, S, codebook_size) (vocab-sharded after ``parallelize_neuron``)."""
        return self.output(self.hidden(packed))

    def pack(self, batch: Mapping[str, Tensor]) -> Packed:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher-forced training step: (token-mean CE over target positions, metrics)."""
        packed = self.pack(batch)
        return self.loss(self.logits(packed), packed.labels)


class HummingLM(CodecLM):
    """AR model of target level 0 (``cfg.layout`` "humming" or the "valle" baseline); causal attention."""

    causal = True

    @staticmethod
    def _layout_name(cfg: ModelConfig) -> str:
        return cfg.layout

    def _slots(self) -> int:
        cfg = self.cfg
        content = max(2 * cfg.cond_codebooks, cfg.n_codebooks if self.layout == "humming" else 1)
        return content + 1

    def _segments(self, timbre_len: Tensor, target_len: Tensor) -> tuple[list[int], Tensor]:
        one = torch.ones_like(target_len)
        if self.layout == "humming":
            kinds = [BOS, TMB, TIMBRE, MEL, COND, GEN, Y]
            lens = [one, one, timbre_len, one, target_len, one, target_len - 1]
        else:
            kinds = [MEL, COND, SEP, PROMPT, Y]
            lens = [one, target_len, one, timbre_len, target_len - 1]
        return kinds, torch.stack(lens, dim=1)

    def pack(self, batch: Mapping[str, Tensor]) -> Packed:
        """Pack a batch (module docstring contract); ``target`` may be absent (labels are then all ignored)."""
        kind, within, starts, seg, S = self._layout(batch)
        idx, mask = self._base_slots(kind)
        off = self.vocab.offset
        cond, timbre = batch["cond"], batch["timbre"]
        target = batch.get("target")
        if target is None:
            target = torch.zeros_like(cond[:, 0, :1])
        y0 = target[:, :1]  # (B, 1, T)
        self._put(idx, mask, kind == COND, 0, self._cond_rows(cond, within))
        self._put(idx, mask, kind == Y, 0, _gather_frames(y0, within) + off["y"])
        if self.layout == "humming":
            self._put(idx, mask, kind == TIMBRE, 0, self._timbre_rows(timbre, within))
        else:
            self._put(idx, mask, kind == PROMPT, 0, _gather_frames(timbre[:, :1], within) + off["y"])
        # The position just before y_1 (GEN, or the last prompt frame) predicts frame 0 of the target.
        first = starts[:, -1] - 1
        frame = torch.arange(S, device=kind.device)[None, :] - first[:, None]
        is_target = (frame >= 0) & (frame < batch["target_len"][:, None])
        labels = torch.full_like(kind, IGNORE_INDEX)
        if "target" in batch:
            labels = torch.where(is_target, _gather_frames(y0, frame)[..., 0], labels)
        return Packed(idx=idx, mask=mask, labels=labels, key_padding=seg < starts.shape[1])

    def target_positions(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Position predicting target frame 0 in each packed row, (B,)."""
        _, seg_lens = self._segments(batch["timbre_len"], batch["target_len"])
        return seg_lens[:, :-1].sum(1) - 1

    @torch.no_grad()
    def generate(
        self,
        batch: Mapping[str, Tensor],
        top_k: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Exactly ``target_len[b]`` level-0 codes per row, (B, T) with T = ``cond.shape[-1]``, 0 past the end.

        ``top_k=1`` is greedy; otherwise samples from the ``top_k`` most likely codes at ``temperature``.
        ``use_cache`` keeps every layer's keys and values (one new position per step, :meth:`_generate_cached`);
        without it, each step recomputes the whole prefix.
        """
        if use_cache:
            return self._generate_cached(batch, top_k, temperature, generator)
        cond, target_len = batch["cond"], batch["target_len"]
        B, T = cond.shape[0], cond.shape[-1]
        out = torch.zeros(B, T, dtype=torch.long, device=cond.device)
        work = {k: batch[k] for k in ("timbre", "timbre_len", "cond", "target_len")}
        first = self.target_positions(batch)
        rows = torch.arange(B, device=cond.device)
        for j in range(int(target_len.max())):
            work["target"] = out[:, None, :]
            packed = self.pack(work)
            stop = int((first + j).max()) + 1  # causal: later positions cannot change these logits
            cut = Packed(*(t[:, :stop] for t in (packed.idx, packed.mask, packed.labels, packed.key_padding)))
            logits = self.logits(cut)[rows, (first + j).clamp(max=stop - 1)].float()  # (B, V)
            code = _sample(logits, top_k, temperature, generator)
            out[:, j] = torch.where(j < target_len, code, out[:, j])
        return out

    def _generate_cached(
        self, batch: Mapping[str, Tensor], top_k: int, temperature: float, generator: torch.Generator | None
    ) -> Tensor:
        """:meth:`generate` with a KV cache.

        Rows have prompts of different lengths, so each row is shifted right by ``max(first) - first[b]`` positions
        (left padding that no real position attends to) until every row predicts target frame j at the same position
        ``max(first) + j``. Rotary embeddings depend only on the distance between two positions, so the shift leaves
        every attention score as it was. The prompt is run once; then one position per step.
        """
        cond, target_len = batch["cond"], batch["target_len"]
        B, T = cond.shape[0], cond.shape[-1]
        device = cond.device
        out = torch.zeros(B, T, dtype=torch.long, device=device)
        work = {k: batch[k] for k in ("timbre", "timbre_len", "cond", "target_len")}
        work["target"] = out[:, None, :]
        first = self.target_positions(batch)
        last = int(first.max())
        shift = last - first  # (B,)
        steps = int(target_len.max())
        length = last + steps
        pos = torch.arange(length, device=device)
        src = pos[None, :] - shift[:, None]  # (B, length): each aligned position's index in the packed row
        real = src >= 0
        rope = self.rope if self.rope.shape[1] >= length else rope_table(
            self.cfg.head_dim, length, self.cfg.rope_theta, device=device)
        caches = [KVCache() for _ in self.layers]
        blocks = self.blocks()

        def run(lo: int, hi: int) -> Tensor:
            """Positions [lo, hi) through the trunk; their final-norm hidden states (B, hi - lo, d_model)."""
            packed = self.pack(work)
            at = src[:, lo:hi].clamp(0, packed.idx.shape[1] - 1)
            idx = packed.idx.gather(1, at[..., None].expand(-1, -1, packed.idx.shape[-1]))
            mask = packed.mask.gather(1, at[..., None].expand(-1, -1, packed.mask.shape[-1])) & real[:, lo:hi, None]
            e = self.tok_embeddings(idx)
            h = (e * mask.unsqueeze(-1).to(e.dtype)).sum(2)
            query, key = pos[lo:hi, None], pos[None, :hi]
            allowed = (key <= query)[None] & (real[:, None, :hi] | (key == query)[None])  # pads see only themselves
            for block, cache in zip(blocks, caches, strict=True):
                h = block.extend(h, rope[:, lo:hi], cache, allowed[:, None])
            return self.norm(h)

        h = run(0, last + 1)[:, -1]
        for j in range(steps):
            code = _sample(self.output(h).float(), top_k, temperature, generator)
            out[:, j] = torch.where(j < target_len, code, out[:, j])
            if j + 1 < steps:
                h = run(last + 1 + j, last + 2 + j)[:, -1]
        return out


class NARUpsampler(CodecLM):
    """Bidirectional model of target levels 1..N-1 given level(s) below, the timbre clip and the conditioning."""

    causal = False

    @staticmethod
    def _layout_name(cfg: ModelConfig) -> str:
        return "nar"

    def _slots(self) -> int:
        cfg = self.cfg
        return max(cfg.n_codebooks, (cfg.n_codebooks - 1) + 2 * cfg.cond_codebooks + 1) + 1

    def _segments(self, timbre_len: Tensor, target_len: Tensor) -> tuple[list[int], Tensor]:
        one = torch.ones_like(target_len)
        return [TMB, TIMBRE, GEN, FRAME], torch.stack([one, timbre_len, one, target_len], dim=1)

    def pack(self, batch: Mapping[str, Tensor], level: Tensor | None = None) -> Packed:
        """Pack for predicting ``level`` (B,) (default ``batch["level"]``, else uniform in [1, n_codebooks))."""
        N, V = self.cfg.n_codebooks, self.cfg.codebook_size
        target = batch["target"]
        B = target.shape[0]
        if level is None:
            level = batch.get("level")
        if level is None:
            # Same draw on every rank that seeded torch identically (TP ranks must agree).
            level = torch.randint(1, N, (B,)).to(target.device)
        kind, within, _, seg, _ = self._layout(batch)
        idx, mask = self._base_slots(kind)
        off = self.vocab.offset
        frames = kind == FRAME
        self._put(idx, mask, kind == TIMBRE, 0, self._timbre_rows(batch["timbre"], within))
        lower = _gather_frames(target[:, : N - 1], within) + off["target"] + V * torch.arange(N - 1, device=idx.device)
        below = torch.arange(N - 1, device=idx.device)[None, None, :] < level[:, None, None]  # (B, 1, N-1)
        self._put(idx, mask, frames, 0, lower, below)
        self._put(idx, mask, frames, N - 1, self._cond_rows(batch["cond"], within))
        level_row = (off["level"] + level - 1)[:, None, None].expand(-1, kind.shape[1], 1)
        self._put(idx, mask, frames, N - 1 + 2 * self.cfg.cond_codebooks, level_row)
        wanted = target.gather(1, level[:, None, None].expand(-1, 1, target.shape[-1]))  # (B, 1, T)
        labels = torch.where(frames, _gather_frames(wanted, within)[..., 0], IGNORE_INDEX)
        return Packed(idx=idx, mask=mask, labels=labels, key_padding=seg < 4)

    def forward(self, batch: Mapping[str, Tensor], level: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """CE on one level per row (``level`` (B,), see :meth:`pack`) over that row's target frames."""
        packed = self.pack(batch, level)
        return self.loss(self.logits(packed), packed.labels)

    @torch.no_grad()
    def level_metrics(self, batch: Mapping[str, Tensor]) -> dict[int, dict[str, float]]:
        """Teacher-forced loss / acc / top10_acc of every level 1..N-1 (one forward per level)."""
        B = batch["target"].shape[0]
        out = {}
        for lvl in range(1, self.cfg.n_codebooks):
            level = torch.full((B,), lvl, dtype=torch.long, device=batch["target"].device)
            _, m = self(batch, level)
            out[lvl] = {k: float(m[k]) for k in ("loss", "acc", "top10_acc")}
        return out

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Tensor], level0: Tensor) -> Tensor:
        """Greedily fill levels 1..N-1 given ``level0`` (B, T) -> codes (B, n_codebooks, T), 0 past ``target_len``."""
        N = self.cfg.n_codebooks
        B, T = level0.shape
        codes = torch.zeros(B, N, T, dtype=torch.long, device=level0.device)
        codes[:, 0] = level0
        valid = torch.arange(T, device=level0.device)[None, :] < batch["target_len"][:, None]
        codes[:, 0] *= valid
        work = {k: batch[k] for k in ("timbre", "timbre_len", "cond", "target_len")}
        for lvl in range(1, N):
            work["target"] = codes
            packed = self.pack(work, torch.full((B,), lvl, dtype=torch.long, device=level0.device))
            logits = self.logits(packed)
            frame_pos = packed.labels != IGNORE_INDEX  # (B, S), exactly target_len[b] per row, in frame order
            pred = torch.zeros(B, T, dtype=torch.long, device=level0.device)
            pred[valid] = logits.argmax(-1)[frame_pos]
            codes[:, lvl] = pred
        return codes


def _sample(logits: Tensor, top_k: int, temperature: float, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) codes: argmax for top_k == 1, else top-k sampling."""
    if top_k <= 1 or temperature <= 0:
        return logits.argmax(-1)
    values, indices = (logits / temperature).topk(min(top_k, logits.shape[-1]), dim=-1)
    choice = torch.multinomial(values.softmax(-1), 1, generator=generator)
    return indices.gather(1, choice)[:, 0]
