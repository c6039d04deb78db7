"""The ``hummingml`` command: ``hummingml <subcommand> --help`` lists each subcommand's flags."""

from __future__ import annotations

import argparse
import sys


def _synth_corpus(args: argparse.Namespace) -> int:
    from hummingml.corpus import write_corpus

    infos = write_corpus(args.out, n_songs=args.songs, seed=args.seed, seconds=args.seconds)
    print(f"wrote {len(infos)} songs ({args.seconds:g} s each) to {args.out}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from hummingml.doctor import main as doctor_main

    return doctor_main()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hummingml`` command."""
    parser = argparse.ArgumentParser(prog="hummingml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth-corpus", help="write a small deterministic synthesized corpus (mix, six stems, notes)")
    p.add_argument("out", help="output directory (created if missing)")
    p.add_argument("--songs", type=int, default=4, help="number of songs (default 4)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed; the same seed gives byte-identical files")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each song in seconds (default 10)")
    p.set_defaults(func=_synth_corpus)

    p = sub.add_parser("doctor", help="check that every dependency imports and print versions")
    p.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hummingml`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
