"""Tensor / data parallelism on CPU with gloo: TP=2 equals TP=1; dp=2 x tp=2 trains; activation checkpointing."""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import Shard

from hummingml.model.batch import build_example_batch
from hummingml.model.lm import HummingLM, NARUpsampler
from hummingml.train.config import OptimConfig, ParallelConfig, debug
from hummingml.train.optim import build_optimizer
from hummingml.train.parallel.torch import (
    ParallelDims,
    apply_activation_checkpointing,
    clip_grad_norm_,
    parallelize_torch,
    sync_gradients,
    tp_plan,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest's ``one_torch_thread``)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # several ranks share 2 cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(fn: Callable[..., Any], world_size: int, tmp_path: Path) -> list[Any]:
    mp.spawn(_entry, args=(fn, world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _compare_tp(rank: int, world_size: int) -> dict[str, Any]:
    """Loss and every full gradient of TP=world_size models minus those of the same model unsharded."""
    cfg = replace(debug().model, n_layers=2)
    gen = torch.Generator().manual_seed(0)
    batch = build_example_batch(cfg, 3, 6, 20, generator=gen, variable_lengths=True)
    results = {}
    cases = [
        ("ar_sp", HummingLM, ParallelConfig(tp=world_size), {}),
        ("ar_no_sp", HummingLM, ParallelConfig(tp=world_size, sequence_parallel=False), {}),
        ("ar_sp_selective_ac", HummingLM, ParallelConfig(tp=world_size, activation_checkpoint="selective"), {}),
        ("nar_sp", NARUpsampler, ParallelConfig(tp=world_size), {"level": torch.tensor([1, 3, 2])}),
        ("valle_sp", HummingLM, ParallelConfig(tp=world_size), {"layout": "valle"}),
    ]
    mesh = ParallelDims(dp=1, tp=world_size, world_size=world_size).build_mesh("cpu")
    for name, cls, pcfg, extra in cases:
        torch.manual_seed(0)
        model_cfg = replace(cfg, layout=extra.get("layout", cfg.layout))
        ref = cls(model_cfg)
        par = parallelize_torch(copy.deepcopy(ref), mesh, pcfg)
        kwargs = {"level": extra["level"]} if "level" in extra else {}
        loss_ref, _ = ref(batch, **kwargs)
        loss_par, metrics = par(batch, **kwargs)
        loss_ref.backward()
        loss_par.backward()
        ref_grads = dict(ref.named_parameters())
        diffs = {}
        for pname, p in par.named_parameters():
            key = pname.replace("._checkpoint_wrapped_module", "")
            diffs[key] = float((_full(p.grad) - ref_grads[key].grad).abs().max())
        sharded = [n for n, p in par.named_parameters() if hasattr(p, "placements") and Shard(0) in p.placements]
        results[name] = {
            "loss": (float(loss_ref), float(loss_par)),
            "grad_diff": diffs,
            "n_params": (len(ref_grads), len(diffs)),
            "n_sharded": len(sharded),
            "tokens": int(metrics["tokens"]),
        }
    return results


def test_tp2_matches_tp1(tmp_path: Path) -> None:
    results = _spawn(_compare_tp, 2, tmp_path)
    for case, r in results[0].items():
        loss_ref, loss_par = r["loss"]
        assert abs(loss_ref - loss_par) < 1e-5, case
        assert r["n_params"][0] == r["n_params"][1], case
        worst = max(r["grad_diff"].values())
        assert worst < 1e-5, (case, max(r["grad_diff"], key=r["grad_diff"].get), worst)
        assert r["n_sharded"] >= 2 * 4, case  # wq wk wv w1 (+w3) per layer are column-sharded
    assert results[0] == results[1]  # both ranks saw the same loss and the same full gradients


def _train_dp2_tp2(rank: int, world_size: int) -> dict[str, Any]:
    """A few AdamW steps of (dp=2, tp=2) FSDP2 + TP on a fixed per-dp-rank batch."""
    cfg = debug().model
    pcfg = ParallelConfig(dp=2, tp=2, fsdp=True, activation_checkpoint="full")
    dims = ParallelDims.from_config(pcfg, world_size)
    mesh = dims.build_mesh("cpu")
    dp_rank = mesh["dp"].get_local_rank()
    torch.manual_seed(0)  # same init everywhere
    model = parallelize_torch(HummingLM(cfg), mesh, pcfg)
    opt = build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.0), pcfg, mesh)
    batch = build_example_batch(cfg, 4, 6, 16, generator=torch.Generator().manual_seed(1 + dp_rank))
    losses, norms = [], []
    for _ in range(6):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        norms.append(float(clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        losses.append(float(loss))
    return {"dp_rank": dp_rank, "losses": losses, "norms": norms}


def test_dp2_tp2_fsdp_trains(tmp_path: Path) -> None:
    results = _spawn(_train_dp2_tp2, 4, tmp_path)
    by_dp: dict[int, list[list[float]]] = {}
    for r in results:
        assert all(torch.isfinite(torch.tensor(r["losses"] + r["norms"])))
        by_dp.setdefault(r["dp_rank"], []).append(r["losses"])
    assert sorted(by_dp) == [0, 1]
    for losses in by_dp.values():
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the two TP ranks of one dp replica agree
        assert losses[0][-1] < 0.8 * losses[0][0]
    assert results[0]["norms"] == pytest.approx(results[3]["norms"], rel=1e-4)  # one global grad norm


def _train_zero1(rank: int, world_size: int) -> dict[str, Any]:
    """dp=2 with manual gradient averaging and ZeRO-1 AdamW: replicas must stay identical."""
    cfg = debug().model
    pcfg = ParallelConfig(dp=2, tp=1, zero1=True)
    mesh = ParallelDims.from_config(pcfg, world_size).build_mesh("cpu")
    torch.manual_seed(0)
    model = parallelize_torch(HummingLM(cfg), mesh, pcfg)
    opt = build_optimizer(model, OptimConfig(lr=3e-3), pcfg, mesh)
    batch = build_example_batch(cfg, 2, 5, 12, generator=torch.Generator().manual_seed(10 + rank))
    losses = []
    for _ in range(3):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        sync_gradients(model, mesh["dp"])
        opt.step()
        losses.append(float(loss))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"losses": losses, "checksum": float(flat.double().sum()), "state_len": len(opt.optim.state)}


def test_dp2_zero1_keeps_replicas_equal(tmp_path: Path) -> None:
    r0, r1 = _spawn(_train_zero1, 2, tmp_path)
    assert r0["checksum"] == r1["checksum"]
    assert r0["losses"] != r1["losses"]  # different data per replica, yet identical weights
    assert r0["state_len"] > 0 and r1["state_len"] > 0  # each rank holds optimizer state for its own partition


def test_parallel_dims_checks_world_size(capsys: pytest.CaptureFixture[str]) -> None:
    ParallelDims(dp=2, tp=4, world_size=8)
    assert "dp=2 tp=4 world_size=8" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"dp 2 \* tp 2 != world_size 8"):
        ParallelDims(dp=2, tp=2, world_size=8)


def test_tp_plan_keys_name_real_modules() -> None:
    for mlp in ("swiglu", "gelu"):
        model = HummingLM(replace(debug().model, mlp=mlp))
        names = dict(model.named_modules())
        for sp in (True, False):
            plan = tp_plan(model, sp)
            assert set(plan) <= set(names)
            linears = {n for n, m in names.items() if isinstance(m, torch.nn.Linear)}
            assert linears <= set(plan)  # every matmul weight is sharded


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_keeps_loss_and_grads(mode: str) -> None:
    torch.manual_seed(0)
    ref = HummingLM(debug().model)
    ac = copy.deepcopy(ref)
    apply_activation_checkpointing(ac, mode)
    batch = build_example_batch(ref.cfg, 2, 4, 10, generator=torch.Generator().manual_seed(0))
    loss_ref, _ = ref(batch)
    loss_ac, _ = ac(batch)
    loss_ref.backward()
    loss_ac.backward()
    assert loss_ac.item() == pytest.approx(loss_ref.item(), abs=1e-6)
    ref_grads = dict(ref.named_parameters())
    for name, p in ac.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name.replace("._checkpoint_wrapped_module", "")].grad)
