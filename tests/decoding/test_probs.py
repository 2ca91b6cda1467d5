"""gpt2.decoding.probs: per-token probabilities and perplexity, checked against Hugging Face's GPT-2.

The reference side never uses our sampling code: the penalty/temperature/top-k/top-p transform is written
out again here, directly from its definition, and applied to Hugging Face's logits.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.models import TINY, random_model
from helpers.reference import hf_from_ours, hf_logits

from gpt2 import generate_steps
from gpt2.decoding.probs import continuation_summary, prompt_probs, token_probs

TOL = 1e-4
PROMPT = "Every effort moves you"


@pytest.fixture(scope="module")
def pair(wide_model):
    return wide_model, hf_from_ours(wide_model)


def reference_sampled_probs(logits, seen, temperature, top_k, top_p, penalty):
    """The sampling distribution from its definition (CTRL penalty, temperature, top-k, nucleus)."""
    x = logits.double().clone()
    for t in seen:  # a token's logit is penalised once, however often it occurred
        x[t] = x[t] / penalty if x[t] > 0 else x[t] * penalty
    if temperature == 0:
        p = torch.zeros_like(x)
        p[x.argmax()] = 1.0
        return p
    x = x / temperature
    p = torch.softmax(x, dim=-1)
    sorted_p, order = torch.sort(p, descending=True)
    n_keep = top_k if top_k else len(p)
    if top_p < 1.0:  # the smallest prefix (of the top-k, renormalised) whose mass reaches top_p
        kept = sorted_p[:n_keep] / sorted_p[:n_keep].sum()
        n_keep = min(
            n_keep, int(torch.searchsorted(kept.cumsum(0), torch.tensor(top_p, dtype=kept.dtype))) + 1
        )
    mask = torch.zeros_like(p, dtype=torch.bool)
    mask[order[:n_keep]] = True
    p = torch.where(mask, p, torch.zeros_like(p))
    return p / p.sum()


@pytest.mark.parametrize(
    "temperature,top_k,top_p,penalty,seed",
    [(1.0, 0, 1.0, 1.0, 0), (0.7, 50, 0.9, 1.3, 1), (1.3, 0, 0.6, 1.0, 2), (0.0, 0, 1.0, 1.2, 3)],
)
def test_token_probs_equal_reference_softmax(pair, tokenizer, temperature, top_k, top_p, penalty, seed):
    ours, hf = pair
    steps = [
        s
        for s in generate_steps(
            ours,
            tokenizer,
            PROMPT,
            max_new_tokens=12,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=penalty,
            seed=seed,
        )
        if s.token is not None
    ]
    assert len(steps) >= 6
    infos = [token_probs(tokenizer, s.token, s.logits, s.processed) for s in steps]
    ids = tokenizer.encode(PROMPT)
    generated = [s.token for s in steps]
    ref = hf_logits(hf, torch.tensor([ids + generated]))[0]  # (T, V)
    seen = set(ids)
    for i, (tok, info) in enumerate(zip(generated, infos, strict=True)):
        logits = ref[len(ids) - 1 + i]  # predicts generated token i
        raw = torch.softmax(logits.double(), dim=-1)
        sampled = reference_sampled_probs(logits, seen, temperature, top_k, top_p, penalty)
        assert info.token == tok
        assert abs(info.raw_prob - raw[tok].item()) <= TOL
        assert abs(info.prob - sampled[tok].item()) <= TOL
        assert abs(info.logprob - math.log(raw[tok].item())) <= 1e-3
        # Our logits and HF's agree to ~1e-6, so among the tens of thousands of near-equal tail
        # probabilities a token's rank is only defined up to ties within that tolerance.
        eps = 1e-5 * raw[tok].item()
        assert int((raw > raw[tok] + eps).sum()) + 1 <= info.rank <= int((raw > raw[tok] - eps).sum()) + 1
        entropy = -(raw * raw.log()).sum().item()
        assert abs(info.entropy - entropy) <= 1e-3
        top = raw.topk(5)
        assert [a.token for a in info.alternatives] == top.indices.tolist()
        for a, p in zip(info.alternatives, top.values.tolist(), strict=True):
            assert abs(a.prob - p) <= TOL
            assert abs(a.sampled_prob - sampled[a.token].item()) <= TOL
        seen.add(tok)
    # The test can fail: sampling actually changed the distribution for the non-trivial settings.
    if (temperature, top_k, top_p, penalty) != (1.0, 0, 1.0, 1.0):
        assert any(abs(i.prob / i.raw_prob - 1) > 0.05 for i in infos)
    if temperature == 0:
        assert all(i.prob == 1.0 for i in infos)


def test_prompt_perplexity_equals_exp_mean_nll(pair, tokenizer):
    ours, hf = pair
    text = "The quick brown fox jumps over the lazy dog. It was not amused, and said so at length."
    ids = tokenizer.encode(text)
    got = prompt_probs(ours, tokenizer, ids)
    # Independently, by Hugging Face and torch's cross-entropy: the first token after <|endoftext|> alone,
    # every later one given the prompt as generation sees it (no <|endoftext|> in front).
    first = hf_logits(hf, torch.tensor([[tokenizer.eot_token]]))[0, -1:].double()
    rest = hf_logits(hf, torch.tensor([ids]))[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(torch.cat([first, rest]), torch.tensor(ids), reduction="none")
    assert [t.token for t in got.tokens] == ids
    assert got.perplexity == pytest.approx(math.exp(nll.mean().item()), rel=1e-4)
    assert got.mean_logprob == pytest.approx(-nll.mean().item(), abs=1e-4)
    for t, n in zip(got.tokens, nll.tolist(), strict=True):
        assert abs(t.prob - math.exp(-n)) <= TOL
    assert got.perplexity > 1.0


def test_prompt_longer_than_context_is_scored_on_its_window(tokenizer):
    model = random_model(TINY, seed=7)  # n_ctx 128
    hf = hf_from_ours(model)
    ids = torch.randint(0, 50000, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    got = prompt_probs(model, tokenizer, ids)
    window = ids[-TINY.n_ctx :]
    scored = [t for t in got.tokens if t.prob is not None]
    assert len(got.tokens) == 300 and len(scored) == TINY.n_ctx - 1
    logits = hf_logits(hf, torch.tensor([window]))[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="mean").item()
    assert got.perplexity == pytest.approx(math.exp(nll), rel=1e-4)


def test_continuation_summary(pair, tokenizer):
    ours, _ = pair
    steps = [
        s for s in generate_steps(ours, tokenizer, PROMPT, max_new_tokens=8, seed=4) if s.token is not None
    ]
    infos = [token_probs(tokenizer, s.token, s.logits, s.processed) for s in steps]
    s = continuation_summary(infos)
    mean = sum(math.log(i.raw_prob) for i in infos) / len(infos)
    assert s["mean_logprob"] == pytest.approx(mean, abs=1e-4)
    assert s["perplexity"] == pytest.approx(math.exp(-mean), rel=1e-4)
    assert s["mean_entropy"] == pytest.approx(sum(i.entropy for i in infos) / len(infos))
    assert continuation_summary([])["perplexity"] is None


def test_token_text_of_partial_utf8(tokenizer):
    # "🙂" is several byte-level tokens; each alone is not valid UTF-8 and shows U+FFFD, never raises.
    ids = tokenizer.encode("🙂")
    assert len(ids) > 1
    logits = torch.zeros(50257)
    info = token_probs(tokenizer, ids[0], logits, logits)
    assert "\ufffd" in info.text
    assert info.prob == pytest.approx(1 / 50257) and info.rank == 1
