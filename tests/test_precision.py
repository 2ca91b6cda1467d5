"""Precision modes stay within their stated tolerance of the fp32 model; bf16 is used only where native."""

from __future__ import annotations

import pytest
import torch
from conftest import WIDE

import gpt2.fast as fast_mod
from gpt2.fast import PRECISIONS, FastGPT2, PackedLinear, bf16_supported, resolve_precision

# max |logits − fp32 logits| / max |fp32 logits|. Measured on random 768-wide weights: fp32 ~1e-6,
# bf16 ~7e-3 (2 layers) / 9e-3 (12 layers), int8 ~2e-2 / 3e-2. See README.md, "Speed".
REL_TOL = {"fp32": 1e-5, "bf16": 2e-2, "int8": 6e-2}

needs_bf16 = pytest.mark.skipif(
    not bf16_supported(), reason="CPU without native bf16: modes fall back to fp32"
)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_logits_within_tolerance_of_fp32(wide_model, precision):
    if precision != "fp32" and not bf16_supported():
        pytest.skip("no native bf16")
    runner = FastGPT2(wide_model, precision)
    idx = torch.randint(0, WIDE.n_vocab, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = wide_model(idx)
        got = runner(idx)
        assert rel_err(got, want) <= REL_TOL[precision]
        # and through the cache, one token at a time
        cache = runner.new_cache(batch_size=2)
        runner.prefill(idx[:, :40], cache)
        for t in range(40, 48):
            step = runner.decode_one(idx[:, t], cache)
            assert rel_err(step, want[:, t]) <= REL_TOL[precision], f"step {t}"
    if precision != "fp32":  # the narrower modes really are narrower (the test can tell them apart)
        assert rel_err(got, want) > 1e-5


@needs_bf16
def test_int8_weights_per_channel_round_trip():
    torch.manual_seed(0)
    w = torch.randn(300, 768) * torch.logspace(-2, 0, 300)[:, None]  # rows of very different scales
    b = torch.randn(300)
    lin = PackedLinear(w, b, "int8")
    assert lin.weight.dtype == torch.int8 and lin.scale.shape == (300,)
    deq = lin.weight.float() * lin.scale.float()[:, None]
    # Per-row scales: each row's error is at most half its own step (plus bf16 rounding of the scale).
    assert (
        (deq - w).abs().amax(dim=1) <= 0.51 * w.abs().amax(dim=1) / 127 + 5e-3 * w.abs().amax(dim=1)
    ).all()
    x = torch.randn(3, 768)
    assert rel_err(lin(x).float(), torch.nn.functional.linear(x, w, b)) <= 2e-2
    assert lin.nbytes() == 300 * 768 + 2 * 300 + 2 * 300  # int8 weights, bf16 scales and bias


@needs_bf16
def test_bytes_per_token_shrink_with_precision(wide_model):
    sizes = {p: FastGPT2(wide_model, p).weight_bytes_per_token() for p in PRECISIONS}
    head = WIDE.n_vocab * WIDE.n_embd
    assert (
        sizes["fp32"] > 4 * head
        and sizes["bf16"] < 0.51 * sizes["fp32"]
        and sizes["int8"] < 0.27 * sizes["fp32"]
    )


def test_bf16_falls_back_to_fp32_with_warning_where_unsupported(wide_model, monkeypatch):
    monkeypatch.setattr(fast_mod, "bf16_supported", lambda: False)
    for precision in ("bf16", "int8"):
        with pytest.warns(RuntimeWarning, match="bf16"):
            assert resolve_precision(precision) == "fp32"
    with pytest.warns(RuntimeWarning):
        runner = FastGPT2(wide_model, "bf16")
    assert runner.precision == "fp32" and runner.new_cache().k.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float16")


def test_load_model_for_inference(tmp_path, wide_model):
    from gpt2 import save_model
    from gpt2.fast import load_model_for_inference

    path = tmp_path / "gpt2-wide.safetensors"
    save_model(wide_model, path, name="wide")
    idx = torch.randint(0, WIDE.n_vocab, (1, 16))
    with torch.no_grad():
        want = wide_model(idx)
    for precision in ("fp32", "int8") if bf16_supported() else ("fp32",):
        runner = load_model_for_inference(path, precision)
        assert isinstance(runner, FastGPT2) and runner.precision == precision
        assert rel_err(runner(idx), want) <= REL_TOL[precision]
    with pytest.raises(ValueError, match="precision"):
        load_model_for_inference(path, "int4")
