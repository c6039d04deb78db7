"""Extraction job: audio in, the audio-feature and sine-audio-feature Parquet sets out.

Locally (starts a Ray instance in this process)::

    python -m ray_jobs.extract --input demo-corpus/mix --output demo-out

On a cluster (from the repository root; the cluster's workers need the project installed, see README)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.extract --input s3://bucket/audio/ --output s3://bucket/features/ --models-kind pretrained

Every flag is generated from ``hummingml.extract.config.ExtractConfig``; ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import sys

from hummingml.config import add_flags, from_flags
from hummingml.extract.config import ExtractConfig


def parse(argv: list[str] | None = None) -> ExtractConfig:
    """Flags -> config."""
    parser = argparse.ArgumentParser(
        prog="ray_jobs.extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_flags(parser, ExtractConfig)
    cfg = from_flags(ExtractConfig, parser.parse_args(argv))
    if not cfg.input:
        parser.error("--input is required")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Run the job; exit 0 when every input is accounted for, 1 otherwise."""
    from hummingml.extract.job import run

    summary = run(parse(argv))
    return 0 if summary["accounted"] else 1


if __name__ == "__main__":
    sys.exit(main())
