from __future__ import annotations

from dataclasses import replace

import pytest

from hummingml.extract.config import ExtractConfig
from hummingml.extract.ray import (
    COMMIT_CPUS,
    DECODE_CPUS,
    FUSED_MAX_NODE_CPUS,
    MIN_ACTOR_CPUS,
    MIN_CPUS,
    RESERVED_SHARE,
    STAGE_RTF,
    plan_pools,
    stage_weights,
    starting_size,
)

WEIGHTS = stage_weights(ExtractConfig())


@pytest.mark.parametrize("cpus", [MIN_CPUS, 2, 3, 4, 8, 16, 96, 192])
@pytest.mark.parametrize("actor_threads", [1, 2, 4])
def test_pools_fit_the_cluster_with_room_for_decode(cpus: float, actor_threads: int) -> None:
    plans = plan_pools(cpus, 0, WEIGHTS, actor_threads)
    assert all(p.size >= 1 and p.num_gpus == 0 and p.threads == actor_threads for p in plans.values())
    assert all(p.num_cpus >= MIN_ACTOR_CPUS - 0.001 for p in plans.values())
    used = sum(p.size * p.num_cpus for p in plans.values()) + DECODE_CPUS + COMMIT_CPUS
    assert used <= cpus * RESERVED_SHARE + 1e-9  # the other half: room for a lost node's actors to restart


def test_two_cores_run_two_single_thread_codec_actors() -> None:
    """The codec is most of the work: on 2 CPUs it gets both cores as two 1-thread actors, like a 2x1 process pool."""
    plans = plan_pools(2, 0, WEIGHTS)
    assert (plans["codec"].size, plans["codec"].threads) == (2, 1)
    assert plans["separate"].size == plans["pitch"].size == 1


def test_threads_follow_the_stage_weights_on_a_big_node() -> None:
    plans = plan_pools(64, 0, WEIGHTS)
    codec, separate = plans["codec"].size, plans["separate"].size
    assert codec > separate > 1
    share = WEIGHTS["codec"] / sum(WEIGHTS.values())
    assert abs(codec - 64 * share) <= 1
    assert plans["codec"].num_cpus == pytest.approx(RESERVED_SHARE, abs=0.03)  # its share of its one thread


def test_more_streams_weigh_the_codec_more() -> None:
    mono = stage_weights(ExtractConfig())
    stereo = stage_weights(replace(ExtractConfig(), stem_channels="stereo", mono_variants=3))
    assert stereo["codec"] - mono["codec"] == pytest.approx(STAGE_RTF["codec"] * (6 + 2))
    assert stereo["separate"] == mono["separate"]


def test_gpu_stages_take_half_a_gpu_per_actor() -> None:
    plans = plan_pools(8, 2, WEIGHTS)
    assert (plans["separate"].size, plans["separate"].num_gpus) == (2, 0.5)
    assert (plans["codec"].size, plans["codec"].num_gpus) == (2, 0.5)
    assert plans["pitch"].num_gpus == 0


def test_too_small_a_cluster_is_refused() -> None:
    with pytest.raises(ValueError, match="needs at least"):
        plan_pools(0.5, 0, WEIGHTS)


def test_pools_start_at_their_planned_size_when_the_cpus_are_there() -> None:
    plan = plan_pools(16, 0, WEIGHTS)["codec"]
    assert starting_size(plan, 16, 16) == plan.size
    assert starting_size(plan, 16, 4) == plan.size // 4  # an autoscaling cluster: the rest join as nodes do
    assert starting_size(plan, 16, 0.5) == 1


@pytest.mark.parametrize("nodes", [[2.0, 2.0], [1.0, 1.0, 1.0], [4.0, 4.0, 4.0, 4.0], [32.0, 8.0], [3.0, 1.0]])
def test_actors_pack_onto_the_nodes(nodes: list[float]) -> None:
    """Every actor finds a slot: equal reservations that a node holds a whole number of (the two-node hang)."""
    plans = plan_pools(sum(nodes), 0, WEIGHTS, node_cpus=nodes)
    actors = sum(p.size for p in plans.values())
    reservation = plans["codec"].num_cpus
    assert {p.num_cpus for p in plans.values()} == {reservation} and reservation >= MIN_ACTOR_CPUS - 0.001
    assert sum(int(c // reservation) for c in nodes) >= actors


def test_nodes_too_small_for_one_actor_each_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        plan_pools(1.17, 0, WEIGHTS, node_cpus=[0.09] * 13)


def test_two_cores_fuse_the_stages_into_one_actor_per_core() -> None:
    plans = plan_pools(2, 0, WEIGHTS, placement="auto")
    assert list(plans) == ["pipeline"]
    assert (plans["pipeline"].size, plans["pipeline"].threads, plans["pipeline"].num_gpus) == (2, 1, 0.0)
    assert plans["pipeline"].size * plans["pipeline"].num_cpus <= 2 * RESERVED_SHARE + 1e-9


@pytest.mark.parametrize(
    ("gpus", "node_cpus", "placement", "pools"),
    [(0, [8, 8], "auto", ["pipeline"]),
     (0, [FUSED_MAX_NODE_CPUS, 4], "auto", ["pipeline"]),
     (0, [FUSED_MAX_NODE_CPUS + 1, 4], "auto", ["separate", "pitch", "codec"]),
     (2, [8, 8], "auto", ["separate", "pitch", "codec"]),
     (0, [8, 8], "stages", ["separate", "pitch", "codec"]),
     (0, [96], "fused", ["pipeline"])],
)
def test_auto_placement_fuses_on_small_cpu_nodes_only(gpus, node_cpus, placement, pools) -> None:
    plans = plan_pools(sum(node_cpus), gpus, WEIGHTS, node_cpus=node_cpus, placement=placement)
    assert list(plans) == pools
    if pools == ["pipeline"]:
        assert plans["pipeline"].size == sum(node_cpus) and plans["pipeline"].num_gpus == 0


def test_fused_actors_run_the_planned_threads_each() -> None:
    plans = plan_pools(16, 0, WEIGHTS, actor_threads=4, placement="fused")
    assert (plans["pipeline"].size, plans["pipeline"].threads) == (4, 4)


def test_a_full_reservation_reserves_the_threads_each_actor_runs() -> None:
    fused = plan_pools(8, 0, WEIGHTS, actor_threads=2, placement="fused", reserved_share=1.0)["pipeline"]
    assert (fused.size, fused.num_cpus) == (4, pytest.approx(2, abs=0.002))
    # per-stage pools plan more threads than cores (the light stages idle), so their reservations are scaled to fit
    stages = plan_pools(8, 0, WEIGHTS, actor_threads=2, placement="stages", reserved_share=1.0)
    assert sum(p.size * p.num_cpus for p in stages.values()) == pytest.approx(8, abs=0.02)
    assert sum(p.size * p.threads for p in stages.values()) > 8
