"""Evaluation job: token accuracies and SI-SDR of one or more checkpoints on the extraction's feature sets.

Locally (starts a Ray instance in this process unless one is running), two checkpoints on the demo's features::

    python -m ray_jobs.evaluate --checkpoint train-runs/hummingml-debug --compare train-runs/valle-debug \
        --data-features demo-out/features --split all --out results.json --plot results.png

On a cluster, from the repository root::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.evaluate --checkpoint /shared/runs/m385 --split train unseen --out /shared/eval.json

Rows are read with Ray Data; the models run in the driver process on its CPU. ``--help`` lists every flag;
docs/evaluation.md says what each metric is computed against.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from hummingml.config import exit_on_config_error, job_parser, one_line_errors, print_plan, verbose_requested
from hummingml.eval.config import EvalConfig, add_eval_flags, eval_config_from_args

PROG = "ray_jobs.evaluate"


def parse(argv: list[str] | None = None) -> tuple[EvalConfig, set[str], bool]:
    """Flags -> (config, the ``--models-*`` fields given, whether ``--dry-run`` was given); see
    :func:`hummingml.eval.config.eval_config_from_args`.

    Raises:
        ConfigError: one line per invalid flag value (:meth:`EvalConfig.problems`).
    """
    parser = job_parser(PROG, __doc__)
    add_eval_flags(parser)
    args = parser.parse_args(argv)
    cfg, models_given = eval_config_from_args(args)
    return cfg, models_given, bool(args.dry_run)


def main(argv: list[str] | None = None) -> int:
    """Evaluate; write the JSON (and PNG) the flags name. Exit 2 on a ``ConfigError``; ``--dry-run``: print the
    config as the plan (no checkpoint or feature is read) and exit 0."""
    with exit_on_config_error(PROG):
        cfg, models_given, dry_run = parse(argv)
        if dry_run:
            print_plan(PROG, {"job": "evaluate", "config": asdict(cfg), "models_flags_given": sorted(models_given)})
            return 0
        from hummingml.eval.evaluate import run

        print(f"[evaluate] config:\n{json.dumps(asdict(cfg), indent=2, default=str)}", flush=True)
        return one_line_errors(PROG, lambda: run(cfg, models_given), verbose_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
