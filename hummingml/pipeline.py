"""The extraction steps as batch callables, independent of any executor.

Each step takes and returns a batch ``{"source_id": [...], "segment_index": [...], "payload": [...]}`` where
``payload`` is a pickled dict per row (arrays of varying shapes travel through Ray's object store unchanged).
A row whose payload has ``error`` set is passed through untouched by later steps, so a failure in any stage
becomes exactly one error row and never takes good rows with it. ``hummingml.ray_stages`` runs these steps on
Ray Data; ``run_local`` runs them in one process (tests, baselines).
"""

from __future__ import annotations

import json
import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from hummingml.audio import (
    FEATURE_SAMPLE_RATE,
    FRAME_HOP,
    AudioReader,
    DecodeError,
    n_frames,
    resampled_length,
    resampled_pieces,
    to_mono,
)
from hummingml.models import ModelsConfig
from hummingml.sources import AUDIO_EXTENSIONS, Source, SourceUnavailable, open_source, printable
from hummingml.stages import augment
from hummingml.stages.codec import CodecConfig
from hummingml.stages.pitch import PitchConfig
from hummingml.stages.separate import MELODIC_STEMS, STEMS, SeparateConfig

Batch = dict[str, Any]


@dataclass(frozen=True)
class ExtractConfig:
    """Everything an extraction run needs; printed at start and stored in every output file's metadata."""

    input: str = ""  # directory, glob, file, s3:// (any pyarrow URI), manifest .parquet/.csv/.jsonl, or sqlite:///db
    output: str = "extract-out"  # output root: local path or object-store URI
    query: str = ""  # SQL for a sqlite:/// input; must return the uri column
    uri_column: str = "uri"  # manifest or query column holding each input's URI
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS  # file name endings picked from a directory or glob
    segment_s: float = 30.0  # segment length in seconds; the last segment of a source is shorter
    melodic_stems: tuple[str, ...] = MELODIC_STEMS  # stems that get notes and a sine rendering, besides the mono ref
    stem_channels: Literal["mono", "stereo"] = "mono"  # encode each stem as 1 DAC stream (its mono mix) or 2
    mono_variants: int = 1  # augmented copies (gain, noise, EQ) of the mono reference encoded per segment, for training
    limit: int = 0  # process at most this many inputs (0 = all)
    retry_errors: bool = False  # on a rerun, process sources that earlier ended as error rows again
    read_retries: int = 4  # retries of an input read that failed for a transient reason (network, throttling, 5xx)
    read_backoff_s: float = 1.0  # wait before the first read retry; it doubles with every retry
    commit_rows: int = 32  # segments per committed batch (one Parquet file per output set per batch)
    actor_threads: int = 1  # torch threads per model actor; 1 does the most work per core, more: fewer actors, less RAM
    plan_cpus: float = 0.0  # size the actor pools for this many CPUs (0: the cluster's at start); autoscaling clusters
    wait_for_cpus_s: float = 600.0  # wait this long for ray_stages.MIN_CPUS while a cluster scales up
    models: ModelsConfig = field(default_factory=ModelsConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    separate: SeparateConfig = field(default_factory=SeparateConfig)  # its ``models`` is replaced by ``models``
    codec: CodecConfig = field(default_factory=CodecConfig)  # its ``models`` is replaced by ``models``

    def separate_config(self) -> SeparateConfig:
        """The separation config with this run's models."""
        return replace(self.separate, models=self.models)

    def codec_config(self) -> CodecConfig:
        """The codec config with this run's models."""
        return replace(self.codec, models=self.models)


def pack(row: dict[str, Any]) -> bytes:
    """Serialise one row's payload."""
    return pickle.dumps(row, protocol=5)


def unpack(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    return pickle.loads(blob)


def _rows(batch: Batch) -> list[dict[str, Any]]:
    return [unpack(b) for b in batch["payload"]]


def _batch(rows: list[dict[str, Any]]) -> Batch:
    return {
        "source_id": np.array([r["source_id"] for r in rows], dtype=object),
        "segment_index": np.array([r["segment_index"] for r in rows], dtype=np.int64),
        "payload": np.array([pack(r) for r in rows], dtype=object),
    }


def _fail(row: dict[str, Any], stage: str, exc: BaseException) -> None:
    kind = f":{exc.kind}" if isinstance(exc, DecodeError) else ""
    row["error"] = {"stage": stage, "error_type": type(exc).__name__ + kind, "message": str(exc) or repr(exc)}
    if not isinstance(exc, DecodeError | FileNotFoundError):
        row["error"]["message"] += "\n" + "".join(traceback.format_exception(exc)[-3:])
    for key in [k for k, v in row.items() if isinstance(v, np.ndarray)]:
        del row[key]  # an error row carries no audio


def source_rows(sources: list[Source], skip: dict[str, list[int]] | None = None) -> Batch:
    """The first batch of the pipeline: one row per source (``skip``: segments already committed, per source)."""
    rows = [
        {
            "source_id": s.source_id,
            "segment_index": -1,
            "source_uri": s.uri,
            "metadata": s.metadata,
            "skip_segments": sorted((skip or {}).get(s.source_id, [])),
        }
        for s in sources
    ]
    return _batch(rows)


class DecodeStep:
    """Read, hash, decode, resample to 22.05 kHz and cut into segments; one row per source in, one per segment out.

    The source is streamed (:func:`hummingml.sources.open_source`, :class:`hummingml.audio.AudioReader`): memory
    holds one segment and a few decoded blocks whatever the file's length. :meth:`batches` yields one batch per
    segment (the Ray job's decode tasks do this); calling the step returns them all in one batch.
    """

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        return _batch([out for row in _rows(batch) for out in self._segments(row)])

    def batches(self, batch: Batch) -> Iterator[Batch]:
        """One single-row batch per output row, as they are decoded."""
        for row in _rows(batch):
            for out in self._segments(row):
                yield _batch([out])

    def _segments(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        stage = "read"
        source = None
        try:
            source = open_source(row["source_uri"], self.cfg.read_retries, self.cfg.read_backoff_s)
            row["content_sha256"] = source.sha256
            stage = "decode"
            reader = AudioReader(source.file, source.size)
            if reader.channels > 2:
                raise DecodeError(
                    "channels",
                    f"{reader.channels} channels: features are made from mono or stereo; mix the file down to stereo "
                    "first (e.g. ffmpeg -i in.wav -ac 2 out.wav), since the layout of a multichannel file is not known",
                )
        except SourceUnavailable as exc:
            row["deferred"] = printable(str(exc))  # not committed: the source stays pending for a rerun
            yield row
            return
        except Exception as exc:
            if source is not None:
                source.close()
            _fail(row, stage, exc)
            yield row
            return
        with source:
            yield from self._cut(row, reader)

    def _cut(self, row: dict[str, Any], reader: AudioReader) -> Iterator[dict[str, Any]]:
        seg_len = max(FRAME_HOP, round(self.cfg.segment_s * FEATURE_SAMPLE_RATE))
        total = resampled_length(reader.frames, reader.sample_rate, FEATURE_SAMPLE_RATE)
        n_segments = max(1, -(-total // seg_len))
        common = {
            **{k: row[k] for k in ("source_id", "source_uri", "metadata", "content_sha256")},
            "source_sample_rate": reader.sample_rate,
            "source_channels": reader.channels,
            "source_duration_s": reader.frames / reader.sample_rate,
            "n_segments": n_segments,
        }
        skip = set(row["skip_segments"])
        done = 0  # segments handled so far
        try:
            for i, piece in enumerate(resampled_pieces(reader, FEATURE_SAMPLE_RATE, seg_len)):
                done = i
                if i in skip:
                    continue
                yield {
                    **common,
                    "segment_index": i,
                    "segment_start_s": i * seg_len / FEATURE_SAMPLE_RATE,
                    "segment_duration_s": piece.shape[1] / FEATURE_SAMPLE_RATE,
                    "segment_samples": piece.shape[1],
                    "audio": piece,
                    "mono": to_mono(piece),
                }
                done = i + 1
        except Exception as exc:  # the stream failed on the second reading (changed, or an I/O error)
            for j in range(done, n_segments):
                if j not in skip:
                    failed = {**common, "segment_index": j}
                    _fail(failed, "decode", exc)
                    yield failed


class _ModelStep:
    """Shared batch loop of the model-backed steps: run ``process`` on every good row, capture failures.

    A step built with ``threads > 0`` sets torch's intra-op threads of its process to that many (Ray's default for an
    actor that reserves under one CPU is one); 0 leaves torch's default.
    """

    stage = ""

    @staticmethod
    def _set_threads(threads: int) -> None:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)

    def __call__(self, batch: Batch) -> Batch:
        rows = _rows(batch)
        for row in rows:
            if row.get("error") or row.get("deferred"):
                continue
            try:
                self.process(row)
            except Exception as exc:
                _fail(row, self.stage, exc)
        return _batch(rows)

    def process(self, row: dict[str, Any]) -> None:
        """Add this step's outputs to ``row`` in place."""
        raise NotImplementedError


class SeparateStep(_ModelStep):
    """Six stems per segment with Demucs; adds ``stems`` (name -> float32 (2, samples) at 22.05 kHz)."""

    stage = "separate"

    def __init__(self, cfg: ExtractConfig, model: Any = None, threads: int = 0) -> None:
        from hummingml.stages.separate import Separator

        self._set_threads(threads)
        self.separator = Separator(cfg.separate_config(), model=model)

    def process(self, row: dict[str, Any]) -> None:
        row["stems"] = self.separator.separate(row["audio"], FEATURE_SAMPLE_RATE).as_dict()


class PitchStep(_ModelStep):
    """Basic Pitch notes and their sine rendering for the mono reference and each melodic stem."""

    stage = "pitch"

    def __init__(self, cfg: ExtractConfig, model: Any = None, threads: int = 0) -> None:
        from hummingml.stages.pitch import PitchDetector

        self._set_threads(threads)
        self.cfg = cfg
        self.detector = PitchDetector(cfg.pitch, model=model)

    def process(self, row: dict[str, Any]) -> None:
        from hummingml.stages.pitch import notes_to_midi
        from hummingml.stages.synth import render_sine

        streams = {"mono": row["mono"]}
        streams.update({s: to_mono(row["stems"][s]) for s in self.cfg.melodic_stems})
        row["melody"] = []
        for name, audio in streams.items():
            notes = self.detector.detect(audio, FEATURE_SAMPLE_RATE)
            sine = render_sine(notes, audio.shape[1], FEATURE_SAMPLE_RATE)
            row["melody"].append(
                {"stream": name, "notes": [asdict(n) for n in notes], "midi": notes_to_midi(notes), "sine": sine}
            )


class CodecStep(_ModelStep):
    """DAC codes for the channels, the stems, the mono reference and every sine rendering; drops the audio."""

    stage = "codec"

    def __init__(self, cfg: ExtractConfig, model: Any = None, threads: int = 0) -> None:
        from hummingml.stages.codec import Codec

        self._set_threads(threads)
        self.cfg = cfg
        self.codec = Codec(cfg.codec_config(), model=model)

    def process(self, row: dict[str, Any]) -> None:
        def encode(audio: np.ndarray) -> np.ndarray:
            return self.codec.encode(audio, FEATURE_SAMPLE_RATE).codes
        row["channel_codes"] = encode(row.pop("audio"))
        stems = row.pop("stems")
        row["stem_names"] = list(STEMS)
        row["stem_codes"] = [encode(to_mono(stems[s]) if self.cfg.stem_channels == "mono" else stems[s]) for s in STEMS]
        mono = row.pop("mono")
        row["mono_codes"] = encode(mono)
        row["mono_variants"] = []
        for copy in range(self.cfg.mono_variants):
            variant = augment.draw(augment.AugmentConfig(), row["source_id"], int(row["segment_index"]), copy)
            codes = encode(augment.apply(mono, FEATURE_SAMPLE_RATE, variant))
            row["mono_variants"].append({**asdict(variant), "codes": codes})
        for stream in row["melody"]:
            stream["sine_codes"] = encode(stream.pop("sine"))
        row["n_frames"] = int(row["channel_codes"].shape[-1])
        expected = n_frames(row["segment_samples"])
        if row["n_frames"] != expected:
            raise RuntimeError(f"codec returned {row['n_frames']} frames, expected {expected}")


def _codes(array: np.ndarray) -> list:
    """int16 (channels, n_codebooks, frames) -> nested lists for Arrow."""
    return np.asarray(array, dtype=np.int16).tolist()


PROVENANCE_KEYS = (
    "source_id",
    "segment_index",
    "source_uri",
    "content_sha256",
    "source_sample_rate",
    "source_channels",
    "source_duration_s",
    "segment_start_s",
    "segment_duration_s",
    "n_segments",
    "n_frames",
    "metadata",
)


def feature_tables(rows: list[dict[str, Any]], frame_rate: float) -> dict[str, pa.Table]:
    """The three output tables of a batch of finished rows (feature rows and error rows)."""
    from schemas.features import SCHEMAS

    audio, sine, errors = [], [], []
    for row in rows:
        if row.get("error"):
            errors.append(
                {
                    "source_id": row["source_id"],
                    "segment_index": row["segment_index"],
                    "source_uri": printable(row["source_uri"]),
                    **row["error"],
                    "message": printable(row["error"]["message"]),
                }
            )
            continue
        common = {k: row[k] for k in PROVENANCE_KEYS}
        common["source_uri"] = printable(common["source_uri"])
        common.update(sample_rate=FEATURE_SAMPLE_RATE, frame_rate=frame_rate)
        audio.append(
            {
                **common,
                "channel_codes": _codes(row["channel_codes"]),
                "stem_names": row["stem_names"],
                "stem_codes": [_codes(c) for c in row["stem_codes"]],
            }
        )
        melody = [
            {"stream": m["stream"], "notes": m["notes"], "midi": m["midi"], "sine_codes": _codes(m["sine_codes"])}
            for m in row["melody"]
        ]
        variants = [{**v, "codes": _codes(v["codes"])} for v in row.get("mono_variants", [])]
        sine.append({**common, "mono_codes": _codes(row["mono_codes"]), "mono_variants": variants, "melody": melody})
    return {
        "audio-feature": pa.Table.from_pylist(audio, schema=SCHEMAS["audio-feature"]),
        "sine-audio-feature": pa.Table.from_pylist(sine, schema=SCHEMAS["sine-audio-feature"]),
        "errors": pa.Table.from_pylist(errors, schema=SCHEMAS["errors"]),
    }


class CommitStep:
    """Write a batch of finished rows exactly once (``hummingml.store``); returns one small summary row per key."""

    def __init__(self, cfg: ExtractConfig, run_metadata: dict[str, Any], frame_rate: float) -> None:
        from hummingml.store import OutputStore

        self.store = OutputStore(cfg.output)
        self.metadata = run_metadata
        self.frame_rate = frame_rate
        self.metrics = _Metrics()

    def __call__(self, batch: Batch) -> Batch:
        rows = _rows(batch)
        done = [r for r in rows if not r.get("deferred")]
        keys = [
            (r["source_id"], int(r["segment_index"]), int(r.get("n_segments", -1)), not r.get("error")) for r in done
        ]
        if done:
            self.store.commit(feature_tables(done, self.frame_rate), keys, self.metadata)
        failed = [bool(r.get("error") or r.get("deferred")) for r in rows]
        summary = {
            "source_id": np.array([r["source_id"] for r in rows], dtype=object),
            "segment_index": np.array([r["segment_index"] for r in rows], dtype=np.int64),
            "ok": ~np.array(failed, dtype=bool),
            "deferred": np.array([r.get("deferred", "") for r in rows], dtype=object),
            "stage": np.array([(r.get("error") or {}).get("stage", "") for r in rows], dtype=object),
            "audio_s": np.array([0.0 if f else r["segment_duration_s"] for r, f in zip(rows, failed, strict=True)]),
        }
        self.metrics.record(summary)
        return summary


class _Metrics:
    """Ray custom metrics (shown in the dashboard's Metrics view when Prometheus/Grafana are set up)."""

    def __init__(self) -> None:
        try:
            from ray.util.metrics import Counter

            self.segments = Counter(
                "hummingml_segments", "segments by status: ok, error, deferred (unreadable now)", tag_keys=("status",)
            )
            self.audio = Counter("hummingml_audio_seconds", "seconds of audio committed as features")
            self.errors = Counter("hummingml_errors", "error rows committed, by stage", tag_keys=("stage",))
        except Exception:  # outside a Ray worker there is nowhere to report to
            self.segments = None

    def record(self, summary: Batch) -> None:
        if self.segments is None:
            return
        ok = int(summary["ok"].sum())
        if ok:
            self.segments.inc(ok, tags={"status": "ok"})
            self.audio.inc(float(summary["audio_s"].sum()))
        for stage, deferred in zip(summary["stage"], summary["deferred"], strict=True):
            if deferred:
                self.segments.inc(1, tags={"status": "deferred"})
            elif stage:
                self.segments.inc(1, tags={"status": "error"})
                self.errors.inc(1, tags={"stage": str(stage)})


def run_metadata(cfg: ExtractConfig, identities: list[dict[str, Any]]) -> dict[str, Any]:
    """What every output file records about the run: config, model identities and library versions."""
    import importlib.metadata as md

    versions = {}
    for dist in ("hummingml", "ray", "torch", "descript-audio-codec", "demucs", "basic-pitch", "onnxruntime"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "models": identities,
        "random_weights": any(i.get("random_weights") for i in identities),
        "versions": versions,
        "created_unix_s": time.time(),
    }


def run_local(
    cfg: ExtractConfig,
    sources: list[Source],
    steps: list[Callable[[Batch], Batch]],
    commit: Callable[[Batch], Batch],
    skip: dict[str, list[int]] | None = None,
) -> list[Batch]:
    """Run the steps in this process, one source at a time, committing every ``cfg.commit_rows`` rows."""
    summaries, pending = [], []
    for source in sources:
        batch = source_rows([source], skip)
        for step in steps:
            batch = step(batch)
        pending.extend(batch["payload"])
        while len(pending) >= cfg.commit_rows:
            chunk, pending = pending[: cfg.commit_rows], pending[cfg.commit_rows :]
            summaries.append(commit(_batch([unpack(p) for p in chunk])))
    if pending:
        summaries.append(commit(_batch([unpack(p) for p in pending])))
    return summaries
