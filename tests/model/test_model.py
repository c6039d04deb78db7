"""HummingLM / NARUpsampler: learning, masking and causality invariants, generation, sizes, batches, benchmark."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hummingml.config import add_flags, from_dict, from_flags
from hummingml.model.batch import build_example_batch, make_batch
from hummingml.model.config import ModelConfig
from hummingml.model.flops import count_parameters, flops_per_token, mfu, parameter_breakdown
from hummingml.model.lm import IGNORE_INDEX, CodecLM, HummingLM, NARUpsampler, packed_length
from hummingml.train.config import OptimConfig, Preset, b2, b10, debug, m385, valle_debug

REPO = Path(__file__).resolve().parents[2]
ALPHABET = 32  # toy codes are drawn from [0, 32) so a 2-layer model can learn a mapping in ~100 steps


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest's ``one_torch_thread``)."""


def _toy_batch(cfg: ModelConfig, perm: torch.Tensor, gen: torch.Generator, batch_size: int = 16) -> dict:
    """Target level 0 = perm[sine level 0] frame by frame; level l = perm[(sine level 0 + l) % 32]."""
    batch = build_example_batch(cfg, batch_size, 6, 16, generator=gen)
    batch["cond"] = torch.randint(0, ALPHABET, batch["cond"].shape, generator=gen)
    for level in range(cfg.n_codebooks):
        batch["target"][:, level] = perm[(batch["cond"][:, 0, 0] + level) % ALPHABET]
    return batch


