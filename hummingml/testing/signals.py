"""Small deterministic signals for tests, examples and benchmarks (shipped so users' tests can use them too)."""

from __future__ import annotations

import os

import numpy as np

from hummingml.audio import F32


def sine(
    frequency_hz: float, seconds: float = 1.0, sample_rate: int = 16_000, amplitude: float = 0.5, channels: int = 1
) -> F32:
    """A pure tone, float32 ``(channels, round(seconds * sample_rate))``, every channel identical."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)
    return np.repeat(tone[None, :], channels, axis=0)


def chord(frequencies_hz: list[float], seconds: float = 1.0, sample_rate: int = 16_000, amplitude: float = 0.5) -> F32:
    """The sum of equal-level tones scaled to peak ``amplitude`` or less, float32 ``(1, samples)``."""
    mix = np.stack([sine(f, seconds, sample_rate, 1.0) for f in frequencies_hz]).sum(axis=0)
    return (amplitude * mix / len(frequencies_hz)).astype(np.float32)


def silence(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1) -> F32:
    """Digital silence, float32 ``(channels, samples)``."""
    return np.zeros((channels, round(seconds * sample_rate)), dtype=np.float32)


def stereo_distinct(seconds: float = 1.0, sample_rate: int = 44_100) -> F32:
    """Stereo with different content per channel: 440 Hz left, 660 Hz right, float32 ``(2, samples)``."""
    return np.concatenate([sine(440.0, seconds, sample_rate), sine(660.0, seconds, sample_rate)], axis=0)


def output_keys(output: str | os.PathLike[str], name: str) -> list[tuple[str, int]]:
    """The ``(source_id, segment_index)`` of every current row of one output set (``audio-feature``, ``errors``, ...),
    as every reader sees them (``hummingml.output.read_set``)."""
    from hummingml.output import read_set

    table = read_set(os.fspath(output), name, ["source_id", "segment_index"])
    if table is None:
        return []
    return list(zip(table["source_id"].to_pylist(), table["segment_index"].to_pylist(), strict=True))
