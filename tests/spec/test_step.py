"""`GPT2.step`, the one row-wise step behind prefill, decode and batched decode, on both of its paths
(the model's own layers, and the native engine where it builds) against the plain forward pass."""

from __future__ import annotations

import pytest
import torch
from helpers.models import WIDE, random_model
from helpers.reference import hf_from_ours, hf_logits

from gpt2 import GPT2Config, generate_steps
from gpt2.engine import attach, build

TOL = 1e-4  # the same bar as tests/spec/test_model.py
PATHS = ["torch", "engine"]


@pytest.fixture(scope="module", params=PATHS)
def model(request):
    m = random_model(WIDE, seed=21)
    if request.param == "engine":
        if not build.available("fp32"):
            pytest.skip(f"native engine: {build.unavailable_reason('fp32')}")
        assert attach(m) is None and m.runtime.engine is not None
    return m


def full_logits(model, seq):
    engine, model.runtime.engine = model.runtime.engine, None
    try:
        with torch.no_grad():
            return model(seq[None])[0]  # (T, V), the plain forward pass
    finally:
        model.runtime.engine = engine


def step(model, cache, tokens, positions, slots, logits_from=0):
    return model.step(torch.tensor(tokens), torch.tensor(positions), torch.tensor(slots), cache, logits_from)


@pytest.mark.parametrize("T", [1, 9, 40])
def test_prefill_then_decode_equals_the_full_forward(model, T):
    seq = torch.randint(0, WIDE.n_vocab, (T + 6,), generator=torch.Generator().manual_seed(T))
    want = full_logits(model, seq)
    cache = model.new_cache(batch_size=3, max_len=64)
    got = step(model, cache, seq[:T].tolist(), list(range(T)), [2] * T)  # a prompt into slot 2
    assert got.shape == (T, WIDE.n_vocab) and (got - want[:T]).abs().max() <= TOL
    for t in range(T, T + 6):
        got = step(model, cache, [int(seq[t])], [t], [2])
        assert (got[0] - want[t]).abs().max() <= TOL, t


def test_mixed_step_chunks_and_rows_of_several_slots(model):
    """One call: a 5-token prompt chunk for slot 0 after 3 cached positions, one token for slot 1 and one
    for slot 3 — each row sees only its own slot's prefix."""
    g = torch.Generator().manual_seed(5)
    seqs = {0: torch.randint(0, 50000, (8,), generator=g), 1: torch.randint(0, 50000, (4,), generator=g)}
    seqs[3] = torch.randint(0, 50000, (7,), generator=g)
    cache = model.new_cache(batch_size=4, max_len=32)
    step(model, cache, seqs[0][:3].tolist(), [0, 1, 2], [0] * 3)
    step(model, cache, seqs[1][:3].tolist(), [0, 1, 2], [1] * 3)
    step(model, cache, seqs[3][:6].tolist(), list(range(6)), [3] * 6)
    tokens = seqs[0][3:].tolist() + [int(seqs[1][3]), int(seqs[3][6])]
    got = step(model, cache, tokens, [3, 4, 5, 6, 7, 3, 6], [0] * 5 + [1, 3], logits_from=4)
    want = torch.stack([full_logits(model, seqs[s])[-1] for s in (0, 1, 3)])
    assert got.shape == (3, WIDE.n_vocab) and (got - want).abs().max() <= TOL


@pytest.mark.slow
def test_step_equals_hugging_face_over_a_long_prompt(model):
    hf = hf_from_ours(model)
    idx = torch.randint(0, WIDE.n_vocab, (1, 300), generator=torch.Generator().manual_seed(7))
    cache = model.new_cache(max_len=300)
    got = step(model, cache, idx[0].tolist(), list(range(300)), [0] * 300)
    assert (got - hf_logits(hf, idx)[0]).abs().max() <= TOL


def test_untied_head_on_both_paths():
    m = random_model(GPT2Config(n_ctx=64, n_embd=128, n_head=4, n_layer=2, tied_head=False), seed=5)
    seq = torch.randint(0, 50257, (12,))
    want = full_logits(m, seq)
    for engine in (False, True) if build.available("fp32") else (False,):
        if engine:
            assert attach(m) is None
        got = step(m, m.new_cache(max_len=12), seq.tolist(), list(range(12)), [0] * 12)
        assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(tokens=[50257]), "token id 50257"),
        (dict(tokens=[-1]), "token id -1 is negative"),
        (dict(positions=[16]), "do not fit the cache"),
        (dict(slots=[2]), "cache slot 2"),
        (dict(tokens=[1, 2]), "same length"),
        (dict(logits_from=2), "logits_from"),
    ],
)
def test_bad_step_arguments_are_refused_before_running(model, bad, message):
    args = dict(tokens=[1], positions=[0], slots=[0], logits_from=0) | bad
    cache = model.new_cache(batch_size=2, max_len=16)
    with pytest.raises(ValueError, match=message):
        step(model, cache, args["tokens"], args["positions"], args["slots"], args["logits_from"])
    with pytest.raises(ValueError, match="1-D integer"):
        model.step(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0]), cache)
    assert torch.isfinite(step(model, cache, [1], [0], [0])).all()  # and it still works


def test_moving_the_model_detaches_the_engine(tokenizer):
    if not build.available("fp32"):
        pytest.skip(build.unavailable_reason("fp32"))
    m = random_model(GPT2Config(n_ctx=64, n_embd=64, n_head=4, n_layer=2), seed=9)
    attach(m)
    before = [s.token for s in generate_steps(m, tokenizer, "Hello", max_new_tokens=5, temperature=0)]
    m.float()  # .to()/.float()/.cuda() may replace the tensors the engine points at
    assert m.runtime.engine is None
    after = [s.token for s in generate_steps(m, tokenizer, "Hello", max_new_tokens=5, temperature=0)]
    assert before == after
