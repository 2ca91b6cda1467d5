"""Streaming generation: prompt text in, text pieces out as tokens arrive.

`generate_steps` is the batch-1 driver of `gpt2.sequence.Sequence` (one `Step` per token, with the logits
it was drawn from, for callers that want to look inside); `generate` yields just the text pieces. The
batching scheduler (`gpt2.scheduler`) drives the same `Sequence` for many requests at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..model import GPT2
from ..tokenizer import Tokenizer
from .params import REQUEST, takes
from .request import Request
from .sequence import Sequence, Step, TextStream, prompt_ids

__all__ = ["Step", "TextStream", "generate", "generate_steps", "prompt_ids", "run_request"]


def run_request(
    model: GPT2, tokenizer: Tokenizer, request: Request, *, sample: int = 0, score_prompt: bool = False
) -> Iterator[Step]:
    """Decode one sample of a checked `Request` alone, in a cache of its own; `Step`s as they come."""
    device = model.wte.weight.device
    seq = Sequence(request, tokenizer, model.config.n_ctx, device, sample=sample, score_prompt=score_prompt)
    # Only as many positions as this request can fill: a full 1024-position cache is 75 MB to allocate
    # and zero for every request of the 124M model.
    cache = model.new_cache(max_len=min(model.config.n_ctx, len(seq.window) + request.max_new_tokens))
    while not seq.done:
        tokens, start = seq.next_input()
        # no_grad per step, never across a yield: a generator may be resumed on another thread.
        with torch.no_grad():
            logits = model.step(
                torch.tensor(tokens, device=device),
                torch.arange(start, start + len(tokens), device=device),
                torch.zeros(len(tokens), dtype=torch.long, device=device),
                cache,
                logits_from=seq.logits_from,
            )
            steps = seq.advance(logits)
        yield from steps


@takes(REQUEST)
def generate_steps(model: GPT2, tokenizer: Tokenizer, prompt: str, **options: object) -> Iterator[Step]:
    """Generate from `prompt`, one `Step` per token and a final `Step(token=None)`.

    `model` is a `GPT2` in any precision (the native engine runs it where attached, see `gpt2.engine`).
    The options are the declared request parameters (`gpt2.decoding.params`: max_new_tokens, temperature,
    top_k, top_p, repetition_penalty, seed, stop, ...), checked before anything runs; a bad one raises
    ValueError with a readable message.
    """
    return run_request(model, tokenizer, Request.create(prompt, **options))


@takes(REQUEST)
def generate(model: GPT2, tokenizer: Tokenizer, prompt: str, **options: object) -> Iterator[str]:
    """Yield the continuation of `prompt` in text pieces as tokens arrive (see `generate_steps`).

    Pieces never split a character; the stream ends at <|endoftext|>, at a stop string (not
    included), or after `max_new_tokens` tokens. The prompt itself is not repeated.
    """
    steps = generate_steps(model, tokenizer, prompt, **options)
    return (step.text for step in steps if step.text)
