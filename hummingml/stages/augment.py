"""Audio-domain variants of the mono reference: gain, additive noise and a peaking EQ, seeded per segment.

A hummed or sung query differs from the mixture's mono reference in level, room noise and tone colour. Extraction
encodes ``ExtractConfig.mono_variants`` such variants of every segment's mono reference next to the clean one, and
training (``DataConfig.mono_variant_prob``) conditions on one of them instead of the clean codes, so the model does
not learn to rely on the exact spectrum of the reference. The sets hold codes, not audio, which is why the variants
are made at extraction time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from hummingml.audio import F32


@dataclass(frozen=True)
class MonoVariant:
    """The parameters of one variant; stored with its codes in ``sine-audio-feature.mono_variants``."""

    gain_db: float  # level change
    snr_db: float  # white noise added at this signal-to-noise ratio (relative to the reference's RMS)
    eq_hz: float  # centre frequency of the peaking EQ
    eq_db: float  # its gain at the centre
    eq_q: float  # its quality factor
    noise_seed: int  # seed of the noise, so the variant can be made again from these parameters


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges the variants are drawn from (uniform; the EQ frequency log-uniform)."""

    gain_db: tuple[float, float] = (-12.0, 6.0)
    snr_db: tuple[float, float] = (15.0, 40.0)
    eq_hz: tuple[float, float] = (150.0, 6000.0)
    eq_db: tuple[float, float] = (-9.0, 9.0)
    eq_q: tuple[float, float] = (0.5, 2.0)


def draw(cfg: AugmentConfig, source_id: str, segment_index: int, copy: int) -> MonoVariant:
    """The parameters of variant ``copy`` of a segment: the same on every run and every machine."""
    digest = hashlib.sha256(f"{source_id}/{segment_index}/{copy}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    lo, hi = math.log(cfg.eq_hz[0]), math.log(cfg.eq_hz[1])
    return MonoVariant(
        gain_db=float(rng.uniform(*cfg.gain_db)),
        snr_db=float(rng.uniform(*cfg.snr_db)),
        eq_hz=float(math.exp(rng.uniform(lo, hi))),
        eq_db=float(rng.uniform(*cfg.eq_db)),
        eq_q=float(rng.uniform(*cfg.eq_q)),
        noise_seed=int(rng.integers(0, 2**31)),
    )


def peaking_eq(audio: F32, sample_rate: int, hz: float, gain_db: float, q: float) -> F32:
    """A peaking (bell) biquad, RBJ audio-EQ-cookbook coefficients, applied along time."""
    from scipy.signal import lfilter

    hz = min(hz, 0.45 * sample_rate)
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * hz / sample_rate
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_gain, -2 * math.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * math.cos(w0), 1 - alpha / a_gain])
    return lfilter(b / a[0], a / a[0], audio, axis=-1).astype(np.float32)


def apply(audio: F32, sample_rate: int, variant: MonoVariant) -> F32:
    """``audio`` (channels, samples) with the variant's EQ, then its noise, then its gain."""
    out = peaking_eq(audio, sample_rate, variant.eq_hz, variant.eq_db, variant.eq_q)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms > 0:
        noise_rms = rms / 10 ** (variant.snr_db / 20)
        out = out + np.random.default_rng(variant.noise_seed).normal(0.0, noise_rms, out.shape).astype(np.float32)
    return (out * 10 ** (variant.gain_db / 20)).astype(np.float32)

