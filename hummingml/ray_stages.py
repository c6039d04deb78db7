"""Ray Data glue: the extraction steps as ``map_batches`` operators with actor pools sized from the cluster.

This is the only library module that imports ``ray.data``.
"""

from __future__ import annotations

import math
import time
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
MIN_CPUS = DECODE_CPUS + COMMIT_CPUS + sum(MODEL_CPUS.values())  # one actor per model stage, one decode task


@dataclass(frozen=True)
class PoolPlan:
    """Actor count, CPUs and GPUs per actor for one model stage."""

    size: int
    num_cpus: float
    num_gpus: float


def plan_pools(cpus: float, gpus: float) -> dict[str, PoolPlan]:
    """Size the model actor pools so that, with one decode task and the writer, they fit in ``cpus``.

    Each stage gets its ``CPU_SHARE`` of the CPUs left after the decode and writer reservations, at least one actor;
    when the minimum of one actor each overshoots (tiny machines), the largest pools shrink first. With GPUs the
    separation and codec stages run one actor per GPU, half a GPU each.
    """
    free = cpus - DECODE_CPUS - COMMIT_CPUS
    sizes = {stage: max(1, math.floor(free * CPU_SHARE[stage] / per_actor + 1e-9))
             for stage, per_actor in MODEL_CPUS.items()}

    def used() -> float:
        return sum(sizes[s] * MODEL_CPUS[s] for s in sizes)

    while used() > free + 1e-9 and any(n > 1 for n in sizes.values()):
        biggest = max(sizes, key=lambda s: sizes[s] * MODEL_CPUS[s])
        sizes[biggest] -= 1
    if used() > free + 1e-9:
        raise ValueError(f"the cluster has {cpus} CPUs; extraction needs at least {MIN_CPUS}")
    plans = {}
    for stage, per_actor in MODEL_CPUS.items():
        use_gpu = gpus >= 1 and stage in ("separate", "codec")
        plans[stage] = PoolPlan(max(1, int(gpus)) if use_gpu else sizes[stage], per_actor, 0.5 if use_gpu else 0.0)
    return plans


def cluster_cpus(cfg: ExtractConfig, poll_s: float = 5.0) -> float:
    """The CPUs to size the pools for: ``cfg.plan_cpus`` or the cluster's, waiting for an autoscaler if needed.

    On an autoscaling cluster the workers may not be up when the job starts: the job asks the autoscaler for
    what it plans for (``ray.autoscaler.sdk.request_resources``) and waits up to ``cfg.wait_for_cpus_s`` for at
    least ``MIN_CPUS``.
    """
    want = max(cfg.plan_cpus, MIN_CPUS)
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < want:
        from ray.autoscaler.sdk import request_resources

        request_resources(num_cpus=math.ceil(want))
    deadline = time.monotonic() + cfg.wait_for_cpus_s
    while have < MIN_CPUS:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the cluster has {have} CPUs after waiting {cfg.wait_for_cpus_s:.0f} s; extraction needs at least "
                f"{MIN_CPUS} (start workers, or raise --wait-for-cpus-s on an autoscaling cluster)"
            )
        time.sleep(poll_s)
        have = ray.cluster_resources().get("CPU", 0.0)
    return cfg.plan_cpus or have


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
    plans = plan_pools(cluster_cpus(cfg), ray.cluster_resources().get("GPU", 0.0))
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
