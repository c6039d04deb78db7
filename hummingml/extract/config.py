"""The extraction job's config and the metadata every output file records about the run."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from hummingml.audio import MELODIC_STEMS, STEMS
from hummingml.config import above, at_least, names_in, within
from hummingml.extract.sources import AUDIO_EXTENSIONS, MANIFEST_EXTENSIONS
from hummingml.stages.codec import BACKENDS, CodecConfig
from hummingml.stages.pitch import PitchConfig
from hummingml.stages.separate import SeparateConfig
from hummingml.weights.config import ModelsConfig

# 1 s: every segment is its own Demucs, Basic Pitch (2 s windows) and DAC call, so shorter ones are mostly overhead
# (the tests' shortest is 1 s). 600 s: a segment is one row held in memory, whose six stereo stems alone are
# 600 s x 22,050 Hz x 12 channels x 4 B = 635 MB.
SEGMENT_S_RANGE = (1.0, 600.0)
# Renewed every quarter of the timeout; shorter ones leave an object store's slow write too little margin, and a live
# driver loses its output to a second one.
MIN_LEASE_TIMEOUT_S = 10.0
_DEVICE = re.compile(r"auto|[a-z]+(:\d+)?")  # "auto" or a torch device: cpu, cuda, cuda:1, mps


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
    writers: int = 0  # writer actors committing batches in parallel (0: one per 16 planned CPUs, at least 1)
    actor_threads: int = 1  # torch threads per model actor; 1 does the most work per core, more: fewer actors, less RAM
    placement: Literal["auto", "fused", "stages"] = "auto"  # fused: one whole-pipeline actor (separate, pitch, codec)
    # per actor_threads cores, a process pool's shape; stages: an actor pool per model stage, sized by its work;
    # auto: stages when the cluster has GPUs or a node has over 32 CPUs, else fused (docs/scaling.md, "Placement")
    cpu_reservation: float = 0.5  # share of the CPUs the model actors reserve in Ray, in (0, 1]: 1 = each reserves
    # the threads it runs (a cluster dedicated to this job); 0.5 leaves room to restart a lost node's actors elsewhere
    plan_cpus: float = 0.0  # size the actor pools for this many CPUs (0: the cluster's at start); autoscaling clusters
    wait_for_cpus_s: float = 600.0  # wait this long for extract.ray.MIN_CPUS while a cluster scales up
    lease_timeout_s: float = 120.0  # another driver may take over the output when its lease is this old (seconds)
    allow_config_change: bool = False  # write into an output made with a different extraction config or models
    max_failed_fraction: float = 0.5  # the job exits 1, after writing every row, when more than this fraction of
    # its inputs failed (a wrong mount or format shows as a failed job, not a successful one); 1: never
    ray_progress: bool = False  # also print Ray Data's per-operator progress (many lines every few seconds); the job's
    # own line (inputs done, rows, audio-hours, rate, ETA) is printed every 10 s either way
    stages: Literal["models", "null"] = "models"  # models: Demucs, Basic Pitch, DAC; null: stand-ins of the right
    # shapes and no cost (hummingml.stages.null), to measure the engine alone: benchmarks and tests only
    fail_after_commits: int = 0  # fault injection: the writer exits right after its Nth commit marker, once per
    # output (0 = never); tests use it
    models: ModelsConfig = field(default_factory=ModelsConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    separate: SeparateConfig = field(default_factory=SeparateConfig)  # its ``models`` is replaced by ``models``
    codec: CodecConfig = field(default_factory=CodecConfig)  # its ``models`` is replaced by ``models``

    def problems(self) -> list[str]:
        """Every value no run can use, one line per problem naming its flag (``--segment-s must be ...``)."""
        problems = []
        if not self.input:
            problems.append("--input is required")
        is_db = self.input.startswith("sqlite:")
        if is_db and not self.input.startswith("sqlite:///"):
            problems.append(f"--input: only sqlite:///PATH databases are built in (got {self.input!r})")
        if is_db and not self.query:
            problems.append('--query is required with a sqlite:/// input, e.g. "SELECT uri FROM tracks"')
        if self.query and self.input and not is_db:
            problems.append(f"--query applies to a sqlite:/// input only (--input is {self.input!r})")
        if not self.output:
            problems.append("--output must not be empty")
        if not self.uri_column:
            problems.append("--uri-column must not be empty")
        if not self.extensions:
            problems.append("--extensions must name at least one file name ending, e.g. .wav")
        if bad := [e for e in self.extensions if not e.startswith(".") or e == "."]:
            problems.append(f"--extensions: each must start with '.' and name an ending (got {', '.join(bad)})")
        problems += within("--segment-s", self.segment_s, *SEGMENT_S_RANGE)
        problems += names_in("--melodic-stems", self.melodic_stems, STEMS)
        if self.stem_channels not in ("mono", "stereo"):
            problems.append(f"--stem-channels must be mono or stereo (got {self.stem_channels!r})")
        problems += at_least("--mono-variants", self.mono_variants, 0)
        problems += at_least("--limit", self.limit, 0)
        problems += at_least("--read-retries", self.read_retries, 0)
        problems += at_least("--read-backoff-s", self.read_backoff_s, 0)
        problems += at_least("--commit-rows", self.commit_rows, 1)
        problems += at_least("--writers", self.writers, 0)
        problems += at_least("--actor-threads", self.actor_threads, 1)
        if not 0 < self.cpu_reservation <= 1:
            problems.append(f"--cpu-reservation must be in (0, 1] (got {self.cpu_reservation!r})")
        problems += at_least("--plan-cpus", self.plan_cpus, 0)
        problems += at_least("--wait-for-cpus-s", self.wait_for_cpus_s, 0)
        problems += within("--max-failed-fraction", self.max_failed_fraction, 0, 1)
        problems += at_least("--lease-timeout-s", self.lease_timeout_s, MIN_LEASE_TIMEOUT_S)
        if self.stages not in ("models", "null"):
            problems.append(f"--stages must be models or null (got {self.stages!r})")
        problems += at_least("--fail-after-commits", self.fail_after_commits, 0)
        problems += self.models.problems("models-")
        return problems + _pitch_problems(self.pitch) + _separate_problems(self.separate) + _codec_problems(self.codec)

    def separate_config(self) -> SeparateConfig:
        """The separation config with this run's models."""
        return replace(self.separate, models=self.models)

    def codec_config(self) -> CodecConfig:
        """The codec config with this run's models."""
        return replace(self.codec, models=self.models)


