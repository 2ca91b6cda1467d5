"""The fast inference path (gpt2.fast) equals the hand-written model and Hugging Face's, exactly enough."""

from __future__ import annotations

import pytest
import torch
from conftest import WIDE, random_model
from reference import hf_from_ours, hf_logits

from gpt2 import GPT2Config, generate_steps
from gpt2.fast import FastGPT2, runner_for

TOL = 1e-4  # the same bar as tests/test_parity.py


@pytest.fixture(scope="module")
def fast(wide_model):
    return FastGPT2(wide_model, "fp32")


def explicit_logits(model, idx):
    """The hand-written path: explicit masked-softmax attention, our LayerNorm and GELU formulas."""
    model.set_attention_impl("math")
    try:
        with torch.no_grad():
            return model(idx)
    finally:
        model.set_attention_impl("sdpa")


@pytest.mark.parametrize("T", [1, 9, 130])
def test_fast_fp32_equals_explicit_path(wide_model, fast, T):
    idx = torch.randint(0, WIDE.n_vocab, (2, T), generator=torch.Generator().manual_seed(T))
    want = explicit_logits(wide_model, idx)
    got = fast(idx)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL
    assert want.abs().max() > 0.1


def test_fast_fp32_equals_hf(wide_model, fast):
    hf = hf_from_ours(wide_model)
    idx = torch.randint(0, WIDE.n_vocab, (1, 300), generator=torch.Generator().manual_seed(7))
    assert (fast(idx) - hf_logits(hf, idx)).abs().max().item() <= TOL


def test_fast_cached_decode_equals_full_recompute(wide_model, fast):
    """Prefill, a chunk after the prefix (offset mask), then one token at a time, against the plain model."""
    seq = torch.randint(0, WIDE.n_vocab, (2, 22), generator=torch.Generator().manual_seed(3))
    cache = fast.new_cache(batch_size=2)
    with torch.no_grad():
        fast.prefill(seq[:, :8], cache)
        chunk = fast(seq[:, 8:14], cache)  # 6 new tokens after 8 cached ones
        assert (chunk - wide_model(seq[:, :14])[:, 8:]).abs().max().item() <= TOL
        for t in range(14, seq.shape[1]):
            got = fast.decode_one(seq[:, t], cache)
            want = wide_model(seq[:, : t + 1], last_only=True)[:, -1]
            assert (got - want).abs().max().item() <= TOL, f"step {t}"
    assert cache.length == seq.shape[1]


def test_fast_untied_head():
    model = random_model(GPT2Config(n_ctx=64, n_embd=96, n_head=3, n_layer=2, tied_head=False), seed=5)
    idx = torch.randint(0, 50257, (1, 20))
    with torch.no_grad():
        assert (FastGPT2(model)(idx) - model(idx)).abs().max().item() <= TOL


def greedy(runner, prompt, n, int_tokens):
    cache = runner.new_cache()
    with torch.no_grad():
        logits = runner.prefill(prompt, cache)
        out = []
        for _ in range(n):
            token = int(logits[0].argmax())
            out.append(token)
            logits = runner.decode_one(token if int_tokens else torch.tensor([token]), cache)
    return out


def test_fast_greedy_equals_plain_path(wide_model, fast):
    prompt = torch.randint(0, WIDE.n_vocab, (1, 12), generator=torch.Generator().manual_seed(11))
    want = greedy(wide_model, prompt, 52, int_tokens=False)
    assert greedy(fast, prompt, 52, int_tokens=True) == want
    assert len(set(want)) > 1  # not a degenerate repeat of one token


