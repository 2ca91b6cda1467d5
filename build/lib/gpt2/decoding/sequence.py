"""One continuation's life, as a state machine both drivers share: `generate_steps` (one sequence, its own
cache) and `BatchScheduler` (many sequences, one multi-slot cache, one model step for all of them).

    prompt window ──step──► logits ──advance──► token ──► text piece ──► … ──► end (eot | stop | length)

A driver asks `next_input()` for the tokens to run (the whole window when it must be prefilled, else the
one token sampled last), runs them through `GPT2.step` at `logits_from`, and hands the logits to
`advance`, which draws the next token with the sequence's own seeded generator and returns the `Step`s
to emit. Everything that makes a continuation what it is — its window, its repetition mask, its text
stream, its generator, the order of its draws — lives here, so a seed gives the same text whichever
driver runs it.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from ..engine.threads import single_threaded_torch
from ..tokenizer import Tokenizer
from .probs import score_positions
from .request import Request
from .sampling import Kept, make_generator


@dataclass
class Step:
    """One generated token, or (with `token` None) the end of the stream.

    `text` is the text this step releases: possibly empty while a UTF-8 character is incomplete or
    while the text might be the start of a stop string. `logits` are the raw model logits `(V,)` the
    token was drawn from and `processed` the logits after penalty/temperature/top-k/top-p.
    The final step has `token=None`, any text still held back, and `finish_reason`:
    "eot" (the model ended the text), "stop" (a stop string appeared) or "length".
    `prompt_scores` (first step only, when the sequence scores its prompt): for each window position
    after the first, the log-probability and rank of the prompt token there, from the same prefill.
    """

    token: int | None
    text: str
    logits: torch.Tensor | None = None
    sampled: Kept | torch.Tensor | None = None  # what the token was drawn from (see `processed`)
    finish_reason: str | None = None
    prompt_scores: tuple[list[float], list[int]] | None = None
    sample: int = 0  # which sample of an n > 1 request this step belongs to

    @property
    def processed(self) -> torch.Tensor | None:
        """The processed logits `(V,)`, -inf outside the kept set; spelled out on demand (most steps are
        never inspected, and sampling keeps only the few dozen kept tokens)."""
        return self.sampled.processed() if isinstance(self.sampled, Kept) else self.sampled


class TextStream:
    """Bytes of tokens in, whole characters out, with stop strings cut off (and never shown).

    Text that could still turn into a stop string, or an incomplete UTF-8 sequence (an emoji spread
    over several tokens), is held back until it is decided.
    """

    def __init__(self, stop: Seq[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""  # decoded, not yet released
        self.stopped = False

    def push(self, data: bytes) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self._pending
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return text[: min(hits)]
        hold = 0 if final else self._stop_prefix_length(text)
        self._pending = text[len(text) - hold :]
        return text[: len(text) - hold]

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt; an empty prompt starts from <|endoftext|> as OpenAI's sampler does."""
    return tokenizer.encode(prompt) or [tokenizer.eot_token]


class Sequence:
    """One continuation of `request` (sample `sample`: seed + sample) — see the module docstring.

    Past the context length GPT-2's absolute positions forbid shifting a cache: when the window is full,
    its last 3/4 is run again from position 0 and decoding continues from there.
    """

    def __init__(
        self,
        request: Request,
        tokenizer: Tokenizer,
        n_ctx: int,
        device: torch.device | str = "cpu",
        *,
        sample: int = 0,
        score_prompt: bool = False,
        ids: list[int] | None = None,
    ) -> None:
        self.request = request
        self.params = request.sampling
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids(tokenizer, request.prompt) if ids is None else ids
        self.seed = request.seed + sample
        self.generator = make_generator(self.seed, device)
        self.n_ctx = n_ctx
        self.keep = n_ctx - n_ctx // 4
        self.window = list(self.prompt_ids[-n_ctx:])  # the context the model sees
        self.filled = 0  # window positions already in the cache
        self.seen = torch.zeros(tokenizer.n_vocab, dtype=torch.bool, device=device)
        self.seen[torch.tensor(self.prompt_ids, device=device)] = True  # for the repetition penalty
        self.stream = TextStream(request.stop)
        self.produced = 0
        self.score_prompt = score_prompt
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def next_input(self) -> tuple[list[int], int]:
        """The tokens to run next and the position of the first: the window (to prefill, at the start and
        after a slide) or the token sampled last."""
        return self.window[self.filled :], self.filled

    @property
    def logits_from(self) -> int:
        """Which of `next_input()`'s tokens need logits: all of a prompt being scored, else the last."""
        n = len(self.window) - self.filled
        return 0 if self.score_prompt and self.produced == 0 else n - 1

    def advance(self, logits: torch.Tensor, kept: Kept | None = None) -> list[Step]:
        """Take the model's logits for `next_input()` (rows from `logits_from`; the last row predicts the
        next token), draw it and return the steps to emit: the token's step, then the final step when the
        sequence ends. `kept` may be given when a driver shortlisted a batch of rows at once."""
        scores = None
        if self.score_prompt and self.produced == 0:
            scores = score_positions(logits[:-1], self.window[1:])
        self.filled = len(self.window)
        params = self.params
        with single_threaded_torch():  # one row: see there why not on torch's threads
            if logits.dim() == 2:
                logits = logits[-1] if logits.shape[0] == 1 else logits[-1].clone()  # let the (T, V) go
            if kept is None:
                kept = params.shortlist(logits.unsqueeze(0), self.seen)[0]
            if kept is not None:
                sampled: Kept | torch.Tensor = kept
                token = params.draw(kept, self.generator)
            else:  # top-p alone, or a tie at the k-th logit: the whole-vocabulary path
                processed = params.process(logits.unsqueeze(0), self.seen)
                sampled = processed[0]
                token = int(params.choose(processed, self.generator)[0])
        self.produced += 1
        if token == self.tokenizer.eot_token:
            return [self._finish("eot", scores)]
        step = Step(token, self.stream.push(self.tokenizer.token_bytes(token)), logits, sampled)
        step.prompt_scores = scores
        if self.stream.stopped:
            return [step, self._finish("stop")]
        if self.produced >= self.request.max_new_tokens:
            return [step, self._finish("length")]
        self.seen[token] = True
        self.window.append(token)
        if len(self.window) > self.n_ctx:  # the context is full: slide, and prefill the kept part again
            self.window = self.window[-self.keep :]
            self.filled = 0
        return [step]

    def _finish(self, reason: str, prompt_scores: tuple | None = None) -> Step:
        self.finish_reason = reason
        return Step(None, self.stream.finish(), finish_reason=reason, prompt_scores=prompt_scores)
