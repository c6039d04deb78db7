"""Batches in the model's contract (:mod:`hummingml.model.lm` describes it): :func:`make_batch` collates
per-example code arrays, zero-padded; :func:`build_example_batch` draws random codes of the same shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from hummingml.model.config import ModelConfig
from hummingml.model.lm import Batch, packed_length

# --- batches -------------------------------------------------------------------------------------------------------


def _codes_2d(a: npt.NDArray[np.integer], name: str) -> npt.NDArray[np.integer]:
    """(levels, frames) from (levels, frames) or the schema's (1, levels, frames)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected (levels, frames) codes, got shape {a.shape}")
    return a


def make_batch(
    examples: Sequence[Mapping[str, npt.NDArray[np.integer]]],
    cfg: ModelConfig,
    timbre_frames: int | None = None,
    frames: int | None = None,
) -> Batch:
    """Collate examples into the batch contract (module docstring), zero-padded.

    Each example: ``timbre`` (n_codebooks, P), ``sine`` and ``mono`` (>= cond_codebooks, T), and for training
    ``target`` (n_codebooks, T); a leading channel axis of 1, as stored by the extraction, is accepted.
    ``timbre_frames`` / ``frames`` pad P / T to fixed sizes (static shapes for XLA); default: the batch maximum.
    Raises ValueError on codes out of range or rows longer than ``cfg.max_seq_len`` in ``cfg.layout`` (the NAR
    row of the same example is shorter).
    """
    Kc, N = cfg.cond_codebooks, cfg.n_codebooks
    rows = []
    for i, ex in enumerate(examples):
        timbre = _codes_2d(ex["timbre"], "timbre")
        sine, mono = _codes_2d(ex["sine"], "sine")[:Kc], _codes_2d(ex["mono"], "mono")[:Kc]
        target = _codes_2d(ex["target"], "target") if "target" in ex else None
        T = sine.shape[1]
        if timbre.shape[0] != N or sine.shape[0] != Kc or mono.shape[0] != Kc or mono.shape[1] != T:
            raise ValueError(f"example {i}: shapes timbre {timbre.shape}, sine {sine.shape}, mono {mono.shape}")
        if target is not None and target.shape != (N, T):
            raise ValueError(f"example {i}: target shape {target.shape} != ({N}, {T})")
        if timbre.shape[1] < 1 or T < 1:
            raise ValueError(f"example {i}: needs >= 1 timbre frame and >= 1 target frame")
        for name, a in (("timbre", timbre), ("sine", sine), ("mono", mono), ("target", target)):
            if a is not None and (a.min() < 0 or a.max() >= cfg.codebook_size):
                raise ValueError(f"example {i}: {name} codes outside [0, {cfg.codebook_size})")
        layout = cfg.layout
        if packed_length(layout, timbre.shape[1], T) > cfg.max_seq_len:
            raise ValueError(
                f"example {i}: {layout} row of P={timbre.shape[1]}, T={T} is "
                f"{packed_length(layout, timbre.shape[1], T)} tokens > max_seq_len {cfg.max_seq_len}"
            )
        rows.append((timbre, sine, mono, target))
    B = len(rows)
    P = timbre_frames or max(r[0].shape[1] for r in rows)
    T = frames or max(r[1].shape[1] for r in rows)
    out = {
        "timbre": torch.zeros(B, N, P, dtype=torch.long),
        "timbre_len": torch.tensor([r[0].shape[1] for r in rows], dtype=torch.long),
        "cond": torch.zeros(B, 2, Kc, T, dtype=torch.long),
        "target_len": torch.tensor([r[1].shape[1] for r in rows], dtype=torch.long),
    }
    if int(out["timbre_len"].max()) > P or int(out["target_len"].max()) > T:
        raise ValueError(f"an example is longer than timbre_frames={P} / frames={T}")
    with_target = all(r[3] is not None for r in rows)
    if with_target:
        out["target"] = torch.zeros(B, N, T, dtype=torch.long)
    for b, (timbre, sine, mono, target) in enumerate(rows):
        out["timbre"][b, :, : timbre.shape[1]] = torch.from_numpy(timbre.astype(np.int64))
        out["cond"][b, 0, :, : sine.shape[1]] = torch.from_numpy(sine.astype(np.int64))
        out["cond"][b, 1, :, : mono.shape[1]] = torch.from_numpy(mono.astype(np.int64))
        if with_target and target is not None:  # with_target: no row's target is None
            out["target"][b, :, : target.shape[1]] = torch.from_numpy(target.astype(np.int64))
    return out


def build_example_batch(
    cfg: ModelConfig,
    batch_size: int,
    timbre_frames: int,
    frames: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    variable_lengths: bool = False,
) -> Batch:
    """Random codes in the batch contract; with ``variable_lengths`` each row's P and T are drawn in [1, max]."""
    V, N, Kc = cfg.codebook_size, cfg.n_codebooks, cfg.cond_codebooks

    def codes(*shape: int) -> Tensor:
        return torch.randint(0, V, shape, generator=generator)

    if variable_lengths:
        timbre_len = torch.randint(1, timbre_frames + 1, (batch_size,), generator=generator)
        target_len = torch.randint(1, frames + 1, (batch_size,), generator=generator)
    else:
        timbre_len = torch.full((batch_size,), timbre_frames)
        target_len = torch.full((batch_size,), frames)
    batch = {
        "timbre": codes(batch_size, N, timbre_frames),
        "timbre_len": timbre_len,
        "cond": codes(batch_size, 2, Kc, frames),
        "target": codes(batch_size, N, frames),
        "target_len": target_len,
    }
    return {k: v.to(device) for k, v in batch.items()}
