"""The NKI flash attention path on CPU: the kernel's math in torch against SDPA, and the wrapper's layouts."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hummingml.model.batch import build_example_batch
from hummingml.model.config import ModelConfig
from hummingml.model.lm import SDPA, HummingLM, NARUpsampler
from hummingml.model.nki_attention import (
    FlashTiles,
    NKIFlashAttention,
    ReferenceFlashKernels,
    flash_attention_reference,
)
from hummingml.train.config import debug

SMALL = FlashTiles(q=16, k=64, k_sub=32)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest's ``one_torch_thread``)."""


def _qkv(B: int, H: int, S: int, D: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, S, D, generator=g, dtype=dtype) * 2 for _ in range(3)]


@pytest.mark.parametrize(
    ("shape", "tiles"),
    [
        ((2, 3, 100, 8), SMALL),  # 100 = 1.56 key steps, 6.25 query tiles
        ((1, 2, 64, 16), SMALL),  # exactly one key step
        ((2, 1, 37, 4), SMALL),  # shorter than one step
        ((1, 1, 2200, 8), FlashTiles()),  # the kernel's own tiles (128 / 2048 / 512), a second, short key step
    ],
)
@pytest.mark.parametrize("causal", [True, False])
def test_reference_equals_sdpa(shape, tiles, causal) -> None:
    q, k, v = _qkv(*shape)
    out, lse = flash_attention_reference(q, k, v, causal=causal, tiles=tiles)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    scores = q @ k.mT * shape[-1] ** -0.5
    if causal:
        scores = scores.masked_fill(torch.ones(shape[2], shape[2], dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(-1), rtol=1e-10, atol=1e-10)


def test_reference_in_float32_stays_close_to_sdpa() -> None:
    q, k, v = _qkv(2, 2, 200, 16, dtype=torch.float32)
    out, _ = flash_attention_reference(q, k, v, tiles=SMALL)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_wrapper_forward_and_grads_equal_sdpa(causal) -> None:
    """The transposes around the kernels (q, k to (B, H, D, S), v in and out of (B, H, S, D), the backward's layouts)
    checked by running the wrapper on the reference kernels; B, H, S, D all differ so any swapped axis shows."""
    q, k, v = (t.requires_grad_() for t in _qkv(2, 3, 128, 8))
    core = NKIFlashAttention(causal=causal, kernels=ReferenceFlashKernels(SMALL))
    out = core(q, k, v)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected = F.scaled_dot_product_attention(q2, k2, v2, is_causal=causal)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(out)
    (out * dy).sum().backward()
    (expected * dy).sum().backward()
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_wrapper_refuses_what_the_kernel_cannot_take() -> None:
    core = NKIFlashAttention(kernels=ReferenceFlashKernels(SMALL))
    q, k, v = _qkv(1, 2, 96, 8)  # 96 is not a multiple of the 64-key step
    with pytest.raises(ValueError, match="multiple of 64"):
        core(q, k, v)
    q, k, v = _qkv(1, 2, 64, 8)
    with pytest.raises(ValueError, match="key-padding"):
        core(q, k, v, torch.ones(1, 64, dtype=torch.bool))


def test_model_with_the_nki_core_equals_sdpa() -> None:
    """A debug AR model whose cores run the kernels' layouts (reference kernels) gives SDPA's loss and gradients."""
    cfg = replace(debug().model, pad_to_max=True)  # every row 576 = 9 key steps of 64
    torch.manual_seed(0)
    model = HummingLM(cfg).double()
    flash = copy.deepcopy(model)
    for layer in flash.layers:
        layer.attention.core = NKIFlashAttention(kernels=ReferenceFlashKernels(SMALL))
    batch = build_example_batch(cfg, 2, 5, 12, generator=torch.Generator().manual_seed(1), variable_lengths=True)
    loss, _ = model(batch)
    flash_loss, _ = flash(batch)
    torch.testing.assert_close(flash_loss, loss, rtol=1e-10, atol=1e-10)
    loss.backward()
    flash_loss.backward()
    for (name, p), q in zip(model.named_parameters(), flash.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_nki_config_needs_a_static_kernel_sized_length() -> None:
    with pytest.raises(ValueError, match="pad_to_max"):
        ModelConfig(attention="nki", max_seq_len=2048)
    with pytest.raises(ValueError, match="multiple of 2048"):
        ModelConfig(attention="nki", pad_to_max=True, max_seq_len=3000)
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(attention="nki", pad_to_max=True, d_model=1024, n_heads=4)


@pytest.mark.skipif(importlib.util.find_spec("neuronxcc") is not None, reason="Neuron SDK present")
def test_selecting_nki_without_the_neuron_sdk_names_what_to_install() -> None:
    cfg = replace(debug().model, attention="nki", pad_to_max=True, max_seq_len=2048)
    with pytest.raises(ImportError, match="neuronx-cc and torch-neuronx"):
        HummingLM(cfg)
    nar = NARUpsampler(cfg)  # bidirectional with a key-padding mask: SDPA, no Neuron SDK needed
    assert all(type(layer.attention.core) is SDPA for layer in nar.layers)
