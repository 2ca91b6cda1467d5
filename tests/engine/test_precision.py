"""Precision is how weights are loaded: packed models (bf16, f16, int8, int4) stay within their stated
tolerance of fp32 on both paths (PyTorch's and the native engine's), store fewer bytes in the documented
layout, refuse what they cannot hold, and say so when they cannot be fast."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.models import ACT_TOL, REL_TOL, WIDE, random_model

import gpt2.engine.precision as packing
from gpt2 import PRECISIONS, load_model, quantize, save_model
from gpt2.engine import attach, build, gemm
from gpt2.engine.precision import (
    BYTES_PER_WEIGHT,
    Bf16Linear,
    F16Linear,
    Int4Linear,
    Int8Linear,
    weight_bytes_per_token,
)

PACKED = {"bf16": Bf16Linear, "f16": F16Linear, "int8": Int8Linear, "int4": Int4Linear}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def packed(precision: str, engine: bool):
    m = quantize(random_model(WIDE, seed=1), precision)
    if engine:
        if not build.available(precision):
            pytest.skip(f"native {precision}: {build.unavailable_reason(precision)}")
        assert attach(m) is None
    return m


@pytest.mark.parametrize("engine", [False, True], ids=["torch", "engine"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_logits_within_tolerance_of_fp32(wide_model, precision, engine):
    model = packed(precision, engine)
    seq = torch.randint(0, WIDE.n_vocab, (48,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = wide_model(seq[None])[0]
    cache = model.new_cache(max_len=48)
    steps = [model.step(seq[:40], torch.arange(40), torch.zeros(40, dtype=torch.long), cache)]
    for t in range(40, 48):  # then one token at a time, through the cache
        steps.append(model.step(seq[t : t + 1], torch.tensor([t]), torch.tensor([0]), cache))
    got = torch.cat(steps)
    assert got.shape == want.shape and rel_err(got, want) <= REL_TOL[precision]
    if precision != "fp32":  # the narrower modes really are narrower (the test can tell them apart)
        assert rel_err(got, want) > 1e-5


def test_int8_weights_per_row_round_trip():
    torch.manual_seed(0)
    w = torch.randn(300, 768) * torch.logspace(-2, 0, 300)[:, None]  # rows of very different scales
    b = torch.randn(300)
    lin = Int8Linear(w, b)
    assert lin.weight.dtype == torch.int8 and lin.scale.shape == (300,) and lin.scale.dtype == torch.float32
    # Per-row scales: each row's error is at most half its own step.
    assert ((lin.dequantized() - w).abs().amax(dim=1) <= 0.501 * w.abs().amax(dim=1) / 127).all()
    x = torch.randn(3, 768)
    assert rel_err(lin(x), torch.nn.functional.linear(x, w, b)) <= 2e-2


def q4_0(w: torch.Tensor) -> torch.Tensor:
    """llama.cpp's q4_0 rounding of `w` (absmax / -8 per 32, f16 scale), as fp32 weights."""
    g = w.reshape(w.shape[0], -1, 32)
    d = (g.gather(-1, g.abs().argmax(-1, keepdim=True)) / -8).half().float()
    return (torch.where(d != 0, g / d, 0.0).round().clamp(-8, 7) * d).reshape(w.shape)


