"""Ray Data glue: the extraction steps as ``map_batches`` operators with actor pools sized from the cluster.

This is the only library module that imports ``ray.data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ray
import ray.data

from hummingml.pipeline import (
    Batch,
    CodecStep,
    CommitStep,
    DecodeStep,
    ExtractConfig,
    PitchStep,
    SeparateStep,
    source_rows,
)
from hummingml.sources import Source

# CPUs reserved per task/actor. Fractions let every operator hold a slot on a 2-CPU machine: an actor pool that
# takes every CPU starves the read/decode tasks and the job hangs (see docs on Ray's actor-pool deadlock).
DECODE_CPUS = 0.25
COMMIT_CPUS = 0.1
MODEL_CPUS = {"separate": 0.5, "pitch": 0.25, "codec": 0.5}
# Share of the remaining CPUs per model stage, from measured real-time factors (codec >> separate >> pitch).
CPU_SHARE = {"separate": 0.25, "pitch": 0.1, "codec": 0.65}


@dataclass(frozen=True)
class PoolPlan:
    """Actor count, CPUs and GPUs per actor for one model stage."""

    size: int
    num_cpus: float
    num_gpus: float


def plan_pools(cpus: float, gpus: float) -> dict[str, PoolPlan]:
    """Size the model actor pools so that together with one decode task and the writer they fit the cluster."""
    free = max(cpus - DECODE_CPUS - COMMIT_CPUS, sum(MODEL_CPUS.values()))
    plans = {}
    for stage, per_actor in MODEL_CPUS.items():
        size = max(1, math.floor(free * CPU_SHARE[stage] / per_actor + 1e-9))
        use_gpu = gpus >= 1 and stage in ("separate", "codec")
        if use_gpu:
            size = max(1, int(gpus))  # one actor per GPU for each of the two GPU stages, half a GPU each
        plans[stage] = PoolPlan(size, per_actor, 0.5 if use_gpu else 0.0)
    used = sum(p.size * p.num_cpus for p in plans.values()) + DECODE_CPUS + COMMIT_CPUS
    if used > cpus + 1e-9 and cpus >= DECODE_CPUS + COMMIT_CPUS + sum(MODEL_CPUS.values()):
        raise AssertionError(f"pool plan uses {used} CPUs of {cpus}")
    return plans


def _decode(batch: Batch, cfg: ExtractConfig) -> Batch:
    return DecodeStep(cfg)(batch)


def build_dataset(
    cfg: ExtractConfig,
    sources: list[Source],
    skip: dict[str, list[int]],
    metadata: dict[str, Any],
    frame_rate: float,
) -> ray.data.Dataset:
    """read -> decode/segment (tasks) -> separate -> pitch + sine -> codec (actor pools) -> commit (one actor)."""
    resources = ray.cluster_resources()
    plans = plan_pools(resources.get("CPU", 1.0), resources.get("GPU", 0.0))
    first = source_rows(sources, skip)
    items = [
        {"source_id": s, "segment_index": i, "payload": p}
        for s, i, p in zip(first["source_id"], first["segment_index"], first["payload"], strict=True)
    ]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))  # one source per block: spreads work
    ds = ds.map_batches(_decode, fn_kwargs={"cfg": cfg}, batch_size=1, num_cpus=DECODE_CPUS)
    for stage, cls in (("separate", SeparateStep), ("pitch", PitchStep), ("codec", CodecStep)):
        plan = plans[stage]
        ds = ds.map_batches(
            cls,
            fn_constructor_kwargs={"cfg": cfg},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.size),
            batch_size=1,
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
        )
    return ds.map_batches(
        CommitStep,
        fn_constructor_kwargs={"cfg": cfg, "run_metadata": metadata, "frame_rate": frame_rate},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=cfg.commit_rows,
        num_cpus=COMMIT_CPUS,
    )
