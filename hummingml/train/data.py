"""Training examples from the extraction's Parquet sets.

One example is one melodic part (a stem such as ``lead``) of one segment:

- ``target``: the part's DAC codes over a window of ``frames`` frames, ``(n_codebooks, frames)``;
- ``sine`` and ``mono``: the frame-aligned conditioning over the same window, each ``(cond_codebooks, frames)``:
  the codes of the part's sine rendering (its notes) and of the mono reference;
- ``timbre``: a 1-5 s clip of the same part from a different, non-overlapping time of the segment,
  ``(n_codebooks, timbre_frames)``;
- ``source_id``, ``segment_index``, ``part`` and ``target_start`` (the window's first frame in the segment): where
  the example comes from, so that evaluation can find the part's audio again.

Augmentation: with probability ``mono_variant_prob`` the mono reference is one of its audio-augmented variants
(gain, noise, EQ; encoded at extraction, ``hummingml.stages.augment``); then, on tokens, random replacement of
mono-reference tokens (noise), a random shift of the sine stream by up to ``jitter_frames`` (note timing jitter),
random timbre length and position. Parts whose instrument (the manifest's ``instruments`` metadata) is in
``holdout_instruments`` form the unseen-instrument split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hummingml.output import read_set, set_files


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how examples are cut from them."""

    features: str = "demo-out/features"  # extraction output root (holds audio-feature/ and sine-audio-feature/)
    parts: tuple[str, ...] = ("vocals", "lead")  # melodic stems used as target parts
    frames: int = 64  # target window in DAC frames (86.13 frames/s)
    timbre_min_frames: int = 16  # shortest timbre clip in frames (86 = 1 s)
    timbre_max_frames: int = 32  # longest timbre clip in frames (431 = 5 s)
    augment: bool = True  # token-level augmentation (noise, jitter, timbre length/position); off for evaluation
    mono_noise: float = 0.1  # fraction of mono-reference tokens replaced by random tokens
    mono_variant_prob: float = 0.5  # chance to condition on an audio-augmented mono variant (gain/noise/EQ) instead
    jitter_frames: int = 1  # the sine stream shifts by up to this many frames
    holdout_instruments: tuple[str, ...] = ()  # instruments (metadata 'instruments'[part]) kept out of training
    seed: int = 0  # example randomness: crop positions, timbre clips, augmentation


def _rng(cfg: DataConfig, *key: Any) -> np.random.Generator:
    digest = hashlib.sha256(repr((cfg.seed, *key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def instrument_of(metadata: str, part: str) -> str | None:
    """The instrument playing ``part`` according to the row's manifest metadata, if it says."""
    try:
        return (json.loads(metadata or "{}").get("instruments") or {}).get(part)
    except (json.JSONDecodeError, AttributeError):
        return None


def split_of(metadata: str, part: str, cfg: DataConfig) -> Literal["train", "unseen"]:
    """``unseen`` when the part's instrument is held out, else ``train``."""
    return "unseen" if instrument_of(metadata, part) in cfg.holdout_instruments else "train"


def examples_from_row(
    row: dict[str, Any],
    cfg: DataConfig,
    cond_codebooks: int,
    codebook_size: int,
    epoch: int = 0,
    split: Literal["train", "unseen", "all"] = "train",
) -> Iterator[dict[str, Any]]:
    """The examples of one joined row (audio-feature columns plus sine-audio-feature's ``mono_codes``, ``melody``).

    Parts with no notes, parts of the other split, and segments too short for a target window plus the shortest
    timbre clip yield nothing.
    """
    names = list(row["stem_names"])
    streams = {m["stream"]: m for m in row["melody"]}
    mono = np.asarray(row["mono_codes"], dtype=np.int64)[0]  # (K, F)
    for part in cfg.parts:
        if part not in names or part not in streams or not streams[part]["notes"]:
            continue
        if split != "all" and split_of(row.get("metadata", "{}"), part, cfg) != split:
            continue
        target_all = np.asarray(row["stem_codes"][names.index(part)], dtype=np.int64)[0]  # channel 0: (K, F)
        sine = np.asarray(streams[part]["sine_codes"], dtype=np.int64)[0]
        n = target_all.shape[1]
        if n < cfg.frames + cfg.timbre_min_frames:
            continue
        rng = _rng(cfg, row["source_id"], int(row["segment_index"]), part, epoch)
        p = (
            int(rng.integers(cfg.timbre_min_frames, cfg.timbre_max_frames + 1))
            if cfg.augment
            else cfg.timbre_max_frames
        )
        p = min(p, n - cfg.frames)
        # target window and timbre clip never overlap: the clip goes before or after the window
        start = int(rng.integers(0, n - cfg.frames - p + 1))
        if rng.random() < 0.5:
            t_start, y_start = start, start + p
        else:
            y_start, t_start = start, start + cfg.frames
        window = slice(y_start, y_start + cfg.frames)
        sine_w = sine[:cond_codebooks, window]
        variants = row.get("mono_variants") or []
        if cfg.augment and variants and rng.random() < cfg.mono_variant_prob:
            chosen = variants[int(rng.integers(0, len(variants)))]["codes"]
            mono_w = np.asarray(chosen, dtype=np.int64)[0][:cond_codebooks, window].copy()
        else:
            mono_w = mono[:cond_codebooks, window].copy()
        if cfg.augment:
            shift = int(rng.integers(-cfg.jitter_frames, cfg.jitter_frames + 1))
            lo, hi = y_start - shift, y_start - shift + cfg.frames
            if lo >= 0 and hi <= n:
                sine_w = sine[:cond_codebooks, lo:hi]
            noisy = rng.random(mono_w.shape) < cfg.mono_noise
            mono_w[noisy] = rng.integers(0, codebook_size, int(noisy.sum()))
        yield {
            "source_id": row["source_id"],
            "segment_index": int(row["segment_index"]),
            "part": part,
            "timbre": target_all[:, t_start : t_start + p],
            "sine": sine_w,
            "mono": mono_w,
            "target": target_all[:, window],
            "target_start": y_start,  # first frame of the target window in the segment
        }


AUDIO_COLUMNS = ("source_id", "segment_index", "metadata", "stem_names", "stem_codes")  # what training reads


def sine_columns(features: str) -> list[str]:
    """The sine-audio-feature columns training reads; ``mono_variants`` only where the set has it (schema >= 1.1)."""
    import pyarrow.dataset as pads

    fs, files, _ = set_files(features, "sine-audio-feature")
    names = pads.dataset(files, filesystem=fs, format="parquet").schema.names if files else []
    columns = ["source_id", "segment_index", "mono_codes", "melody"]
    return [*columns, "mono_variants"] if "mono_variants" in names else columns


class JoinedRows:
    """The two feature sets' current rows joined on (source_id, segment_index), sorted by that key, read here.

    The rows :func:`hummingml.train.ray.read_joined` gives, without Ray: for runs in one process (tests, small
    local runs). Holds every row in memory.
    """

    def __init__(self, features: str) -> None:
        def rows(name: str, columns: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
            table = read_set(features, name, columns)
            if table is None:
                return {}
            return {(r["source_id"], r["segment_index"]): r for r in table.to_pylist()}

        audio = rows("audio-feature", list(AUDIO_COLUMNS))
        sine = rows("sine-audio-feature", sine_columns(features))
        self.rows = [{**audio[key], **sine[key]} for key in sorted(audio.keys() & sine.keys())]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every joined row, in key order."""
        return iter(self.rows)
