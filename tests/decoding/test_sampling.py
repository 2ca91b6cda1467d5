"""Sampling transforms, seeded draws and argument checks."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from gpt2 import SamplingParams, generate, generate_steps, resolve_seed
from gpt2.decoding.sampling import make_generator


def tokens(model, tokenizer, prompt="Hello there", **kw):
    return [s.token for s in generate_steps(model, tokenizer, prompt, **kw) if s.token is not None]


def test_temperature_zero_and_top_k_one_are_greedy(tiny_model, tokenizer):
    greedy = tokens(tiny_model, tokenizer, max_new_tokens=30, temperature=0)
    assert len(greedy) > 1
    assert tokens(tiny_model, tokenizer, max_new_tokens=30, temperature=0.9, top_k=1, seed=7) == greedy
    assert tokens(tiny_model, tokenizer, max_new_tokens=30, temperature=0, seed=123) == greedy
    # and greedy is the argmax of the raw logits at every step
    for s in generate_steps(tiny_model, tokenizer, "Hello there", max_new_tokens=10, temperature=0):
        if s.token is not None:
            assert s.token == int(s.logits.argmax())


def _kept_set(logits: torch.Tensor, temperature: float, k: int, p: float, min_p: float = 0.0) -> set[int]:
    """The allowed tokens, computed independently with plain Python over sorted probabilities."""
    scaled = (logits / temperature).tolist()
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    if k:
        order = order[:k]
    m = max(scaled[i] for i in order)
    weights = [math.exp(scaled[i] - m) for i in order]
    total = sum(weights)
    kept, acc = [], 0.0
    for i, w in zip(order, weights):
        kept.append(i)
        acc += w / total
        if acc >= p:
            break
    # min-p: of those, the tokens at least min_p times as likely as the most likely one (renormalising
    # over the kept tokens changes no ratio).
    return {i for i in kept if math.exp(scaled[i] - m) >= min_p}


@pytest.mark.parametrize(
    "temperature,k,p,min_p",
    [(1.0, 5, 1.0, 0), (0.7, 0, 0.5, 0), (1.3, 40, 0.9, 0), (1.0, 0, 0.05, 0)]
    + [(1.0, 0, 1.0, 0.05), (0.8, 40, 1.0, 0.1), (1.3, 40, 0.9, 0.2), (1.0, 0, 0.95, 0.5)],
)
def test_draws_stay_inside_top_k_top_p_min_p(temperature, k, p, min_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 500, generator=g) * 3
    params = SamplingParams(temperature, k, p, min_p=min_p)
    allowed = _kept_set(logits[0], temperature, k, p, min_p)
    if min_p:
        assert 1 < len(allowed) < len(_kept_set(logits[0], temperature, k, p))  # it cut, and kept several
    processed = params.process(logits)
    assert set(torch.isfinite(processed[0]).nonzero().flatten().tolist()) == allowed
    gen = make_generator(1)
    draws = {int(params.choose(processed, gen)[0]) for _ in range(400)}
    assert draws <= allowed
    if len(allowed) > 1:
        assert len(draws) > 1  # it really samples


@pytest.mark.parametrize("scale,p", [(4.0, 0.9), (1.0, 0.9), (4.0, 0.3)], ids=["narrow", "wide", "small"])
def test_full_vocab_nucleus_equals_definition(scale, p):
    """Full-size vocabulary: the nucleus found among the top candidates (narrow) or by a full sort
    (wide: more than a thousand tokens needed) is exactly the definition's set; draws stay inside."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 50257, generator=g) * scale
    params = SamplingParams(1.0, 0, p)
    processed = params.process(logits)
    for row in range(2):
        allowed = _kept_set(logits[row], 1.0, 0, p)
        assert set(torch.isfinite(processed[row]).nonzero().flatten().tolist()) == allowed
    gen = make_generator(2)
    for _ in range(50):
        picks = params.choose(processed, gen)
        assert all(bool(torch.isfinite(processed[r, int(t)])) for r, t in enumerate(picks))


def test_min_p_keeps_tokens_at_least_min_p_times_the_top_probability():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.1, 0.049, 0.151]]))  # 1, 0.4, 0.2, 0.098, 0.302 of the top
    for min_p, kept in [(0.0, 5), (0.09, 5), (0.1, 4), (0.25, 3), (0.35, 2), (0.45, 1), (1.0, 1)]:
        processed = SamplingParams(temperature=1.0, min_p=min_p).process(logits)
        assert int(torch.isfinite(processed).sum()) == kept, min_p


def test_min_p_one_is_greedy_and_llama_cpps_default_samples(tiny_model, tokenizer):
    greedy = tokens(tiny_model, tokenizer, max_new_tokens=20, temperature=0)
    assert tokens(tiny_model, tokenizer, max_new_tokens=20, temperature=1.5, min_p=1.0, seed=3) == greedy
    common = dict(max_new_tokens=20, temperature=1.0, min_p=0.05)
    assert tokens(tiny_model, tokenizer, **common, seed=3) == tokens(tiny_model, tokenizer, **common, seed=3)
    assert tokens(tiny_model, tokenizer, **common, seed=3) != tokens(tiny_model, tokenizer, **common, seed=4)


