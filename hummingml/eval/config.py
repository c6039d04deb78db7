"""The configs and flags of the evaluation job, of the study, of ``hummingml generate`` and of ``hummingml decode``.

Light on purpose (no torch, no Ray): the ``hummingml`` command builds its parsers from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from hummingml.audio import STEMS
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
class StudyConfig:
    """``hummingml study`` / ``python -m ray_jobs.study``: the research protocol on one feature set."""

    features: str = ""  # extraction output made from a manifest that names each song's instruments and mode
    out: str = "study-out"  # results.json, results.md, the PNG plots, the evaluation JSON and runs/ (the checkpoints)
    preset: str = "debug"  # model sizes of all three models; the VALL-E baseline takes them with its own layout
    steps: int = 300  # optimizer steps of each model: the same budget for all three
    batch_size: int = 8  # examples per step
    checkpoint_every: int = 25  # steps between metric reports: the points of the loss curves
    parts: tuple[str, ...] = ("vocals", "lead")  # melodic stems used as target parts
    frames: int = 64  # target window in DAC frames (86.13 frames/s)
    timbre_min_frames: int = 86  # shortest timbre prompt (1 s)
    timbre_max_frames: int = 431  # longest timbre prompt (5 s)
    holdout_instruments: tuple[str, ...] = ()  # kept out of training (the unseen split); () = one per part, chosen
    # from the features: the part's last instrument by name, where the part has more than one
    max_examples: int = 64  # evaluation examples per (model, split)
    codec_ceiling: bool = False  # also score against the parts' re-separated source audio (slower: runs Demucs)
    cpus_per_worker: float = 1.0  # CPUs reserved by each training run's worker
    seed: int = 0  # model initialisation, example cutting and sampling: the same for all three

    def problems(self) -> list[str]:
        """Every value no study can use, one line per problem naming its flag."""
        from hummingml.train.config import PRESETS

        problems = [] if self.features else ["--features is required"]
        if not self.out:
            problems.append("--out must not be empty")
        if self.preset not in PRESETS or self.preset.startswith("valle"):
            problems.append(f"--preset must be a HummingLM preset: {', '.join(p for p in PRESETS if 'valle' not in p)}")
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size),
                            ("--checkpoint-every", self.checkpoint_every), ("--frames", self.frames),
                            ("--timbre-min-frames", self.timbre_min_frames), ("--max-examples", self.max_examples)):
            problems += at_least(flag, value, 1)
        if self.timbre_max_frames < self.timbre_min_frames:
            problems.append("--timbre-max-frames must be >= --timbre-min-frames")
        if not self.parts or any(p not in STEMS for p in self.parts):
            problems.append(f"--parts must name one or more of {', '.join(STEMS)}")
        return problems + above("--cpus-per-worker", self.cpus_per_worker, 0) + at_least("--seed", self.seed, 0)


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


# --- hummingml decode ------------------------------------------------------------------------------------------------

STREAM_FORMS = ("mono", "mix", "left", "right", *STEMS, "sine:<melody stream>", "variant:<k>")  # for help and errors
SINE_STREAMS = ("mono", *STEMS)  # melody streams: the mono reference or a stem (ExtractConfig.melodic_stems)
_DEVICE = re.compile(r"auto|[a-z]+(:\d+)?")  # "auto" or a torch device: cpu, cuda, cuda:1


@dataclass(frozen=True)
class Stream:
    """One decodable stream of a stored segment, named as ``hummingml decode --stream`` takes it.

    ``kind`` says where its codes are: ``mono`` (sine-audio-feature ``mono_codes``), ``mix`` (audio-feature
    ``channel_codes``, every channel), ``channel`` (one of them, ``index`` 0 = left, 1 = right), ``stem``
    (``stem_codes`` of the stem ``name``), ``sine`` (``melody[].sine_codes`` of the melody stream ``name``),
    ``variant`` (``mono_variants[index].codes``).
    """

    text: str  # as given: "vocals", "sine:mono", "variant:0"
    kind: Literal["mono", "mix", "channel", "stem", "sine", "variant"]
    name: str = ""  # stem or melody stream name (kinds stem and sine)
    index: int = 0  # channel (kind channel) or variant (kind variant), 0-based

    @property
    def set_name(self) -> str:
        """The output set that holds the stream's codes."""
        return "audio-feature" if self.kind in ("mix", "channel", "stem") else "sine-audio-feature"

    @property
    def columns(self) -> tuple[str, ...]:
        """The set's columns the codes are read from."""
        return {
            "mono": ("mono_codes",),
            "mix": ("channel_codes",),
            "channel": ("channel_codes",),
            "stem": ("stem_names", "stem_codes"),
            "sine": ("melody",),
            "variant": ("mono_variants",),
        }[self.kind]


