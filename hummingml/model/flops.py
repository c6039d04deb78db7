"""Parameter and FLOP accounting of the codec LMs, and model FLOPs utilisation."""

from __future__ import annotations

from torch import nn

from hummingml.model.config import ModelConfig
from hummingml.model.lm import CodecLM

# --- accounting ----------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def parameter_breakdown(model: CodecLM) -> dict[str, int]:
    """Parameters per part: ``tok_embeddings`` (all rows, incl. padding rows), ``layers``, ``norm``, ``output``."""
    parts = {"tok_embeddings": model.tok_embeddings, "layers": model.layers, "norm": model.norm, "output": model.output}
    return {name: count_parameters(m) for name, m in parts.items()}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * matmul params + 12 * n_layers * d_model * seq_len (PaLM, arXiv 2204.02311 B).

    Embedding lookups are not matmuls and are left out; the attention term ignores the causal mask's halving.
    """
    d = cfg.d_model
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_ff
    matmul_params = cfg.n_layers * (4 * d * d + mlp) + d * cfg.codebook_size
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * d * seq_len


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the hardware's peak."""
    return tokens_per_s * flops_per_tok / peak_flops
