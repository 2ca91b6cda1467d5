"""Looking inside the model: how sure it was of each token, what else it considered, and perplexity.

For generated tokens everything comes from logits the generator already computed (`Step.logits`, the raw
model, and `Step.processed`, the distribution actually sampled from), so inspecting costs a few
reductions over the vocabulary per token and no extra model call. A prompt is scored from the logits of
the prefill that generation runs anyway (asked for at every position, `Sequence(score_prompt=True)`):
token i + 1 given tokens 0..i exactly as the model sees them while generating, and the first token under
the model's distribution after <|endoftext|> (how GPT-2 saw the start of every document), which is the
same for every prompt and computed once per model.

All results are plain dataclasses of ints, floats and strings, with `to_dict()` for JSON.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..model import GPT2
from ..tokenizer import Tokenizer

TOP_ALTERNATIVES = 5


@dataclass
class Alternative:
    token: int
    text: str
    prob: float  # under the raw model
    sampled_prob: float  # under the distribution actually sampled from (0 if filtered out)


@dataclass
class TokenProbs:
    """One generated token, seen from the inside.

    `prob` is its probability under the distribution it was drawn from (after repetition penalty,
    temperature, top-k and top-p; 1.0 for greedy), `raw_prob` under the plain model, `rank` its 1-based
    rank among the raw model's choices, `entropy` the raw distribution's entropy in nats, and
    `alternatives` the raw model's most likely tokens at that step (the chosen one included if it is
    among them).
    """

    token: int
    text: str
    prob: float
    raw_prob: float
    logprob: float  # log of raw_prob, computed directly (no underflow)
    rank: int
    entropy: float
    alternatives: list[Alternative] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PromptToken:
    token: int
    text: str
    prob: float | None  # given everything before it; None for a token whose context was cut off
    rank: int | None


@dataclass
class PromptProbs:
    """Each prompt token's probability given what precedes it, and the prompt's perplexity.

    The first token is scored after <|endoftext|>, the token GPT-2 saw at the start of every document, so
    even a one-token prompt has a perplexity. A prompt longer than the context is scored on its last
    `n_ctx` tokens (the part the model sees); earlier tokens get `prob=None`.
    """

    tokens: list[PromptToken]
    perplexity: float | None  # exp(mean negative log-likelihood of the scored tokens)
    mean_logprob: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def token_text(tokenizer: Tokenizer, token: int) -> str:
    """A token's own text; a token holding part of a multi-byte character shows U+FFFD for it."""
    return tokenizer.token_bytes(token).decode("utf-8", errors="replace")


@torch.no_grad()
def token_probs(
    tokenizer: Tokenizer,
    token: int,
    logits: torch.Tensor,
    processed: torch.Tensor,
    top: int = TOP_ALTERNATIVES,
) -> TokenProbs:
    """Inspect one generated token from the raw `logits` `(V,)` and the `processed` logits it came from."""
    raw_logp = torch.log_softmax(logits.float(), dim=-1)
    sampled_p = torch.softmax(processed.float(), dim=-1)  # -inf outside the kept set → exactly 0
    raw_p = raw_logp.exp()
    # 0 * -inf is nan; entropy terms for zero-probability tokens are 0.
    entropy = float(-(raw_p * raw_logp).nan_to_num(nan=0.0).sum())
    rank = int((raw_logp > raw_logp[token]).sum()) + 1
    top_p, top_ids = raw_p.topk(min(top, raw_p.shape[-1]))
    alternatives = [
        Alternative(int(t), token_text(tokenizer, int(t)), float(p), float(sampled_p[t]))
        for p, t in zip(top_p.tolist(), top_ids.tolist(), strict=True)
    ]
    return TokenProbs(
        token=token,
        text=token_text(tokenizer, token),
        prob=float(sampled_p[token]),
        raw_prob=float(raw_p[token]),
        logprob=float(raw_logp[token]),
        rank=rank,
        entropy=entropy,
        alternatives=alternatives,
    )


