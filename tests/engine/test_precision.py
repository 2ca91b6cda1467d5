"""Precision is how weights are loaded: bf16/int8 models stay within their stated tolerance of fp32 on both
paths (PyTorch's and the native engine's), store fewer bytes, and say so when they cannot be fast."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.models import WIDE, random_model

import gpt2.engine.precision as packing
from gpt2 import PRECISIONS, load_model, quantize, save_model
from gpt2.engine import attach, build, gemm
from gpt2.engine.precision import Bf16Linear, Int8Linear, weight_bytes_per_token

# max |logits − fp32 logits| / max |fp32 logits| on random 768-wide weights (see docs/engine.md).
REL_TOL = {"fp32": 1e-5, "bf16": 1e-2, "int8": 3e-2}


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


@pytest.mark.parametrize("cls", [Bf16Linear, Int8Linear], ids=["bf16", "int8"])
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


@pytest.mark.parametrize("precision", ["bf16", "int8"])
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


def test_bytes_per_token_shrink_with_precision():
    sizes = {p: weight_bytes_per_token(quantize(random_model(WIDE, seed=1), p)) for p in PRECISIONS}
    head = WIDE.n_vocab * WIDE.n_embd
    assert (
        sizes["fp32"] > 4 * head
        and sizes["bf16"] < 0.51 * sizes["fp32"]
        and sizes["int8"] < 0.27 * sizes["fp32"]
    )


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
