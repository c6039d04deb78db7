"""The extraction job's config and the metadata every output file records about the run."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from hummingml.audio import MELODIC_STEMS
from hummingml.extract.sources import AUDIO_EXTENSIONS
from hummingml.stages.codec import CodecConfig
from hummingml.stages.pitch import PitchConfig
from hummingml.stages.separate import SeparateConfig
from hummingml.weights.config import ModelsConfig


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
    wait_for_cpus_s: float = 600.0  # wait this long for extract.ray.MIN_CPUS while a cluster scales up
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