@torch.no_grad()
def score_positions(logits: torch.Tensor, targets: Sequence[int]) -> tuple[list[float], list[int]]:
    """Log-probability and 1-based rank of `targets[i]` under `logits[i]` (`(T, V)`; T may be 0)."""
    if not len(targets):
        return [], []
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, torch.tensor(list(targets), device=logits.device)[:, None])  # (T, 1)
    ranks = ((logp > chosen).sum(dim=-1) + 1).tolist()
    return chosen[:, 0].tolist(), ranks


_START: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def start_logprobs(model: GPT2, eot_token: int) -> torch.Tensor:
    """log P(first token | <|endoftext|>) `(V,)`: the same for every prompt, so computed once per model
    (and again if its weights or precision change)."""
    w = model.wte.weight
    key = (w.data_ptr(), w._version, model.runtime.precision, eot_token)
    cached = _START.get(model)
    if cached is None or cached[0] != key:
        logits = model(torch.tensor([[eot_token]], device=w.device))[0, 0]
        cached = (key, torch.log_softmax(logits.float(), dim=-1))
        _START[model] = cached
    return cached[1]


def build_prompt_probs(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    n_ctx: int,
    scores: tuple[list[float], list[int]],
    first: tuple[float, int] | None,
) -> PromptProbs:
    """A `PromptProbs` from `score_positions` over the window the model saw (its last `n_ctx` tokens) and
    the first token's (logprob, rank) after <|endoftext|> (None when the window does not start the prompt)."""
    ids = list(ids)
    window = ids[-n_ctx:]
    n_before = len(ids) - len(window)  # tokens before the window: no context left to score them
    logprobs, ranks = list(scores[0]), list(scores[1])
    scored_first = first is not None and n_before == 0
    if scored_first:
        logprobs.insert(0, first[0])
        ranks.insert(0, first[1])
    unscored = ids[: n_before + (0 if scored_first else 1)]
    tokens = [PromptToken(t, token_text(tokenizer, t), None, None) for t in unscored]
    scored_ids = ids[len(unscored) :]
    tokens += [
        PromptToken(t, token_text(tokenizer, t), math.exp(lp), r)
        for t, lp, r in zip(scored_ids, logprobs, ranks, strict=True)
    ]
    if not logprobs:
        return PromptProbs(tokens, None, None)
    mean_logprob = sum(logprobs) / len(logprobs)
    return PromptProbs(tokens, math.exp(-mean_logprob), mean_logprob)


def first_token_score(model: GPT2, tokenizer: Tokenizer, token: int) -> tuple[float, int]:
    logp = start_logprobs(model, tokenizer.eot_token)
    return float(logp[token]), int((logp > logp[token]).sum()) + 1


@torch.no_grad()
def prompt_probs(model: GPT2, tokenizer: Tokenizer, ids: Sequence[int]) -> PromptProbs:
    """Score prompt tokens `ids` (see the module docstring) with one forward pass over the window."""
    ids = list(ids)
    if not ids:
        return PromptProbs([], None, None)
    n_ctx = model.config.n_ctx
    window = ids[-n_ctx:]
    device = model.wte.weight.device
    T = len(window)
    logits = model.step(
        torch.tensor(window, device=device),
        torch.arange(T, device=device),
        torch.zeros(T, dtype=torch.long, device=device),
        model.new_cache(max_len=T),
    )  # (T, V)
    scores = score_positions(logits[:-1], window[1:])
    return build_prompt_probs(tokenizer, ids, n_ctx, scores, first_token_score(model, tokenizer, ids[0]))


def continuation_summary(tokens: Sequence[TokenProbs]) -> dict[str, float | None]:
    """Mean log-probability (raw model) of generated tokens, their perplexity and mean entropy."""
    if not tokens:
        return {"mean_logprob": None, "perplexity": None, "mean_entropy": None}
    logprobs = [t.logprob for t in tokens]
    mean = sum(logprobs) / len(logprobs)
    return {
        "mean_logprob": mean,
        "perplexity": math.exp(-mean),
        "mean_entropy": sum(t.entropy for t in tokens) / len(tokens),
    }
