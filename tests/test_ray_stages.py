from __future__ import annotations

import pytest

from hummingml.ray_stages import COMMIT_CPUS, DECODE_CPUS, MIN_CPUS, plan_pools


@pytest.mark.parametrize("cpus", [MIN_CPUS, 2, 3, 4, 8, 16, 96, 192])
def test_pools_fit_the_cluster_with_room_for_decode(cpus: float) -> None:
    plans = plan_pools(cpus, 0)
    assert all(p.size >= 1 and p.num_gpus == 0 for p in plans.values())
    used = sum(p.size * p.num_cpus for p in plans.values()) + DECODE_CPUS + COMMIT_CPUS
    assert used <= cpus + 1e-9


def test_the_codec_gets_most_actors_on_a_big_node() -> None:
    plans = plan_pools(64, 0)
    assert plans["codec"].size > plans["separate"].size > 1


def test_gpu_stages_take_half_a_gpu_per_actor() -> None:
    plans = plan_pools(8, 2)
    assert (plans["separate"].size, plans["separate"].num_gpus) == (2, 0.5)
    assert (plans["codec"].size, plans["codec"].num_gpus) == (2, 0.5)
    assert plans["pitch"].num_gpus == 0


def test_too_small_a_cluster_is_refused() -> None:
    with pytest.raises(ValueError, match="needs at least"):
        plan_pools(1.0, 0)
