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

import argparse
import json
import sys
from dataclasses import asdict

from hummingml import __version__
from hummingml.config import exit_on_config_error
from hummingml.eval.config import EvalConfig, add_eval_flags, eval_config_from_args

PROG = "ray_jobs.evaluate"


def parse(argv: list[str] | None = None) -> tuple[EvalConfig, set[str]]:
    """Flags -> (config, the ``--models-*`` fields given); see :func:`hummingml.eval.config.eval_config_from_args`.

    Raises:
        ConfigError: one line per invalid flag value (:meth:`EvalConfig.problems`).
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hummingml {__version__}")
    add_eval_flags(parser)
    return eval_config_from_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Evaluate; write the JSON (and PNG) the flags name. Exit 2 on a ``ConfigError``."""
    with exit_on_config_error(PROG):
        cfg, models_given = parse(argv)
        from hummingml.eval.evaluate import run

        print(f"[evaluate] config:\n{json.dumps(asdict(cfg), indent=2, default=str)}", flush=True)
        run(cfg, models_given)
    return 0


if __name__ == "__main__":
    sys.exit(main())
