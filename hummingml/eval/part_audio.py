"""The part's own audio for an evaluation example: the source segment re-read and re-separated with the extraction's
steps, config and models, cut to the example's window (the reference of the ``codec_ceiling`` and ``full_vs_audio``
scores). An example whose audio cannot be found again says why (:class:`PartAudio`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from hummingml.audio import FEATURE_SAMPLE_RATE, FRAME_HOP, resample, to_mono
from hummingml.config import from_dict
from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import from_table, source_rows
from hummingml.extract.sources import Source
from hummingml.extract.steps import DecodeStep, SeparateStep
from hummingml.output import read_set
from hummingml.weights.config import ModelsConfig

# --- the parts' own audio (codec ceiling) --------------------------------------------------------------------------


@dataclass
class PartAudio:
    """Each example's target part as audio at the codec's rate, found again from its source (or why not)."""

    audio: list[npt.NDArray[np.float32] | None]  # per example: mono, ``frames * hop`` samples at the codec's rate
    unavailable: dict[str, int]  # reason -> examples without audio


def _provenance(features: str, source_ids: set[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """``(source_id, segment_index) -> {source_uri, content_sha256, n_segments}`` from the audio-feature set."""
    import pyarrow.compute as pc

    table = read_set(
        features,
        "audio-feature",
        columns=["source_id", "segment_index", "source_uri", "content_sha256", "n_segments"],
        filter=pc.field("source_id").isin(sorted(source_ids)),
    )
    if table is None:
        return {}
    return {(r["source_id"], int(r["segment_index"])): r for r in table.to_pylist()}


def part_audio(
    examples: list[dict[str, Any]],
    features: str,
    record: dict[str, Any] | None,
    models: ModelsConfig,
    codec_rate: int,
    frames: int,
    log: TextIO = sys.stdout,
) -> PartAudio:
    """Re-read, decode and re-separate each example's source segment with the extraction's own steps and models.

    The extraction's config comes from ``record`` (its output metadata), with ``models`` for the weights. Each
    source is read once, only its segments that examples use are decoded (``hummingml.extract.steps.DecodeStep``) and
    separated (``SeparateStep``); a part is the stem as the codec saw it (its mono mix, or its left channel with
    ``stem_channels=stereo``, which the examples' channel 0 holds), cut to the example's frames and resampled to the
    codec's rate. A source that cannot be read, fails to decode, or whose bytes changed since the extraction
    (``content_sha256``) gives no audio, counted by reason.
    """
    out = PartAudio([None] * len(examples), {})

    def missing(reason: str, n: int) -> None:
        out.unavailable[reason] = out.unavailable.get(reason, 0) + n

    if not examples:
        return out
    if not record or "config" not in record:
        missing("the features record no extraction config", len(examples))
        return out
    cfg = replace(from_dict(ExtractConfig, record["config"]), models=models)
    wanted: dict[str, dict[int, list[int]]] = {}  # source -> segment -> example indices
    for i, ex in enumerate(examples):
        wanted.setdefault(ex["source_id"], {}).setdefault(int(ex["segment_index"]), []).append(i)
    provenance = _provenance(features, set(wanted))
    segments = sum(len(v) for v in wanted.values())
    print(f"[evaluate] codec ceiling: re-reading {len(wanted)} sources, separating {segments} segments", file=log,
          flush=True)
    decode, separate = DecodeStep(cfg), SeparateStep(cfg)
    for source_id, by_segment in wanted.items():
        first = provenance.get((source_id, next(iter(by_segment))))
        if first is None:
            missing("no audio-feature row", sum(len(v) for v in by_segment.values()))
            continue
        skip = [i for i in range(int(first["n_segments"])) if i not in by_segment]
        batch = separate(decode(source_rows([Source(first["source_uri"], source_id)], {source_id: skip})))
        for row in from_table(batch):
            indices = by_segment.get(int(row.segment_index), [])
            if row.error or row.deferred:
                stage, error_type = (row.error.stage, row.error.error_type) if row.error else ("read", "unavailable")
                missing(f"{stage}: {error_type}", len(indices))
                continue
            if row.content_sha256 != first["content_sha256"]:
                missing("source changed since extraction", len(indices))
                continue
            assert row.stems is not None  # the separate step sets the stems of every row without an error
            for i in indices:
                stem = row.stems[examples[i]["part"]]
                channel = to_mono(stem) if cfg.stem_channels == "mono" else stem[:1]
                start = int(examples[i]["target_start"]) * FRAME_HOP
                piece = channel[:, start : start + frames * FRAME_HOP]
                out.audio[i] = resample(piece, FEATURE_SAMPLE_RATE, codec_rate)[0]
    return out
