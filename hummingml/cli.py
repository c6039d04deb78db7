"""The ``hummingml`` command: ``hummingml <subcommand> --help`` lists each subcommand's flags.

Invalid flag values are reported one line each on stderr (``hummingml extract: error: --limit must be >= 0``), with
exit code 2, before anything is created or started. ``extract``, ``evaluate``, ``study``, ``generate``, ``decode``
and ``remix`` also report a failure to load a model, read a file or decode audio as one line, with exit code 1;
``hummingml --verbose ...`` shows its traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from hummingml import __version__
from hummingml.config import (
    DRY_RUN_HELP,
    VERBOSE_HELP,
    ConfigError,
    above,
    add_flags,
    at_least,
    exit_on_config_error,
    from_flags,
    one_line_errors,
    print_plan,
)
from hummingml.eval.config import (
    DecodeConfig,
    GenerateConfig,
    StudyConfig,
    add_decode_flags,
    add_eval_flags,
    add_generate_flags,
    eval_config_from_args,
)
from hummingml.extract.config import ExtractConfig
from hummingml.serve.config import RemixCommandConfig, ServeConfig
from hummingml.stems.config import RenderConfig
from hummingml.weights.cli import add_models_parser
from hummingml.weights.config import ModelsConfig


def _check_corpus_flags(args: argparse.Namespace) -> None:
    """Raise :class:`ConfigError` on ``--songs``, ``--seconds`` or ``--seed`` values no corpus can have."""
    problems = at_least("--songs", args.songs, 1) + above("--seconds", args.seconds, 0)
    problems += at_least("--seed", args.seed, 0)
    if problems:
        raise ConfigError("\n".join(problems))


def _synth_corpus(args: argparse.Namespace) -> int:
    _check_corpus_flags(args)
    from hummingml.testing.corpus import write_corpus

    infos = write_corpus(args.out, n_songs=args.songs, seed=args.seed, seconds=args.seconds)
    print(f"wrote {len(infos)} songs ({args.seconds:g} s each) to {args.out}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from hummingml.doctor import main as doctor_main

    return doctor_main()


def _extract(args: argparse.Namespace) -> int:
    cfg = from_flags(ExtractConfig, args)
    if args.dry_run:
        from hummingml.extract.config import dry_run_plan

        print_plan("hummingml extract", dry_run_plan(cfg))
        return 0
    from hummingml.extract.job import exit_code, run  # imports Ray

    return one_line_errors("hummingml extract", lambda: exit_code(run(cfg), cfg, "hummingml extract"), args.verbose)


def _demo(args: argparse.Namespace) -> int:
    _check_corpus_flags(args)
    from hummingml.extract.demo import run_demo

    summary = run_demo(args.out, songs=args.songs, seconds=args.seconds, seed=args.seed)
    return 0 if summary["accounted"] else 1


def _inspect(args: argparse.Namespace) -> int:
    from hummingml.extract.inspect import main as inspect_main

    return inspect_main(args.out, args.png)


def _generate(args: argparse.Namespace) -> int:
    from_flags(GenerateConfig, args)  # the flags alone, before the checkpoint's recorded models are read
    from hummingml.eval.generate import config_from_args, run

    return one_line_errors("hummingml generate", lambda: run(config_from_args(args)), args.verbose)


def _decode(args: argparse.Namespace) -> int:
    cfg = from_flags(DecodeConfig, args)  # the flags alone, before the output is opened
    from hummingml.eval.decode import run

    return one_line_errors("hummingml decode", lambda: run(cfg), verbose=args.verbose)


def _evaluate(args: argparse.Namespace) -> int:
    from hummingml.eval.evaluate import run

    cfg, models_given = eval_config_from_args(args)
    return one_line_errors("hummingml evaluate", lambda: run(cfg, models_given), args.verbose)


def _study(args: argparse.Namespace) -> int:
    cfg = from_flags(StudyConfig, args)
    from hummingml.eval.study import dry_run_plan, run

    if args.dry_run:
        print_plan("hummingml study", dry_run_plan(cfg))
        return 0
    return one_line_errors("hummingml study", lambda: run(cfg), args.verbose)


def _remix(args: argparse.Namespace) -> int:
    args.song = args.song_arg or args.song
    cfg = from_flags(RemixCommandConfig, args)
    from hummingml.serve.remix import run_command

    return one_line_errors("hummingml remix", lambda: run_command(cfg), verbose=args.verbose)


def _stems_render(args: argparse.Namespace) -> int:
    args.midi_dir = args.midi_dir_arg or args.midi_dir
    cfg = from_flags(RenderConfig, args)
    from hummingml.stems.manifest import render_directory

    summary = render_directory(cfg)
    print(
        f"rendered {len(summary.rendered)} MIDI files ({cfg.renderer}) to {cfg.out}, manifest {cfg.out}/manifest.jsonl"
        + (f"; {len(summary.failed)} skipped (not MIDI)" if summary.failed else "")
    )
    return 1 if summary.failed else 0


def _serve(args: argparse.Namespace) -> int:
    cfg = from_flags(ServeConfig, args)
    from hummingml.serve.app import main as serve_main  # imports Ray

    return serve_main(cfg)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hummingml`` command."""
    parser = argparse.ArgumentParser(prog="hummingml", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hummingml {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth-corpus", help="write a small deterministic synthesized corpus (mix, six stems, notes)")
    p.add_argument("out", help="output directory (created if missing)")
    p.add_argument("--songs", type=int, default=4, help="number of songs (default 4)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed; the same seed gives byte-identical files")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each song in seconds (default 10)")
    p.set_defaults(func=_synth_corpus)

    p = sub.add_parser("demo", help="synth corpus + one broken file -> extraction on a local Ray, then the summary")
    p.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    p.add_argument("--songs", type=int, default=3, help="songs in the corpus (default 3)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each song in seconds (default 8)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("extract", help="run the extraction job (same flags as python -m ray_jobs.extract)")
    p.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    add_flags(p, ExtractConfig)
    p.set_defaults(func=_extract)

    p = sub.add_parser("inspect", help="counts, durations and error reasons of an extraction output; optional PNG")
    p.add_argument("out", help="the extraction's output root")
    p.add_argument("--png", default=None, help="also write a plot report (notes, sine, code maps) to this PNG")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("decode", help="the DAC codes of one stored stream of one segment -> a WAV to listen to")
    add_decode_flags(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("generate", help="hum + timbre clip + checkpoint -> instrument audio (WAV, 44.1 kHz)")
    add_generate_flags(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("evaluate", help="token accuracies and SI-SDR of checkpoints (same flags as ray_jobs.evaluate)")
    add_eval_flags(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("study", help="train HummingLM, VALL-E and HummingLM without augmentation; compare (a Ray job)")
    p.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    add_flags(p, StudyConfig)
    p.set_defaults(func=_study)

    p = sub.add_parser("remix", help="song -> separated, cleaned vocals + an instrument playing their melody + backing")
    p.add_argument("song_arg", nargs="?", default=None, metavar="SONG", help="same as --song")
    add_flags(p, RemixCommandConfig)
    p.add_argument("-o", dest="output", default=None, help="same as --output")
    p.set_defaults(func=_remix)

    p = sub.add_parser("serve", help="the Ray Serve app: /v1/hum, /v1/remix, /v1/jobs/{id} and the web page")
    add_flags(p, ServeConfig)
    p.set_defaults(func=_serve)

    p = sub.add_parser("stems", help="prepare stems: render MIDI files to six stems, their mix and a manifest")
    stems_sub = p.add_subparsers(dest="stems_command", required=True)
    p = stems_sub.add_parser("render", help="MIDI files -> six stem WAVs, a mix and manifest.jsonl (docs/stems.md)")
    p.add_argument("midi_dir_arg", nargs="?", default=None, metavar="MIDI_DIR", help="same as --midi-dir")
    add_flags(p, RenderConfig)
    p.set_defaults(func=_stems_render)

    p = sub.add_parser("doctor", help="check that every dependency imports and print versions")
    p.set_defaults(func=_doctor)
    add_models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hummingml`` console script; exit 2 on a ``ConfigError``, one line per problem."""
    args = build_parser().parse_args(argv)
    sub = {"models": "models_command", "stems": "stems_command"}.get(args.command)
    prog = " ".join(["hummingml", args.command] + ([getattr(args, sub)] if sub else []))
    with exit_on_config_error(prog):
        if args.command == "models" and args.models_command == "prepare":
            from_flags(ModelsConfig, args)
        return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