def test_generate_uses_fast_path_and_notices_weight_changes(tokenizer):
    model = random_model(GPT2Config(n_ctx=64, n_embd=64, n_head=4, n_layer=2), seed=9)
    runner = runner_for(model)
    assert isinstance(runner, FastGPT2) and runner_for(model) is runner  # built once
    assert "_fast_runner" not in dict(model.named_modules()) and all(
        "_fast" not in k for k in model.state_dict()
    )
    steps = list(generate_steps(model, tokenizer, "Hello", max_new_tokens=5, temperature=0))
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Hello")]))[0, -1]
        assert (steps[0].logits - logits).abs().max().item() <= TOL
        model.h[0].mlp.c_fc.weight.mul_(2.0)  # in-place change: the packed copy is stale now
    rebuilt = runner_for(model)
    assert rebuilt is not runner
    steps = list(generate_steps(model, tokenizer, "Hello", max_new_tokens=5, temperature=0))
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Hello")]))[0, -1]
    assert (steps[0].logits - logits).abs().max().item() <= TOL


def test_generate_accepts_a_fast_model_in_any_precision(wide_model, tokenizer):
    for precision in ("fp32", "int8"):
        text = "".join(
            s.text
            for s in generate_steps(
                FastGPT2(wide_model, precision), tokenizer, "Hi", max_new_tokens=8, temperature=0
            )
        )
        assert isinstance(text, str)


def test_fast_rejects_bad_input(wide_model, fast):
    with pytest.raises(ValueError, match="precision"):
        FastGPT2(wide_model, "fp8")
    with pytest.raises(TypeError):
        FastGPT2(object())
    with pytest.raises(ValueError, match="idx"):
        fast(torch.zeros(3, dtype=torch.long))
    cache = fast.new_cache(max_len=4)
    fast.prefill(torch.zeros(1, 4, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="full"):
        fast.decode_one(0, cache)
    with pytest.raises(ValueError, match="fit"):
        fast(torch.zeros(1, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="cache"):
        fast(torch.zeros(1, 2, dtype=torch.long), fast.new_cache(batch_size=2))
    with pytest.raises(ValueError, match="cache"):
        fast(
            torch.zeros(1, 2, dtype=torch.long), wide_model.new_cache().__class__(WIDE, dtype=torch.bfloat16)
        )


@pytest.mark.parametrize("slots", [(0, 2, 3), (1, 2, 3)], ids=["gathered", "block-of-slots"])
def test_fast_decode_rows_equals_each_row_alone(wide_model, fast, slots):
    """Continuous batching on the packed weights: rows of different lengths in shared cache slots,
    read by gathering (scattered slots) or through a slice (one block of slots)."""
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, WIDE.n_vocab, (n,), generator=g) for n in (5, 9, 3)]
    shared = fast.new_cache(batch_size=4, max_len=32)
    alone = []
    for slot, seq in zip(slots, seqs):
        single = fast.new_cache(max_len=32)  # the prompt goes into its slot through a one-row cache
        fast.prefill(seq[None, :-1], single)
        shared.k[:, slot : slot + 1] = single.k
        shared.v[:, slot : slot + 1] = single.v
        alone.append(fast.decode_one(int(seq[-1]), single)[0])
    tokens = torch.stack([s[-1] for s in seqs])
    positions = torch.tensor([len(s) - 1 for s in seqs])
    got = fast.decode_rows(tokens, positions, shared, torch.tensor(slots))
    assert got.shape == (3, WIDE.n_vocab)
    for b in range(3):
        assert (got[b] - alone[b]).abs().max().item() <= TOL
    with torch.no_grad():
        want = wide_model.decode_rows(
            tokens, positions, shared_plain(wide_model, seqs, slots), torch.tensor(slots)
        )
    assert (got - want).abs().max().item() <= TOL


def shared_plain(model, seqs, slots):
    cache = model.new_cache(batch_size=4, max_len=32)
    with torch.no_grad():
        for slot, seq in zip(slots, seqs):
            single = model.new_cache(max_len=32)
            model.prefill(seq[None, :-1], single)
            cache.k[:, slot : slot + 1] = single.k
            cache.v[:, slot : slot + 1] = single.v
    return cache
