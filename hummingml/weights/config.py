"""Which weights to use (ModelsConfig), what was loaded (ModelIdentity), the errors, the cache root."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hummingml.config import OperatorError, above, at_least

KINDS: tuple[str, ...] = ("tiny", "random-full", "pretrained")
CACHE_ENV = "HUMMINGML_CACHE"  # environment variable that overrides the default cache directory
DEFAULT_CACHE_DIR = "~/.cache/hummingml/models"
# The official DAC 44 kHz model: 9 codebooks x 1024, hop 512 (dac.utils.__MODEL_LATEST_TAGS__[("44khz", "8kbps")]).
DAC_MODEL_TYPE, DAC_BITRATE, DAC_TAG = "44khz", "8kbps", "0.0.1"
DAC_PRETRAINED_FILE = f"weights_{DAC_MODEL_TYPE}_{DAC_BITRATE}_{DAC_TAG}.pth"  # dac.utils.download's file name


class ModelError(RuntimeError, OperatorError):
    """Base class of the errors raised while locating or loading model weights."""


class ModelUnavailableError(ModelError):
    """The weights are not on this machine and cannot be downloaded (offline, or a given path does not exist)."""


class ModelLoadError(ModelError):
    """A weights file exists but cannot be loaded (corrupt, truncated, or not a model of the expected library)."""


class ChecksumMismatchError(ModelLoadError):
    """A weights file's sha256 differs from the pinned one; the file is refused before it is unpickled."""


@dataclass(frozen=True)
class ModelsConfig:
    """Which weights the neural stages load, and from where. ``hummingml models prepare --help`` lists the flags."""

    kind: str = field(default="tiny", metadata={"help": "tiny | random-full | pretrained (see docs/models.md)"})
    cache_dir: str | None = field(
        default=None, metadata={"help": f"cache directory; unset: ${CACHE_ENV}, else {DEFAULT_CACHE_DIR}"}
    )
    dac_weights: str | None = field(
        default=None,
        metadata={"help": f"pretrained only: a local DAC 44 kHz weights file ({DAC_PRETRAINED_FILE}); no download"},
    )
    demucs_repo: str | None = field(
        default=None,
        metadata={"help": "pretrained only: a local Demucs model repo dir (<name>.yaml and its <sig>.th); no download"},
    )
    demucs_name: str = field(
        default="htdemucs_6s", metadata={"help": "pretrained only: Demucs model name"}
    )
    dac_sha256: str | None = field(
        default=None, metadata={"help": "refuse a DAC weights file whose sha256 differs (64 hex digits)"}
    )
    demucs_sha256: str | None = field(
        default=None,
        metadata={"help": "refuse Demucs weights whose sha256 differs (of the .th file; several: see docs/models.md)"},
    )
    seed: int = field(default=0, metadata={"help": "tiny / random-full: seed of the random initialisation"})
    connect_timeout_s: float = field(
        default=3.0, metadata={"help": "pretrained: seconds to wait for a download host before failing"}
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind != "pretrained" and (self.dac_weights or self.demucs_repo):
            raise ValueError("--dac-weights and --demucs-repo apply to --kind pretrained only")
        for name in ("dac_sha256", "demucs_sha256"):
            value = getattr(self, name)
            if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
                raise ValueError(f"{name} must be 64 hex digits, got {value!r}")

    def problems(self, prefix: str = "") -> list[str]:
        """What ``__post_init__`` lets through but no run can use, one line per problem; flags named
        ``--{prefix}{field}`` (``prefix="models-"`` inside a job config)."""
        problems = at_least(f"--{prefix}seed", self.seed, 0)
        problems += above(f"--{prefix}connect-timeout-s", self.connect_timeout_s, 0)
        if not self.demucs_name:
            problems.append(f"--{prefix}demucs-name must not be empty")
        return problems


@dataclass(frozen=True)
class ModelIdentity:
    """What was loaded: enough to reproduce a run and to tell random weights from trained ones."""

    kind: str  # tiny | random-full | pretrained
    name: str  # file stem (DAC) or Demucs model name / signature
    sha256: str  # of the weights file; for a Demucs bag of several files, see combined_sha256
    library: str  # distribution name: descript-audio-codec | demucs
    library_version: str
    path: str  # the weights file (DAC) or the .th file / repo directory (Demucs)
    random_weights: bool  # True for tiny and random-full: outputs carry no musical meaning
    seed: int | None = None  # the initialisation seed of random weights
    n_params: int | None = None  # None when listed from disk without loading

    def to_dict(self) -> dict[str, Any]:
        """The identity as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def cache_dir(cfg: ModelsConfig) -> Path:
    """The cache directory: ``cfg.cache_dir``, else ``$HUMMINGML_CACHE``, else ``~/.cache/hummingml/models``."""
    raw = cfg.cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(raw).expanduser()


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; any other value is returned as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
