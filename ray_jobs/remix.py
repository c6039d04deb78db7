"""Batch remix: every upload under a prefix -> a remix (FLAC in Parquet, with its JSON report) or an error row.

Locally (starts a Ray instance in this process)::

    python -m ray_jobs.remix --input uploads/ --output remixes/

On a cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.remix --input s3://bucket/uploads/ --output s3://bucket/remixes/ --models-kind pretrained

Rerunnable: uploads already remixed (same size and modification time) are skipped, a changed one is remixed again,
and a second driver on the same output is refused. Every flag is generated from
``hummingml.serve.config.RemixBatchConfig``; ``--help`` lists them. Invalid values are reported one line each on
stderr with exit code 2 before anything is created; ``--dry-run`` checks the flags and prints the plan. A run that
leaves an upload unaccounted for exits 1.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from hummingml.config import exit_on_config_error, one_line_errors, parse_job_flags, print_plan, verbose_requested
from hummingml.serve.config import RemixBatchConfig

PROG = "ray_jobs.remix"


def parse(argv: list[str] | None = None) -> tuple[RemixBatchConfig, bool]:
    """Flags -> (config, whether ``--dry-run`` was given).

    Raises:
        ConfigError: one line per invalid flag value (:meth:`RemixBatchConfig.problems`).
    """
    return parse_job_flags(RemixBatchConfig, PROG, __doc__, argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and exit 0 only when every upload is accounted for. ``--dry-run``: print the plan, exit 0."""
    with exit_on_config_error(PROG):
        cfg, dry_run = parse(argv)
        if dry_run:
            print_plan(PROG, {"job": "remix", "input": cfg.input, "output": cfg.output, "config": asdict(cfg)})
            return 0
        from hummingml.serve.ray import run_batch  # imports Ray

        return one_line_errors(PROG, lambda: 0 if run_batch(cfg)["accounted"] else 1, verbose_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
