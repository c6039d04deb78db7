"""The configs and flags of the evaluation job and of ``hummingml generate``.

Light on purpose (no torch, no Ray): the ``hummingml`` command builds its parsers from them.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from hummingml.config import above, add_flags, at_least, from_flags
from hummingml.weights.config import ModelsConfig

SPLITS = ("train", "unseen", "all")
LIST_FLAGS = ("compare", "split", "holdout_instruments")  # evaluation flags that take several values


@dataclass(frozen=True)
class EvalConfig:
    """``python -m ray_jobs.evaluate`` / ``hummingml evaluate``: which checkpoints, on which examples, where to."""

    checkpoint: str = ""  # checkpoint directory, or a run directory (its newest checkpoint)
    compare: tuple[str, ...] = ()  # more checkpoints (or run directories) evaluated the same way
    data_features: str = ""  # extraction output to take examples from; "" = each checkpoint's training features
    split: tuple[str, ...] = ("all",)  # train (instruments not held out) | unseen (held out) | all; one or more
    holdout_instruments: tuple[str, ...] = ()  # instruments of the unseen split; () = each checkpoint's own setting
    max_examples: int = 64  # examples per (checkpoint, split), from rows in (source_id, segment_index) order
    batch_size: int = 16  # examples per forward pass
    top_k: int = 1  # free-running level 0: 1 = greedy, else top-k sampling
    seed: int = 0  # sampling seed (top_k > 1)
    codec_ceiling: bool = True  # re-read and re-separate the examples' source segments to score the codec's ceiling
    out: str = "eval-results.json"  # the JSON: one row per (checkpoint, split)
    plot: str = ""  # a PNG bar plot of the main metrics; "" = none
    models: ModelsConfig = field(default_factory=ModelsConfig)  # the DAC for SI-SDR; unset flags follow the features

    def __post_init__(self) -> None:
        bad = [s for s in self.split if s not in SPLITS]
        if bad or not self.split:
            raise ValueError(f"split must be one or more of {SPLITS}, got {self.split}")

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """``checkpoint`` then ``compare``."""
        return tuple(c for c in (self.checkpoint, *self.compare) if c)

    def problems(self) -> list[str]:
        """Every value no evaluation can use, one line per problem naming its flag."""
        problems = [] if self.checkpoints else ["--checkpoint is required"]
        problems += at_least("--max-examples", self.max_examples, 1)
        problems += at_least("--batch-size", self.batch_size, 1)
        problems += at_least("--top-k", self.top_k, 1)
        problems += at_least("--seed", self.seed, 0)
        if not self.out:
            problems.append("--out must not be empty")
        return problems + self.models.problems("models-")


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`EvalConfig` field (``--models-*`` included); list flags take values space- or
    comma-separated (``--compare C2 C3``, ``--split train unseen``)."""
    add_flags(parser, EvalConfig)
    for action in parser._actions:
        if action.dest in LIST_FLAGS:
            action.nargs = "+"
            action.help = (action.help or "").replace("; comma-separated", "; space- or comma-separated")


def eval_config_from_args(args: argparse.Namespace) -> tuple[EvalConfig, set[str]]:
    """Flags -> ``(config, names of the ModelsConfig fields given as --models-* flags)``; see
    :func:`hummingml.eval.evaluate.run`.

    Raises:
        ConfigError: one line per invalid flag value (:meth:`EvalConfig.problems`).
    """
    for name in LIST_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, ",".join(value))
    cfg = from_flags(EvalConfig, args)
    given = {f.name for f in dataclasses.fields(ModelsConfig) if getattr(args, f"models_{f.name}", None) is not None}
    return cfg, given


@dataclass(frozen=True)
class GenerateConfig:
    """``hummingml generate``: inputs, checkpoint, output and sampling."""

    hum: str = ""  # audio file of the hum (any format hummingml.audio.decode reads)
    timbre: str = ""  # audio file of the instrument to imitate; its first --timbre-seconds are the prompt
    checkpoint: str = ""  # checkpoint directory, or a run directory (its newest checkpoint)
    output: str = "generated.wav"  # WAV written at the codec's rate (44.1 kHz), 16-bit, as long as the hum
    top_k: int = 1  # 1: greedy level 0; > 1: top-k sampling
    temperature: float = 1.0  # sampling temperature (top_k > 1 only)
    seed: int = 0  # sampling seed
    timbre_seconds: float = 5.0  # timbre prompt length; capped by data.timbre_max_frames and max_seq_len
    batch_size: int = 16  # generation windows per forward pass
    models: ModelsConfig = field(default_factory=ModelsConfig)  # the DAC; unset flags follow the extraction record

    def problems(self) -> list[str]:
        """Every value no generation can use, one line per problem naming its flag."""
        problems = [f"--{name} is required" for name in ("hum", "timbre", "checkpoint") if not getattr(self, name)]
        if not self.output:
            problems.append("--output must not be empty")
        problems += at_least("--top-k", self.top_k, 1)
        problems += above("--temperature", self.temperature, 0)
        problems += at_least("--seed", self.seed, 0)
        problems += above("--timbre-seconds", self.timbre_seconds, 0)
        problems += at_least("--batch-size", self.batch_size, 1)
        return problems + self.models.problems("models-")


def add_generate_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of :class:`GenerateConfig` (``--models-*`` included) plus ``-o`` for ``--output``."""
    add_flags(parser, GenerateConfig)
    parser.add_argument("-o", dest="output", default=None, help="same as --output")
