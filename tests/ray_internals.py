"""What tests read of Ray's internals, each assumption named once (checked against Ray 2.60).

- A Ray worker process's command line carries its actor's name: ``ray::RayTrainWorker...`` for Ray Train workers,
  ``ray::MapWorker(MapBatches(<Class>))...`` for a Ray Data actor running ``map_batches(<Class>)``.
- An actor process's parent is its node's raylet (a process whose command line ends in ``/raylet``).
- Ray Train writes ``<storage>/<name>/checkpoint_manager_snapshot.json`` listing each registered checkpoint with the
  metrics it was reported with, as compact JSON (``"step":3``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TRAIN_WORKER = "RayTrainWorker"  # in the command line of every Ray Train worker
DATA_ACTOR = "MapWorker"  # in the command line of every Ray Data map actor


def map_actor(step_class: str) -> str:
    """What the command line of a Ray Data actor running ``map_batches(step_class)`` contains."""
    return f"MapBatches({step_class})"


def processes(marker: str) -> list[Any]:
    """Live processes whose command line contains ``marker`` (``psutil.Process`` objects)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if any(marker in part for part in p.info["cmdline"] or [])]


def actors_under_raylets(pgid: int, marker: str = DATA_ACTOR) -> int:
    """Actor processes (``marker``) whose parent is a raylet in process group ``pgid`` (one node's ``ray start``)."""
    import psutil

    procs = list(psutil.process_iter(["ppid", "cmdline"]))
    raylets = set()
    for p in procs:
        try:
            if os.getpgid(p.pid) == pgid and any(part.endswith("/raylet") for part in p.info["cmdline"] or []):
                raylets.add(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return sum(1 for p in procs if p.info["ppid"] in raylets and marker in " ".join(p.info["cmdline"] or []))


def checkpoint_registered(run_dir: Path, step: int) -> bool:
    """Whether Ray Train has registered the checkpoint reported at ``step`` in the run at ``run_dir``."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and f'"step":{step}' in snapshot.read_text()