def parse_stream(text: str) -> Stream:
    """The :class:`Stream` that ``text`` names (one of :data:`STREAM_FORMS`).

    Raises:
        ValueError: ``text`` names no stream; the message lists the forms.
    """
    if text in ("mono", "mix"):
        return Stream(text, text)  # type: ignore[arg-type]
    if text in ("left", "right"):
        return Stream(text, "channel", index=0 if text == "left" else 1)
    if text in STEMS:
        return Stream(text, "stem", name=text)
    kind, _, arg = text.partition(":")
    if kind == "sine" and arg in SINE_STREAMS:
        return Stream(text, "sine", name=arg)
    if kind == "variant" and arg.isdigit():
        return Stream(text, "variant", index=int(arg))
    hint = {"sine": f"; melody streams: {', '.join(SINE_STREAMS)}", "variant": "; k is 0, 1, ..."}.get(kind, "")
    raise ValueError(f"unknown stream {text!r}; streams: {', '.join(STREAM_FORMS)}{hint}")


@dataclass(frozen=True)
class DecodeConfig:
    """``hummingml decode``: which stored stream of which segment, and the WAV to write."""

    root: str = ""  # extraction output root (local path or pyarrow URI)
    source_id: str = ""  # the segment's source (the source_id column, 32 hex digits)
    segment: int = 0  # the segment_index, 0-based
    stream: str = "mono"  # one of STREAM_FORMS
    output: str = ""  # the WAV to write (16-bit, at the codec's rate)
    device: str = "auto"  # where DAC decodes: "auto" = cuda when available, else cpu; or a torch device
    models_cache_dir: str | None = None  # the model cache, when not the one the output's metadata records
    models_dac_weights: str | None = None  # pretrained outputs: a local DAC 44 kHz weights file

    def problems(self) -> list[str]:
        """Every value no decode can use, one line per problem naming its flag."""
        problems = [] if self.root else ["OUT (the extraction output) is required"]
        if not self.source_id:
            problems.append("--source-id is required")
        problems += at_least("--segment", self.segment, 0)
        try:
            parse_stream(self.stream)
        except ValueError as exc:
            problems.append(f"--stream: {exc}")
        if not self.output:
            problems.append("-o/--output is required")
        elif not self.output.lower().endswith(".wav"):
            problems.append(f"-o/--output must name a .wav file (got {self.output!r})")
        elif not os.path.isdir(os.path.dirname(os.path.abspath(self.output))):
            problems.append(f"-o/--output: the folder {os.path.dirname(os.path.abspath(self.output))} does not exist")
        if not _DEVICE.fullmatch(self.device):
            problems.append(f"--device must be auto or a torch device such as cpu, cuda:0 (got {self.device!r})")
        return problems


def add_decode_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``hummingml decode`` (:class:`DecodeConfig`), checked by :meth:`DecodeConfig.problems`."""
    flag = parser.add_argument
    flag("root", metavar="OUT", help="the extraction's output root (local path or pyarrow URI)")
    flag("--source-id", metavar="ID", default=None, help="the source: its source_id (32 hex digits); required")
    flag("--segment", metavar="N", type=int, default=None, help="the segment_index, 0-based (default 0)")
    flag("--stream", metavar="NAME", default=None, help=f"which codes (default mono): {' | '.join(STREAM_FORMS)}")
    flag("-o", "--output", metavar="FILE", default=None, help="the WAV to write (16-bit, 44.1 kHz); required")
    flag("--device", default=None, help="where DAC decodes: auto (cuda when available; the default) or a torch device")
    flag(
        "--models-cache-dir", metavar="DIR", default=None,
        help="model cache to load the DAC from (default: the one the output records, if it exists here, else the "
        "usual cache)",
    )  # fmt: skip
    flag(
        "--models-dac-weights", metavar="FILE", default=None,
        help="outputs made with --models-kind pretrained: a local DAC 44 kHz weights file (no download)",
    )  # fmt: skip
