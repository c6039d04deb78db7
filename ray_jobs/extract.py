"""Extraction job: audio in, the audio-feature and sine-audio-feature Parquet sets out.

Locally (starts a Ray instance in this process)::

    python -m ray_jobs.extract --input demo-corpus/mix --output demo-out

On a cluster (from the repository root; the cluster's workers need the project installed, see README)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.extract --input s3://bucket/audio/ --output s3://bucket/features/ --models-kind pretrained

Every flag is generated from ``hummingml.extract.config.ExtractConfig``; ``--help`` lists them. Invalid values are
reported one line each on stderr, with exit code 2, before anything is created or started; ``--dry-run`` checks the
flags and prints the run's plan without reading or writing anything. A run that leaves an
input unaccounted for, or in which more than ``--max-failed-fraction`` (default 0.5) of the inputs failed, exits 1
after writing every row.
"""

from __future__ import annotations

import sys

from hummingml.config import exit_on_config_error, one_line_errors, parse_job_flags, print_plan, verbose_requested
from hummingml.extract.config import ExtractConfig, dry_run_plan

PROG = "ray_jobs.extract"


def parse(argv: list[str] | None = None) -> tuple[ExtractConfig, bool]:
    """Flags -> (config, whether ``--dry-run`` was given).

    Raises:
        ConfigError: one line per invalid flag value (:meth:`ExtractConfig.problems`).
    """
    return parse_job_flags(ExtractConfig, PROG, __doc__, argv)


def main(argv: list[str] | None = None) -> int:
    """Run the job; exit 0 when every input is accounted for and no more than ``--max-failed-fraction`` of them
    failed, 1 otherwise (after writing every row), 2 on a ``ConfigError``. ``--dry-run``: print the plan, exit 0."""
    with exit_on_config_error(PROG):
        cfg, dry_run = parse(argv)
        if dry_run:
            print_plan(PROG, dry_run_plan(cfg))
            return 0
        from hummingml.extract.job import exit_code, run

        return one_line_errors(PROG, lambda: exit_code(run(cfg), cfg, PROG), verbose_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