def test_int4_layout_is_the_documented_one():
    """Values an int4 group holds exactly come back exactly, in the layout the module docstring gives:
    byte j of each 64 inputs = code(j) + 8 | (code(j + 32) + 8) << 4, one f16 scale per 32."""
    k = torch.arange(128)
    w = torch.stack([(k % 16 - 8) * 0.5, (7 - k % 16) * 0.25])  # codes -8..7 (scale 0.5), 7..-8 (0.25)
    lin = Int4Linear(w, None)
    assert lin.weight.dtype == torch.uint8 and lin.weight.shape == (2, 64)
    assert lin.scale.dtype == torch.float16 and lin.scale.shape == (2, 4)
    assert torch.equal(lin.scale.float(), torch.tensor([[0.5] * 4, [0.25] * 4]))
    j = torch.arange(64)
    u = (k % 16)[j % 32 + j // 32 * 64]  # code + 8 of input j % 32 of each block of 64 (row 0)
    assert torch.equal(lin.weight[0], (u | u << 4).to(torch.uint8))
    assert torch.equal(lin.weight[1], ((15 - u) | (15 - u) << 4).to(torch.uint8))
    assert torch.equal(lin.dequantized(), w) and torch.equal(lin.dequantized(slice(1, 2)), w[1:])


def test_int4_scales_beat_q4_0():
    """Each group's scale is searched for the least squared error: on Gaussian and heavy-tailed rows the
    error is below llama.cpp's q4_0 rounding (absmax / -8) of the same weights, in sum and group by group
    (but for the scale's f16 rounding: ~1 group in 1000), and every code is one 4-bit step."""
    torch.manual_seed(0)
    for w in (torch.randn(512, 768) * 0.02, torch.distributions.StudentT(3.0).sample((512, 768)) * 0.02):
        lin = Int4Linear(w, torch.randn(512))
        ours = (lin.dequantized() - w).pow(2).view(512, -1, 32).sum(-1)
        theirs = (q4_0(w) - w).pow(2).view(512, -1, 32).sum(-1)
        assert ours.sum() < 0.97 * theirs.sum()
        assert (ours > theirs * (1 + 1e-3)).float().mean() < 1e-3
    x = torch.randn(3, 768)  # a few rows: the decode kernels, with their 16-bit activation codes
    assert rel_err(lin(x), torch.nn.functional.linear(x, lin.dequantized(), lin.bias)) <= ACT_TOL["int4"]


@pytest.mark.slow
def test_packing_refuses_what_the_precision_cannot_hold(wide_model):
    """f16 holds |w| <= 65504 and int4's f16 scales a few times more: beyond that, or NaN, a ValueError says
    so before anything changes (the model stays fp32, its layers as they were)."""
    for precision, big in (("f16", 7e4), ("int4", 1e6), ("f16", float("nan"))):
        model = random_model(WIDE, seed=1)
        with torch.no_grad():
            model.h[1].mlp.c_fc.weight[3, 5] = big
        before = model.h[1].mlp.c_fc
        with pytest.raises(ValueError, match=rf"{precision} holds weights up to .* h\.1\.mlp\.c_fc"):
            quantize(model, precision)
        assert model.runtime.precision == "fp32" and model.h[1].mlp.c_fc is before
        assert isinstance(model.h[0].attn.c_attn, torch.nn.Linear) and model.lm_head is None
        with pytest.raises(ValueError, match="holds weights up to"):
            PACKED[precision](before.weight, None)
    assert quantize(random_model(WIDE, seed=1), "bf16").runtime.precision == "bf16"  # bf16 has fp32's range
    w = torch.full((2, 64), 65504.0)
    assert torch.equal(F16Linear(w, None).dequantized(), w)  # the largest f16 itself is fine


@pytest.mark.parametrize("cls", list(PACKED.values()), ids=list(PACKED))
def test_wide_layers_are_widened_in_slices_with_the_same_bits(monkeypatch, cls):
    """Without the engine's GEMM, PyTorch's path widens a wide packed weight a slice of rows at a time
    (no head-sized fp32 copy per call): the result is what widening it whole gives (up to the matmul's
    summation order), with or without a bias."""
    monkeypatch.setattr(gemm, "runs_linear", lambda precision, in_features: False)
    torch.manual_seed(0)
    for bias in (torch.randn(95), None):
        lin = cls(torch.randn(95, 64), bias)
        x = torch.randn(5, 64)
        whole = torch.nn.functional.linear(x, lin.dequantized(), lin.bias)
        monkeypatch.setattr(packing, "WIDEN_BYTES", 4 * 64 * 10)  # slices of 10 rows: 9 full + 5
        torch.testing.assert_close(lin(x), whole, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(packing, "WIDEN_BYTES", 16 << 20)


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(PACKED))
def test_long_prompts_run_packed_layers_through_the_engine_gemm(monkeypatch, precision):
    """Where the engine runs a precision, PyTorch's path (a prompt longer than the engine takes) sends
    each packed layer to its GEMM instead of widening the weight in torch: same logits as the widening
    path, up to the order of the sums."""
    if not build.available(precision):
        pytest.skip(f"native {precision}: {build.unavailable_reason(precision)}")
    model = packed(precision, engine=False)
    idx = torch.randint(0, WIDE.n_vocab, (1, 64), generator=torch.Generator().manual_seed(3))
    calls = []
    real = gemm.linear
    monkeypatch.setattr(gemm, "linear", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        got = model(idx)
    assert len(calls) == 4 * WIDE.n_layer + 1 and calls[0] == (1, 64, WIDE.n_embd)
    monkeypatch.setattr(gemm, "runs_linear", lambda precision, in_features: False)
    with torch.no_grad():
        want = model(idx)
    assert len(calls) == 4 * WIDE.n_layer + 1 and rel_err(got, want) <= 1e-5


@pytest.mark.slow
def test_bytes_per_token_shrink_with_precision():
    """Each block weight takes BYTES_PER_WEIGHT bytes (int8's row scales on top); the head is stored in
    its own precision (int8 for int4); a decode step reads them all."""
    C, head = WIDE.n_embd, WIDE.n_vocab * WIDE.n_embd
    blocks = 12 * C * C * WIDE.n_layer  # attn 3C x C, proj C x C, fc 4C x C, mlp C x 4C
    sizes = {}
    for p in PRECISIONS:
        model = quantize(random_model(WIDE, seed=1), p)
        stored = sum(
            lin.weight.numel() * lin.weight.element_size()
            + (0 if getattr(lin, "scale", None) is None else lin.scale.numel() * lin.scale.element_size())
            for b in model.h
            for lin in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
        )
        scales = 4 * 9 * C * WIDE.n_layer if p == "int8" else 0  # one fp32 per output row
        assert stored == BYTES_PER_WEIGHT[p] * blocks + scales
        sizes[p] = weight_bytes_per_token(model)
        head_bytes = {"fp32": 4, "bf16": 2, "f16": 2}.get(p, 1)  # int8 for int8 and int4
        assert sizes[p] > stored + head_bytes * head
    assert sizes["fp32"] > 4 * head and sizes["bf16"] == sizes["f16"] < 0.51 * sizes["fp32"]
    assert sizes["int4"] < sizes["int8"] < 0.27 * sizes["fp32"]  # 2 layers: the int8 head is most of both


@pytest.mark.slow
def test_load_model_in_each_precision(tmp_path, wide_model):
    path = tmp_path / "gpt2-wide.safetensors"
    save_model(wide_model, path, name="wide")
    idx = torch.randint(0, WIDE.n_vocab, (1, 16))
    with torch.no_grad():
        want = wide_model(idx)
    for precision in PRECISIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no engine for this precision here
            model = load_model(path, precision=precision)
        assert model.runtime.precision == precision
        assert (model.runtime.engine is not None) == build.available(precision)
        with torch.no_grad():
            assert rel_err(model(idx), want) <= REL_TOL[precision]
        if precision != "fp32":
            with pytest.raises(ValueError, match="already stored"):
                quantize(model, "fp32" if precision == "int8" else "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model(path, precision="int3")


@pytest.mark.slow
def test_no_silent_fallback(tmp_path, wide_model, monkeypatch):
    """Where the engine cannot run a precision: engine=True refuses with the reason; the default warns
    that bf16/int8 on PyTorch's path are not the fast mode."""
    path = tmp_path / "gpt2-wide.safetensors"
    save_model(wide_model, path, name="wide")
    monkeypatch.setattr(build, "unavailable_reason", lambda precision="fp32": "disabled for this test")
    with pytest.raises(RuntimeError, match="disabled for this test"):
        load_model(path, precision="int8", engine=True)
    with pytest.warns(RuntimeWarning, match="int8.*PyTorch's path.*disabled for this test"):
        model = load_model(path, precision="int8")
    assert model.runtime.engine is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp32 without the engine is simply the plain model: no warning
        assert load_model(path).runtime.engine is None