def _device_problems(flag: str, device: str) -> list[str]:
    if _DEVICE.fullmatch(device):
        return []
    return [f"{flag} must be auto or a torch device such as cpu, cuda:0 (got {device!r})"]


def _pitch_problems(cfg: PitchConfig) -> list[str]:
    problems = within("--pitch-onset-threshold", cfg.onset_threshold, 0, 1)
    problems += within("--pitch-frame-threshold", cfg.frame_threshold, 0, 1)
    problems += at_least("--pitch-minimum-note-length-ms", cfg.minimum_note_length_ms, 0)
    low, high = cfg.minimum_frequency_hz, cfg.maximum_frequency_hz
    if low is not None:
        problems += above("--pitch-minimum-frequency-hz", low, 0)
    if high is not None:
        problems += above("--pitch-maximum-frequency-hz", high, 0)
    if low is not None and high is not None and not low < high:
        problems.append(f"--pitch-minimum-frequency-hz ({low:g}) must be below --pitch-maximum-frequency-hz ({high:g})")
    return problems + at_least("--pitch-windows-per-call", cfg.windows_per_call, 1)


def _separate_problems(cfg: SeparateConfig) -> list[str]:
    problems = names_in("--separate-silent-stems", cfg.silent_stems, STEMS)
    if cfg.segment_s is not None:
        problems += above("--separate-segment-s", cfg.segment_s, 0)
    if not 0 <= cfg.overlap < 1:  # Demucs steps (1 - overlap) segments at a time
        problems.append(f"--separate-overlap must be in [0, 1) (got {cfg.overlap!r})")
    problems += at_least("--separate-shifts", cfg.shifts, 0)
    problems += at_least("--separate-seed", cfg.seed, 0)
    problems += at_least("--separate-batch-size", cfg.batch_size, 1)
    if cfg.output_sample_rate is not None:
        problems += at_least("--separate-output-sample-rate", cfg.output_sample_rate, 1)
    return problems + _device_problems("--separate-device", cfg.device)