def test_repetition_penalty_matches_ctrl_rule():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = SamplingParams(temperature=1.0, repetition_penalty=2.0).process(logits, seen)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]))


def test_same_seed_same_text_different_seed_different_text(tiny_model, tokenizer):
    kw = dict(max_new_tokens=40, temperature=1.0, top_k=0)
    a = "".join(generate(tiny_model, tokenizer, "Once upon a time", seed=42, **kw))
    b = "".join(generate(tiny_model, tokenizer, "Once upon a time", seed=42, **kw))
    c = "".join(generate(tiny_model, tokenizer, "Once upon a time", seed=43, **kw))
    assert a == b and a != c and len(a) > 0


def test_concurrent_requests_with_same_seed_match_solo(tiny_model, tokenizer):
    kw = dict(max_new_tokens=40, temperature=1.0, top_p=0.95, seed=5)
    solo = "".join(generate(tiny_model, tokenizer, "Concurrency", **kw))
    results: list[str] = [""] * 4

    def run(i: int) -> None:
        # interleave with the global RNG being used elsewhere: it must not matter
        torch.manual_seed(i)
        torch.rand(10)
        results[i] = "".join(generate(tiny_model, tokenizer, "Concurrency", **kw))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [solo] * 4


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_k=-3), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0.5), "repetition_penalty"),
        (dict(min_p=-0.1), "min_p must be between 0 and 1"),
        (dict(min_p=1.5), "min_p must be between 0 and 1"),
        (dict(min_p="0.1"), "min_p must be a number"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=10**9), "max_new_tokens"),
        (dict(max_new_tokens=True), "max_new_tokens"),
        (dict(seed="abc"), "seed"),
        (dict(seed=-1), "seed"),
        (dict(stop=[1, 2]), "stop"),
    ],
)
def test_invalid_arguments_raise_readable_value_error(tiny_model, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, tokenizer, "hi", **kwargs)


def test_resolve_seed():
    assert resolve_seed(12) == 12 and resolve_seed(" 7 ") == 7 and resolve_seed(3.0) == 3
    assert 0 <= resolve_seed(None) < 2**31 and 0 <= resolve_seed("") < 2**31


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.8, top_k=40),
        dict(temperature=1.0, top_k=40, repetition_penalty=1.3),
        dict(temperature=0.9, top_k=40, top_p=0.95),
        dict(temperature=1.0, top_k=5, top_p=0.5),
        dict(temperature=0.0),
        dict(temperature=0.0, repetition_penalty=2.0),
        dict(temperature=1.0, top_k=200, min_p=0.05),
        dict(temperature=0.9, top_k=40, top_p=0.95, min_p=0.2),
        dict(temperature=1.2, top_k=40, repetition_penalty=1.3, min_p=0.5),
        dict(temperature=0.0, min_p=0.3),
    ],
    ids=["top-k", "top-k+penalty", "top-k+top-p", "narrow-top-p", "greedy", "greedy+penalty"]
    + ["top-k+min-p", "top-k+top-p+min-p", "top-k+penalty+min-p", "greedy+min-p"],
)
def test_shortlist_is_the_processed_distribution_and_draws_alike(settings):
    """`shortlist` keeps exactly the tokens and processed logits of `process`, row by row, batched or
    alone, and `draw` picks what `choose` picks from the same generator state."""
    params = SamplingParams(**settings)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 50257, generator=g) * 3
    seen = torch.rand(6, 50257, generator=g) < 0.01
    want = params.process(logits, seen)
    batched = params.shortlist(logits, seen)
    for row in range(6):
        alone = params.shortlist(logits[row : row + 1], seen[row])[0]
        for kept in (batched[row], alone):
            assert torch.equal(kept.processed(), want[row])
            assert torch.equal(kept.ids, kept.ids.sort().values)
        for seed in range(5):
            a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            assert params.draw(batched[row], a) == int(params.choose(want[row : row + 1], b)[0])


def test_shortlist_leaves_ties_and_top_p_alone_to_the_full_path():
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    k = 10
    kth = torch.topk(logits[1], k).values[-1]
    logits[1, logits[1].argmin()] = kth  # an 11th logit equal to the 10th: the kept set is 11 wide
    tied = SamplingParams(temperature=1.0, top_k=k).shortlist(logits)
    assert tied[0] is not None and tied[0].ids.numel() == k and tied[1] is None
    assert SamplingParams(temperature=1.0, top_p=0.9).shortlist(logits) == [None, None]
    assert SamplingParams(temperature=1.0, min_p=0.1).shortlist(logits) == [None, None]  # min-p alone too
