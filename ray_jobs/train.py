"""Training job: HummingLM (AR + NAR) on the extraction's feature sets with Ray Train.

Locally (starts a Ray instance in this process), on the demo's features::

    python -m ray_jobs.train --preset debug --data-features demo-out/features

On a cluster, from the repository root::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.train --preset debug --data-features /shared/features --parallel-dp 2

``--preset`` sets the model, parallel and optimizer sub-configs; every other flag (``--help``) overrides one field.
Rerunning with the same ``--name`` and ``--storage`` resumes from the newest checkpoint. Invalid values are reported
one line each on stderr, with exit code 2, before anything is created or started. ``--dry-run`` checks the flags
(including what only the workers would have found: the Neuron backend's requirements, tensor-parallel splits) and
prints the plan: workers and their resources, the mesh, the models' sizes, tokens per step, where checkpoints go.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from hummingml.config import (
    add_flags,
    exit_on_config_error,
    from_flags,
    job_parser,
    one_line_errors,
    print_plan,
    verbose_requested,
)
from hummingml.train.config import PRESETS, TrainConfig, from_preset

PROG = "ray_jobs.train"


def parse(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """Flags -> (config, whether ``--dry-run`` was given): the preset first, then the overrides.

    Raises:
        ConfigError: one line per invalid flag value (:meth:`TrainConfig.problems`).
    """
    pre = argparse.ArgumentParser(prog=PROG, add_help=False)
    pre.add_argument("--preset", default="debug", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    parser = job_parser(PROG, __doc__)
    add_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    return from_flags(TrainConfig, args, base=from_preset(known.preset)), bool(args.dry_run)


def main(argv: list[str] | None = None) -> int:
    """Train; print the final metrics and the checkpoint path. Exit 2 on a ``ConfigError``; ``--dry-run``: print
    the plan (:func:`hummingml.train.plan.dry_run_plan`) and exit 0."""
    with exit_on_config_error(PROG):
        cfg, dry_run = parse(argv)
        if dry_run:
            from hummingml.train.plan import dry_run_plan

            print_plan(PROG, dry_run_plan(cfg))
            return 0
        print(f"[train] config:\n{json.dumps(asdict(cfg), indent=2, default=str)}", flush=True)
        return one_line_errors(PROG, lambda: _fit(cfg), verbose_requested(argv))


def _fit(cfg: TrainConfig) -> int:
    """Train; print the final metrics and the checkpoint path; 0 when Ray Train reports no error, else 1."""
    from hummingml.train.ray import fit

    result = fit(cfg)
    print(f"[train] final metrics: {json.dumps(result.metrics, default=str)}", flush=True)
    print(f"[train] checkpoint: {result.checkpoint.path if result.checkpoint else None}", flush=True)
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