def _codec_problems(cfg: CodecConfig) -> list[str]:
    problems = [] if cfg.n_codebooks is None else at_least("--codec-n-codebooks", cfg.n_codebooks, 1)
    problems += above("--codec-chunk-s", cfg.chunk_s, 0)
    if cfg.context_frames is not None:
        problems += at_least("--codec-context-frames", cfg.context_frames, 0)
    problems += at_least("--codec-batch-size", cfg.batch_size, 0)
    problems += names_in("--codec-backend", (cfg.backend,), BACKENDS)
    if cfg.backend == "openvino" and cfg.device not in ("auto", "cpu"):
        problems.append(f"--codec-backend openvino runs on a CPU; it cannot run with --codec-device {cfg.device}")
    return problems + _device_problems("--codec-device", cfg.device)


def run_metadata(cfg: ExtractConfig, identities: list[dict[str, Any]]) -> dict[str, Any]:
    """What every output file records about the run: config, model identities and library versions."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for dist in ("hummingml", "ray", "torch", "descript-audio-codec", "demucs", "basic-pitch", "onnxruntime",
                 "openvino"):
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


def input_kind(cfg: ExtractConfig) -> str:
    """What ``--input`` names, as the listing will read it: a database query, a manifest, or files."""
    if cfg.input.startswith("sqlite://"):
        return "sqlite query"
    place = "object store" if "://" in cfg.input and not cfg.input.startswith("file://") else "local"
    if cfg.input.lower().endswith(MANIFEST_EXTENSIONS):
        return f"manifest ({place})"
    return f"files: directory, glob or file ({place})"


def dry_run_plan(cfg: ExtractConfig) -> dict[str, Any]:
    """What a run with ``cfg`` would do, from the config alone (``--dry-run``): nothing is read or loaded."""
    from schemas.features import SCHEMA_VERSION

    return {
        "job": "extract",
        "input": {"uri": cfg.input, "kind": input_kind(cfg), "uri_column": cfg.uri_column, "limit": cfg.limit or None},
        "output": {
            "root": cfg.output,
            "sets": ["audio-feature", "sine-audio-feature", "errors"],
            "schema_version": SCHEMA_VERSION,
            "segments_per_commit": cfg.commit_rows,
            "writers": cfg.writers or "one per 16 planned CPUs, at least 1",
            "config_change": "allowed" if cfg.allow_config_change else "refused if the output was made differently",
        },
        "steps": {
            "decode": f"resample to 22,050 Hz, mono reference = mean of the channels, {cfg.segment_s:g} s segments",
            "separate": f"Demucs into {', '.join(STEMS)} ({cfg.stem_channels} DAC streams per stem)",
            "pitch": f"Basic Pitch notes and a sine rendering of: mono, {', '.join(cfg.melodic_stems)}",
            "codec": f"DAC codes of every stream, {cfg.mono_variants} augmented mono variant(s)",
        }
        if cfg.stages == "models"
        else "null stages: stand-ins of the right shapes, no models (benchmarks and tests only)",
        "models": {"kind": cfg.models.kind, "dac_weights": cfg.models.dac_weights, "demucs": cfg.models.demucs_name},
        "placement": {
            "cpus": cfg.plan_cpus or "the cluster's CPUs at start",
            "torch_threads_per_actor": cfg.actor_threads,
            "actors": cfg.placement,
            "cpu_reservation": cfg.cpu_reservation,
            "devices": {"separate": cfg.separate.device, "codec": cfg.codec.device},
        },
        "retries": {"read": cfg.read_retries, "first_backoff_s": cfg.read_backoff_s, "errors_again": cfg.retry_errors},
        "exit_1_when_failed_fraction_above": cfg.max_failed_fraction,
    }
