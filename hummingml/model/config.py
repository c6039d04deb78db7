"""The HummingLM model config. Field comments double as CLI help (``hummingml.config.add_flags``), so each stays
on its field's line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Keys per online-softmax step of the NKI flash kernel (FlashConfig.seq_tile_size, default 2048): the kernel needs the
# sequence length to be a multiple of it (aws-neuron/nki-samples src/nki_samples/reference/attention.py).
NKI_SEQ_TILE = 2048
NKI_MAX_HEAD_DIM = 128  # the kernel's head_dim limit (same file: "we do not support head_dim > 128")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of one HummingLM (AR) or NAR upsampler; parameter counts per preset are in docs/model.md."""

    layout: Literal["humming", "valle"] = "humming"  # AR token layout: timbre prompt + aligned cond, or VALL-E prompt
    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 16
    d_ff: int = 3584  # MLP hidden width (SwiGLU: per matrix)
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    codebook_size: int = 1024  # DAC codebook entries per level
    n_codebooks: int = 9  # DAC levels per frame (44.1 kHz DAC: 9)
    cond_codebooks: int = 4  # first levels of the sine and the mono codes summed into each conditioning frame
    max_seq_len: int = 2048  # longest packed sequence; humming layout needs 3 + P + 2T tokens
    pad_multiple: int = 64  # packed length is rounded up to this multiple (TP sequence parallel needs tp | length)
    pad_to_max: bool = False  # pad every batch to max_seq_len: one static shape for XLA / Neuron
    attention: Literal["sdpa", "nki"] = "sdpa"  # AR attention core: torch SDPA or the NKI flash kernel (NAR: SDPA)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02  # std of embedding and input-projection init; output projections get std/sqrt(2*n_layers)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into n_heads {self.n_heads} heads of even width")
        if not 1 <= self.cond_codebooks <= self.n_codebooks:
            raise ValueError(f"cond_codebooks {self.cond_codebooks} must be in [1, n_codebooks={self.n_codebooks}]")
        if self.n_codebooks < 2:
            raise ValueError("n_codebooks must be >= 2 (level 0 for the AR model, the rest for the NAR)")
        if self.attention == "nki":
            if not self.pad_to_max or self.max_seq_len % NKI_SEQ_TILE:
                raise ValueError(
                    f"attention nki needs pad_to_max and max_seq_len a multiple of {NKI_SEQ_TILE} (the kernel's "
                    f"sequence tile), got pad_to_max={self.pad_to_max}, max_seq_len={self.max_seq_len}"
                )
            if self.head_dim > NKI_MAX_HEAD_DIM:
                raise ValueError(f"attention nki needs head_dim <= {NKI_MAX_HEAD_DIM}, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
