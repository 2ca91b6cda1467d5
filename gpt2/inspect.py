"""Looking inside the model: how sure it was of each token, what else it considered, and perplexity.

For generated tokens everything comes from logits the generator already computed (`Step.logits`, the raw
model, and `Step.processed`, the distribution actually sampled from), so inspecting costs a few
reductions over the vocabulary per token and no extra model call. Scoring a prompt needs one forward over
all its positions (`prompt_probs`).

All results are plain dataclasses of ints, floats and strings, with `to_dict()` for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .fast import FastGPT2
from .generation import model_device
from .model import GPT2
from .tokenizer import Tokenizer

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
def prompt_probs(model: GPT2 | FastGPT2, tokenizer: Tokenizer, ids: Sequence[int]) -> PromptProbs:
    """Score prompt tokens `ids` with one forward pass over all positions (see `PromptProbs`)."""
    ids = list(ids)
    if not ids:
        return PromptProbs([], None, None)
    n_ctx = model.config.n_ctx
    window = ([tokenizer.eot_token] + ids)[-n_ctx:]  # context fed to the model
    n_unscored = len(ids) - (len(window) - 1)  # tokens before the window: no context left to score them
    device = model_device(model)
    logits = model(torch.tensor([window], device=device))[0].float()  # (T, V)
    logp = torch.log_softmax(logits[:-1], dim=-1)  # position i predicts window[i + 1]
    targets = torch.tensor(window[1:], device=device)
    chosen = logp.gather(-1, targets[:, None])  # (T-1, 1)
    ranks = ((logp > chosen).sum(dim=-1) + 1).tolist()
    chosen = chosen[:, 0].tolist()
    tokens = [PromptToken(t, token_text(tokenizer, t), None, None) for t in ids[:n_unscored]]
    tokens += [
        PromptToken(t, token_text(tokenizer, t), math.exp(lp), r)
        for t, lp, r in zip(window[1:], chosen, ranks, strict=True)
    ]
    mean_logprob = sum(chosen) / len(chosen)
    return PromptProbs(tokens, math.exp(-mean_logprob), mean_logprob)


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
