"""The spec: our GPT-2 equals Hugging Face transformers' GPT2LMHeadModel holding the same weights."""

from __future__ import annotations

import pytest
import torch
from helpers.models import WIDE, random_model
from helpers.reference import hf_from_ours, hf_logits

from gpt2 import GPT2Config

TOL = 1e-4


@pytest.fixture(scope="module")
def pair(wide_model):
    return wide_model, hf_from_ours(wide_model)


@pytest.mark.parametrize("T,seed", [(1, 0), (7, 1), (64, 2), pytest.param(1024, 3, marks=pytest.mark.slow)])
def test_logits_match_reference(pair, T, seed):
    ours, hf = pair
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, WIDE.n_vocab, (2 if T < 1024 else 1, T), generator=g)
    with torch.no_grad():
        got = ours(idx)
    want = hf_logits(hf, idx)
    assert got.shape == want.shape == (idx.shape[0], T, WIDE.n_vocab)
    err = (got - want).abs().max().item()
    assert err <= TOL, f"max |Δ| {err:.3g} > {TOL} for T={T}"
    assert want.abs().max() > 0.1  # the comparison is not between two near-zero tensors


def test_untied_head_matches_reference():
    model = random_model(GPT2Config(n_ctx=64, n_embd=96, n_head=3, n_layer=2, tied_head=False), seed=5)
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    hf = hf_from_ours(model)
    idx = torch.randint(0, 50257, (2, 33))
    with torch.no_grad():
        err = (model(idx) - hf_logits(hf, idx)).abs().max().item()
    assert err <= TOL


def test_written_out_attention_equals_sdpa(wide_model):
    """`attention_weights` (the formula) times the values equals the fused kernel the model runs."""
    import torch.nn.functional as F

    from gpt2.model import attention_weights

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 12, 50, 64, generator=g) for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    weights = attention_weights(q, k)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 12, 50))
    assert (weights @ v - fused).abs().max().item() <= 1e-5
    # a chunk of queries 30..49 over keys 0..49, as a cached step sees them
    assert (attention_weights(q[:, :, 30:], k, first=30) - weights[:, :, 30:]).abs().max().item() <= 1e-6


@pytest.mark.slow
def test_greedy_100_tokens_equal_hf_generate(pair, tokenizer):
    ours, hf = pair
    from gpt2 import generate_steps

    prompt = "Every effort moves you"
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        want = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=100,
            min_new_tokens=100,
            do_sample=False,
            pad_token_id=tokenizer.eot_token,
        )[0, ids.shape[1] :].tolist()
    got = [
        s.token
        for s in generate_steps(ours, tokenizer, prompt, max_new_tokens=100, temperature=0)
        if s.token is not None
    ]
    # HF may produce <|endoftext|> (forced past it by min_new_tokens); we stop there.
    n = len(got)
    assert n > 0 and got == want[:n]
    if n < 100:
        assert want[n] == tokenizer.eot_token


def test_gelu_and_layernorm_are_the_written_out_formulas():
    # model.py calls torch's fused kernels; these are the formulas GPT-2 was trained with, written out.
    import math

    from gpt2.model import LN_EPS, LayerNorm, gelu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 768, generator=g) * 3
    formula = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    torch.testing.assert_close(gelu(x), formula, rtol=1e-6, atol=1e-6)

    ln = LayerNorm(768)
    with torch.no_grad():
        ln.weight.normal_(generator=g)
        ln.bias.normal_(generator=g)
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)  # biased
    expected = (x - mean) / torch.sqrt(var + LN_EPS) * ln.weight + ln.bias
    torch.testing.assert_close(ln(x), expected.detach(), rtol=1e-5, atol=1e-5)
