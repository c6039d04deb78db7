"""Configs of ``hummingml remix`` and ``hummingml serve`` (light on purpose: no torch, no Ray; the ``hummingml``
command builds its parsers from them). Flags are generated from the fields (``hummingml.config.add_flags``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hummingml.config import above, at_least, within
from hummingml.weights.config import ModelsConfig

DEFAULT_INSTRUMENT = "flute"  # preset played when none is chosen (hummingml.serve.presets)


@dataclass(frozen=True)
class RemixConfig:
    """How a song is remixed (``hummingml.serve.remix``): cleaning, loudness and generation."""

    target_lufs: float = -16.0  # integrated loudness of the finished mix, LUFS
    vocals_db: float = 0.0  # loudness of the cleaned vocals relative to target_lufs before summing, dB
    instrument_db: float = -2.0  # loudness of the generated instrument relative to target_lufs, dB
    backing_db: float = -4.0  # loudness of drums + bass + chordal + other relative to target_lufs, dB
    denoise: float = 0.8  # fraction of the estimated vocal noise removed (spectral gating); 0 = off
    gate_db: float = -30.0  # vocal 20 ms frames this far below the loudest frame are muted, dB; 0 = off
    peak: float = 0.98  # ceiling of the output's sample peak, full scale = 1
    timbre_seconds: float = 5.0  # instrument prompt length, 1-5 s (capped by the model)
    top_k: int = 1  # 1 = greedy level 0, else top-k sampling
    seed: int = 0  # sampling seed (top_k > 1)

    def problems(self, prefix: str = "") -> list[str]:
        """One line per invalid value, naming its flag ``--{prefix}{field}``."""
        flag = f"--{prefix}".replace("_", "-")
        out = within(f"{flag}target-lufs", self.target_lufs, -70.0, 0.0)
        out += within(f"{flag}denoise", self.denoise, 0.0, 1.0)
        out += within(f"{flag}gate-db", self.gate_db, -120.0, 0.0)
        out += within(f"{flag}peak", self.peak, 0.01, 1.0)
        out += within(f"{flag}timbre-seconds", self.timbre_seconds, 1.0, 5.0)
        out += at_least(f"{flag}top-k", self.top_k, 1) + at_least(f"{flag}seed", self.seed, 0)
        for name in ("vocals_db", "instrument_db", "backing_db"):
            out += within(f"{flag}{name.replace('_', '-')}", getattr(self, name), -40.0, 20.0)
        return out


@dataclass(frozen=True)
class RemixCommandConfig:
    """``hummingml remix SONG -o OUT``: one song, on this machine."""

    song: str = ""  # the song to remix (WAV, FLAC, OGG or MP3)
    output: str = "remix.wav"  # the remix, 44.1 kHz stereo 16-bit WAV; a JSON sidecar goes beside it (.json)
    instrument: str = DEFAULT_INSTRUMENT  # a preset name (hummingml serve's /v1/presets) or an audio clip's path
    checkpoint: str = ""  # HummingLM checkpoint or run directory; "" = untrained debug model (labelled)
    stems: str = ""  # a directory with the song's six stems as <stem>.wav (skips separation); "" = Demucs
    parts: str = ""  # a directory to write each part as mixed (vocals.wav, instrument.wav, backing.wav); "" = none
    mix: RemixConfig = field(default_factory=RemixConfig)  # flags --mix-*
    models: ModelsConfig = field(default_factory=ModelsConfig)  # Demucs and DAC; flags --models-*

    def problems(self) -> list[str]:
        """Every value no remix can use, one line per problem."""
        out = [] if self.song else ["SONG (or --song) is required"]
        if not self.output:
            out.append("--output must not be empty")
        if not self.instrument:
            out.append("--instrument must not be empty")
        return out + self.mix.problems("mix-") + self.models.problems("models-")


@dataclass(frozen=True)
class ServeConfig:
    """``hummingml serve``: the Ray Serve application, its HTTP limits and its models."""

    host: str = "127.0.0.1"  # address the HTTP proxy binds; anything but loopback requires --token-file
    port: int = 8000  # HTTP port
    checkpoint: str = ""  # HummingLM checkpoint or run directory; "" = untrained debug model (labelled)
    token_file: str = ""  # file holding the bearer token every /v1 request must send; "" = no auth (loopback only)
    max_upload_mb: float = 20.0  # larger uploads get 413 before they are read whole
    max_hum_s: float = 30.0  # longest hum /v1/hum accepts, seconds (413 beyond)
    max_song_s: float = 300.0  # longest song /v1/remix accepts, seconds (413 beyond)
    max_inflight: int = 16  # /v1/hum requests in progress per API replica; more get 429 with Retry-After
    max_jobs: int = 4  # remix jobs queued or running; more get 429
    request_timeout_s: float = 120.0  # a /v1/hum request that takes longer gets 504
    jobs_dir: str = "serve-jobs"  # where finished remixes (WAV + JSON) are kept
    max_batch: int = 8  # most requests one model call batches (@serve.batch)
    batch_wait_s: float = 0.02  # how long a model call waits to fill a batch, seconds
    max_replicas: int = 2  # autoscaling ceiling of each model deployment (the minimum is 1)
    num_cpus: float = 0.25  # CPUs each deployment replica reserves (fractional: a 2-CPU machine holds them all)
    num_gpus: float = 0.0  # GPUs each Codec, HumLM and Separation replica reserves (fractional shares one); 0 = CPU
    models: ModelsConfig = field(default_factory=ModelsConfig)  # Demucs and DAC; flags --models-*

    def problems(self) -> list[str]:
        """Every value no service can use, one line per problem."""
        out = within("--port", self.port, 1, 65535)
        out += above("--max-upload-mb", self.max_upload_mb, 0) + above("--max-hum-s", self.max_hum_s, 0)
        out += above("--max-song-s", self.max_song_s, 0) + at_least("--max-inflight", self.max_inflight, 1)
        out += at_least("--max-jobs", self.max_jobs, 1) + above("--request-timeout-s", self.request_timeout_s, 0)
        out += at_least("--max-batch", self.max_batch, 1) + at_least("--batch-wait-s", self.batch_wait_s, 0)
        out += at_least("--max-replicas", self.max_replicas, 1) + above("--num-cpus", self.num_cpus, 0)
        out += at_least("--num-gpus", self.num_gpus, 0)
        if not self.jobs_dir:
            out.append("--jobs-dir must not be empty")
        if not self.token_file and not is_loopback(self.host):
            out.append(f"--host {self.host} is reachable from other machines: give --token-file (see docs/serving.md)")
        return out + self.models.problems("models-")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RemixBatchConfig:
    """``python -m ray_jobs.remix``: every upload under a prefix remixed once into an exactly-once output."""

    input: str = ""  # uploads: a local folder or glob, s3://bucket/prefix/, or a manifest (.jsonl, .csv, .parquet)
    output: str = ""  # output root (local path or pyarrow URI): remix/ and errors/ Parquet sets and the commit log
    instrument: str = DEFAULT_INSTRUMENT  # a preset name, or the path of a clip readable on every node
    checkpoint: str = ""  # HummingLM checkpoint or run directory; "" = untrained debug model (labelled)
    max_song_s: float = 600.0  # a longer upload gets an error row (too_long)
    max_upload_mb: float = 500.0  # a larger upload gets an error row (too_big)
    commit_rows: int = 4  # remixes per commit (each holds its FLAC: a 3-minute song is about 20 MB)
    actors: int = 0  # remix actors; 0 = one per cpus_per_actor of the cluster's CPUs, at least one
    cpus_per_actor: float = 1.0  # CPUs each remix actor reserves
    limit: int = 0  # remix at most this many pending uploads in this run; 0 = all
    lease_timeout_s: float = 120.0  # a driver silent this long is taken over by the next one
    allow_config_change: bool = False  # add to an output made with another instrument, checkpoint, mix or models
    mix: RemixConfig = field(default_factory=RemixConfig)  # flags --mix-*
    models: ModelsConfig = field(default_factory=ModelsConfig)  # Demucs and DAC; flags --models-*

    def problems(self) -> list[str]:
        """Every value no batch remix can use, one line per problem."""
        out = [f"--{name} is required" for name in ("input", "output") if not getattr(self, name)]
        if not self.instrument:
            out.append("--instrument must not be empty")
        out += above("--max-song-s", self.max_song_s, 0) + above("--max-upload-mb", self.max_upload_mb, 0)
        out += at_least("--commit-rows", self.commit_rows, 1) + at_least("--actors", self.actors, 0)
        out += above("--cpus-per-actor", self.cpus_per_actor, 0) + at_least("--limit", self.limit, 0)
        out += above("--lease-timeout-s", self.lease_timeout_s, 0)
        return out + self.mix.problems("mix-") + self.models.problems("models-")
