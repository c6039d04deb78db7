"""Study job: the research protocol in one command (``hummingml.eval.study``).

HummingLM, the VALL-E baseline and HummingLM without augmentation are trained on the same features with the same
budget, some instruments held out, then evaluated on seen and unseen instruments and per mode. Locally (starts a Ray
instance in this process), on features extracted from a synthesized corpus's manifest::

    python -m ray_jobs.study --features study-features --out study-out --steps 300

On a cluster, from the repository root::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.study --features /shared/features --out /shared/study --preset debug

Every flag is generated from ``hummingml.eval.config.StudyConfig``; ``--help`` lists them. Invalid values are
reported one line each on stderr with exit code 2 before anything starts; ``--dry-run`` prints the three training
configs and the evaluation plan without reading the features.
"""

from __future__ import annotations

import sys

from hummingml.config import exit_on_config_error, one_line_errors, parse_job_flags, print_plan, verbose_requested
from hummingml.eval.config import StudyConfig

PROG = "ray_jobs.study"


def parse(argv: list[str] | None = None) -> tuple[StudyConfig, bool]:
    """Flags -> (config, whether ``--dry-run`` was given).

    Raises:
        ConfigError: one line per invalid flag value (:meth:`StudyConfig.problems`).
    """
    return parse_job_flags(StudyConfig, PROG, __doc__, argv)


def main(argv: list[str] | None = None) -> int:
    """Run the study; exit 0 when all three models trained and were evaluated, 2 on a ``ConfigError``."""
    with exit_on_config_error(PROG):
        cfg, dry_run = parse(argv)
        from hummingml.eval.study import dry_run_plan, run

        if dry_run:
            print_plan(PROG, dry_run_plan(cfg))
            return 0
        return one_line_errors(PROG, lambda: run(cfg), verbose_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