def _train(model: CodecLM, steps: int, stop_below: float, seed: int = 1) -> tuple[float, float, int]:
    """AdamW on fresh toy batches until the loss is under ``stop_below`` x the first loss; (first, last, steps)."""
    torch.manual_seed(seed)
    perm = torch.randperm(model.cfg.codebook_size)[:ALPHABET]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = last = float("nan")
    for step in range(steps):
        loss, _ = model(_toy_batch(model.cfg, perm, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
        if step == 0:
            first = last
        elif last < stop_below * first:
            return first, last, step + 1
    return first, last, steps


@pytest.mark.parametrize("preset", [debug, valle_debug], ids=["humming", "valle"])
def test_debug_model_learns_a_frame_mapping(preset) -> None:
    torch.manual_seed(0)
    first, last, steps = _train(HummingLM(preset().model), steps=150, stop_below=0.3)
    assert last < 0.3 * first, (first, last, steps)


def test_nar_learns_every_level() -> None:
    torch.manual_seed(0)
    model = NARUpsampler(debug().model)
    first, last, _ = _train(model, steps=150, stop_below=0.1)
    assert last < 0.3 * first
    torch.manual_seed(1)
    perm = torch.randperm(model.cfg.codebook_size)[:ALPHABET]
    per_level = model.level_metrics(_toy_batch(model.cfg, perm, torch.Generator().manual_seed(7)))
    assert sorted(per_level) == list(range(1, model.cfg.n_codebooks))
    for level, m in per_level.items():
        assert m["acc"] > 0.5, (level, m)  # random guessing over the 32 toy codes: ~0.03
        assert m["top10_acc"] >= m["acc"]


def pack_batch(cfg: ModelConfig, seed: int = 0, batch_size: int = 3) -> dict:
    return build_example_batch(
        cfg, batch_size, 7, 12, generator=torch.Generator().manual_seed(seed), variable_lengths=True
    )


@pytest.mark.parametrize("layout", ["humming", "valle"])
def test_labels_are_exactly_the_target_frames(layout: str) -> None:
    model = HummingLM(replace(debug().model, layout=layout))
    batch = pack_batch(model.cfg)
    labels = model.pack(batch).labels
    first = model.target_positions(batch)
    for b in range(labels.shape[0]):
        T = int(batch["target_len"][b])
        pos = torch.nonzero(labels[b] != IGNORE_INDEX)[:, 0]
        assert pos.tolist() == list(range(int(first[b]), int(first[b]) + T))
        assert torch.equal(labels[b, pos], batch["target"][b, 0, :T])
        assert packed_length(layout, int(batch["timbre_len"][b]), T) <= labels.shape[1]


@pytest.mark.parametrize("cls", [HummingLM, NARUpsampler])
def test_loss_ignores_padding_and_unused_codes(cls: type[CodecLM]) -> None:
    torch.manual_seed(0)
    model = cls(debug().model).eval()
    batch = pack_batch(model.cfg)
    # The contract allows more conditioning levels than cond_codebooks; only the first Kc are read.
    batch["cond"] = torch.randint(0, model.cfg.codebook_size, (3, 2, model.cfg.n_codebooks, 12))
    level = torch.tensor([1, 2, 1])
    kwargs = {"level": level} if cls is NARUpsampler else {}
    loss = model(batch, **kwargs)[0].detach()
    changed = {k: v.clone() for k, v in batch.items()}
    for b in range(3):
        P, T = int(batch["timbre_len"][b]), int(batch["target_len"][b])
        changed["timbre"][b, :, P:] = 5  # past the timbre clip
        changed["cond"][b, :, :, T:] = 6  # past the target
        changed["target"][b, :, T:] = 7
        changed["cond"][b, :, model.cfg.cond_codebooks :] = 8
        if cls is HummingLM:
            changed["target"][b, 1:] = 9  # the AR model never sees levels >= 1
        else:
            changed["target"][b, int(level[b]) + 1 :] = 9  # levels above the predicted one are not inputs
    loss2 = model(changed, **kwargs)[0].detach()
    assert float(loss2) == float(loss)
    # ...while a real input does matter.
    changed["cond"][:, 0, 0, 0] = (changed["cond"][:, 0, 0, 0] + 1) % model.cfg.codebook_size
    assert float(model(changed, **kwargs)[0].detach()) != float(loss)


@pytest.mark.parametrize("layout", ["humming", "valle"])
def test_causal_future_targets_do_not_change_earlier_logits(layout: str) -> None:
    torch.manual_seed(0)
    model = HummingLM(replace(debug().model, layout=layout)).eval()
    batch = pack_batch(model.cfg, batch_size=1)
    batch["target_len"][:] = 12
    j = 5
    with torch.no_grad():
        base = model.logits(model.pack(batch))
        batch["target"][0, 0, j] = (batch["target"][0, 0, j] + 1) % model.cfg.codebook_size
        moved = model.logits(model.pack(batch))
    pos = int(model.target_positions(batch)[0]) + j + 1  # the position whose input is target frame j
    torch.testing.assert_close(moved[:, :pos], base[:, :pos], rtol=0, atol=0)
    assert not torch.allclose(moved[:, pos], base[:, pos])


@pytest.mark.parametrize("cls", [HummingLM, NARUpsampler])
def test_row_is_independent_of_batch_padding(cls: type[CodecLM]) -> None:
    torch.manual_seed(0)
    model = cls(debug().model).eval()
    batch = pack_batch(model.cfg)
    batch["target_len"][0], batch["timbre_len"][0] = 3, 2  # row 0 is short, others pad it
    kwargs = {"level": torch.tensor([2, 1, 3])} if cls is NARUpsampler else {}
    alone = {k: v[:1] for k, v in batch.items()}
    with torch.no_grad():
        packed = model.pack(batch, **kwargs)
        full = model.logits(packed)
        packed_alone = model.pack(alone, **{k: v[:1] for k, v in kwargs.items()})
        single = model.logits(packed_alone)
    n = int(packed_alone.key_padding[0].sum())
    torch.testing.assert_close(full[0, :n], single[0, :n], rtol=1e-5, atol=1e-5)


def test_metrics_are_consistent() -> None:
    torch.manual_seed(0)
    model = HummingLM(debug().model)
    batch = pack_batch(model.cfg)
    loss, metrics = model(batch)
    assert int(metrics["tokens"]) == int(batch["target_len"].sum())
    assert 0.0 <= float(metrics["acc"]) <= float(metrics["top10_acc"]) <= 1.0
    packed = model.pack(batch)
    logits = model.logits(packed)
    ref = nn.functional.cross_entropy(logits.flatten(0, 1), packed.labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("layout", ["humming", "valle"])
def test_generate_returns_target_len_codes_consistent_with_teacher_forcing(layout: str) -> None:
    torch.manual_seed(0)
    model = HummingLM(replace(debug().model, layout=layout)).eval()
    batch = pack_batch(model.cfg)
    cond_only = {k: v for k, v in batch.items() if k != "target"}
    out = model.generate(cond_only)
    T = batch["cond"].shape[-1]
    assert out.shape == (3, T) and out.dtype == torch.long
    for b in range(3):
        assert (out[b, int(batch["target_len"][b]) :] == 0).all()
    # Greedy: feeding the generated codes back as the target, each teacher-forced argmax is the generated code.
    forced = dict(batch, target=out[:, None, :].expand(-1, model.cfg.n_codebooks, -1).clone())
    packed = model.pack(forced)
    with torch.no_grad():
        pred = model.logits(packed).argmax(-1)
    valid = packed.labels != IGNORE_INDEX
    assert torch.equal(pred[valid], packed.labels[valid])
    # Top-k sampling is reproducible with a generator and stays in range.
    s1 = model.generate(cond_only, top_k=20, temperature=1.0, generator=torch.Generator().manual_seed(3))
    s2 = model.generate(cond_only, top_k=20, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and int(s1.max()) < model.cfg.codebook_size


@pytest.mark.parametrize("layout", ["humming", "valle"])
def test_kv_cache_generates_what_full_recomputation_generates(layout: str) -> None:
    """Rows with different prompt and target lengths: the cached path (rows shifted to align) gives the same codes."""
    torch.manual_seed(1)
    model = HummingLM(replace(debug().model, layout=layout)).eval()
    batch = {k: v for k, v in pack_batch(model.cfg, seed=4, batch_size=6).items() if k != "target"}
    assert len(set(batch["timbre_len"].tolist())) > 1 and len(set(batch["target_len"].tolist())) > 1
    assert torch.equal(model.generate(batch, use_cache=True), model.generate(batch, use_cache=False))
    sampled = [
        model.generate(batch, top_k=50, generator=torch.Generator().manual_seed(9), use_cache=cached)
        for cached in (True, False)
    ]
    assert torch.equal(*sampled)


def test_nar_generate_fills_levels_consistently() -> None:
    torch.manual_seed(0)
    model = NARUpsampler(debug().model).eval()
    batch = pack_batch(model.cfg)
    level0 = batch["target"][:, 0]
    codes = model.generate(batch, level0)
    N = model.cfg.n_codebooks
    assert codes.shape == (3, N, batch["cond"].shape[-1])
    for b in range(3):
        T = int(batch["target_len"][b])
        assert torch.equal(codes[b, 0, :T], level0[b, :T]) and (codes[b, :, T:] == 0).all()
    for level in range(1, N):
        packed = model.pack(dict(batch, target=codes), torch.full((3,), level))
        with torch.no_grad():
            pred = model.logits(packed).argmax(-1)
        valid = packed.labels != IGNORE_INDEX
        assert torch.equal(pred[valid], packed.labels[valid])


def test_meta_build_then_init_weights() -> None:
    cfg = debug().model
    with torch.device("meta"):
        model = HummingLM(cfg)
    assert model.tok_embeddings.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.rope, HummingLM(cfg).rope)
    loss, _ = model(pack_batch(cfg))
    assert torch.isfinite(loss)
    assert abs(loss.item() - np.log(cfg.codebook_size)) < 1.5  # near-uniform predictions at init


@pytest.mark.parametrize(("preset", "nominal", "tolerance"), [(m385, 385e6, 0.02), (b2, 2e9, 0.05), (b10, 10e9, 0.05)])
def test_preset_parameter_counts(preset, nominal: float, tolerance: float) -> None:
    cfg = preset().model
    with torch.device("meta"):
        model = HummingLM(cfg)
        nar = NARUpsampler(cfg)
    n = count_parameters(model)
    print(f"{preset.__name__}: HummingLM {n:,} {parameter_breakdown(model)}; NARUpsampler {count_parameters(nar):,}")
    assert abs(n - nominal) / nominal < tolerance
    assert n == sum(parameter_breakdown(model).values())


def test_flops_count_the_model_matmuls() -> None:
    cfg = debug().model
    model = HummingLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    S = 128
    assert flops_per_token(cfg, S) == 6 * linear + 12 * cfg.n_layers * cfg.d_model * S
    assert mfu(1000.0, flops_per_token(cfg, S), 1000.0 * flops_per_token(cfg, S)) == pytest.approx(1.0)


def _example(cfg: ModelConfig, P: int, T: int, rng: np.random.Generator, channel_axis: bool = False) -> dict:
    def codes(levels: int, frames: int) -> np.ndarray:
        a = rng.integers(0, cfg.codebook_size, (levels, frames), dtype=np.int16)
        return a[None] if channel_axis else a

    N = cfg.n_codebooks
    return {"timbre": codes(N, P), "sine": codes(N, T), "mono": codes(N, T), "target": codes(N, T)}


def test_make_batch_collates_and_pads() -> None:
    cfg = debug().model
    rng = np.random.default_rng(0)
    examples = [_example(cfg, 5, 9, rng), _example(cfg, 3, 12, rng, channel_axis=True)]
    batch = make_batch(examples, cfg)
    Kc, N = cfg.cond_codebooks, cfg.n_codebooks
    assert batch["timbre"].shape == (2, N, 5) and batch["cond"].shape == (2, 2, Kc, 12)
    assert batch["target"].shape == (2, N, 12) and batch["timbre"].dtype == torch.long
    assert batch["timbre_len"].tolist() == [5, 3] and batch["target_len"].tolist() == [9, 12]
    assert np.array_equal(batch["cond"][0, 0].numpy()[:, :9], examples[0]["sine"][:Kc])
    assert np.array_equal(batch["cond"][1, 1].numpy(), examples[1]["mono"][0, :Kc])
    assert (batch["target"][0, :, 9:] == 0).all()
    fixed = make_batch(examples, cfg, timbre_frames=8, frames=16)
    assert fixed["timbre"].shape[-1] == 8 and fixed["cond"].shape[-1] == 16
    no_target = make_batch([{k: v for k, v in ex.items() if k != "target"} for ex in examples], cfg)
    assert "target" not in no_target
    loss, _ = HummingLM(cfg)(batch)
    assert torch.isfinite(loss)


def test_make_batch_rejects_bad_examples() -> None:
    cfg = debug().model
    rng = np.random.default_rng(0)
    too_long = _example(cfg, 10, (cfg.max_seq_len - 3 - 10) // 2 + 1, rng)
    with pytest.raises(ValueError, match="max_seq_len"):
        make_batch([too_long], cfg)
    bad = _example(cfg, 3, 4, rng)
    bad["sine"][0, 0] = cfg.codebook_size
    with pytest.raises(ValueError, match="outside"):
        make_batch([bad], cfg)


def test_configs_round_trip_through_flags_and_dicts() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, Preset)
    args = parser.parse_args(["--model-n-layers", "3", "--optim-betas", "0.8,0.9", "--parallel-tp", "2"])
    preset = from_flags(Preset, args, base=m385())
    assert preset.model.n_layers == 3 and preset.model.d_model == 1024
    assert preset.optim.betas == (0.8, 0.9) and preset.parallel.tp == 2
    assert from_dict(Preset, asdict(preset)) == preset
    assert "MLP hidden width" in parser.format_help()
    with pytest.raises(ValueError):
        ModelConfig(d_model=100, n_heads=16)
    assert OptimConfig(betas=("0.5", "0.6")).betas == (0.5, 0.6)


def test_benchmark_script_smoke(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_train_step.py"), "--device", "cpu", "--preset", "debug"]
    cmd += ["--steps", "2", "--warmup", "0", "--batch-size", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=300, env=env)
    result = json.loads(out.read_text())
    assert result["params"] == count_parameters(HummingLM(debug().model))
    assert result["tokens_per_step"] == 2 * result["seq_len"] and result["seq_len"] <= debug().model.max_seq_len
    assert result["tokens_per_s"] > 0 and result["step_time_s"] > 0
    assert result["mfu"] is None  # no known peak for a CPU
    assert np.isfinite(result["loss_first"]) and np.isfinite(result["loss_last"])
