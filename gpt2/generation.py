"""Streaming generation: prompt text in, text pieces out as tokens arrive.

`generate_steps` is the engine (one `Step` per token, with the logits it was drawn from, for callers
that want to look inside); `generate` yields just the text pieces.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .fast import FastGPT2, runner_for
from .model import GPT2
from .sampling import SamplingParams, as_int, make_generator, resolve_seed
from .tokenizer import Tokenizer

MAX_NEW_TOKENS = 8192
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


@dataclass
class Step:
    """One generated token, or (with `token` None) the end of the stream.

    `text` is the text this step releases: possibly empty while a UTF-8 character is incomplete or
    while the text might be the start of a stop string. `logits` are the raw model logits `(V,)` the
    token was drawn from and `processed` the logits after penalty/temperature/top-k/top-p.
    The final step has `token=None`, any text still held back, and `finish_reason`:
    "eot" (the model ended the text), "stop" (a stop string appeared) or "length".
    """

    token: int | None
    text: str
    logits: torch.Tensor | None = None
    processed: torch.Tensor | None = None
    finish_reason: str | None = None


class TextStream:
    """Bytes of tokens in, whole characters out, with stop strings cut off (and never shown).

    Text that could still turn into a stop string, or an incomplete UTF-8 sequence (an emoji spread
    over several tokens), is held back until it is decided.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
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


def normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    stop = [s for s in stop if s]
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    if any(len(s) > MAX_STOP_LENGTH for s in stop):
        raise ValueError(f"each stop string must be at most {MAX_STOP_LENGTH} characters")
    return stop


def check_max_new_tokens(value: object, limit: int = MAX_NEW_TOKENS) -> int:
    n = as_int("max_new_tokens", value)
    if not 1 <= n <= limit:
        raise ValueError(f"max_new_tokens must be between 1 and {limit}, got {n}")
    return n


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt; an empty prompt starts from <|endoftext|> as OpenAI's sampler does."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt)
    return ids or [tokenizer.eot_token]


class _Decoder:
    """Token loop over a pre-allocated KV cache with a sliding window past the context length.

    GPT-2 has absolute position embeddings, so a full cache cannot simply be shifted: when it is full,
    the last 3/4 of the context is run again from position 0 and decoding continues from there.
    A plain `GPT2` runs through its fast path (`runner_for`: same dtype, weights packed once).
    """

    def __init__(self, model: GPT2 | FastGPT2, context: list[int], n_new: int) -> None:
        self.model = runner_for(model)
        self.fast = isinstance(self.model, FastGPT2)
        self.n_ctx = model.config.n_ctx
        self.keep = self.n_ctx - self.n_ctx // 4
        self.device = model_device(model)
        self.window = list(context[-self.n_ctx :])
        # Only as many slots as this request can fill (prompt + new tokens, at most the context): a
        # full 1024-slot cache is 75 MB to allocate and zero for every request of the 124M model.
        self.cache = self.model.new_cache(max_len=min(self.n_ctx, len(self.window) + n_new))

    @torch.no_grad()  # per call, never across a yield: a generator may resume on another thread
    def first(self) -> torch.Tensor:
        return self._prefill()

    @torch.no_grad()
    def next(self, token: int) -> torch.Tensor:
        self.window.append(token)
        if self.cache.length >= self.cache.max_len:
            self.window = self.window[-self.keep :]
            if self.cache.max_len < self.n_ctx:  # (not reached: sized for the whole request)
                self.cache = self.model.new_cache()
            self.cache.reset()
            return self._prefill()
        if self.fast:
            return self.model.decode_one(token, self.cache)[0]
        idx = torch.tensor([token], device=self.device)
        return self.model.decode_one(idx, self.cache)[0].float()

    def _prefill(self) -> torch.Tensor:
        idx = torch.tensor([self.window], device=self.device)  # (1, T)
        return self.model.prefill(idx, self.cache)[0].float()  # (V,)


def model_device(model: GPT2 | FastGPT2) -> torch.device:
    return model.device if isinstance(model, FastGPT2) else model.wte.weight.device


def generate_steps(
    model: GPT2 | FastGPT2,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | str | None = None,
    stop: str | Sequence[str] | None = None,
) -> Iterator[Step]:
    """Generate from `prompt`, one `Step` per token and a final `Step(token=None)`.

    `model` is a `GPT2` (run through its exact fast path) or a `FastGPT2` in any precision.
    Arguments are checked before anything runs; a bad one raises ValueError with a readable message.
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    n_new = check_max_new_tokens(max_new_tokens)
    stops = normalize_stop(stop)
    generator = make_generator(resolve_seed(seed), model_device(model))
    ids = prompt_ids(tokenizer, prompt)
    return _steps(model, tokenizer, ids, params, n_new, stops, generator)


def _steps(
    model: GPT2 | FastGPT2,
    tokenizer: Tokenizer,
    ids: list[int],
    params: SamplingParams,
    n_new: int,
    stops: list[str],
    generator: torch.Generator,
) -> Iterator[Step]:
    decoder = _Decoder(model, ids, n_new)
    seen = torch.zeros(model.config.n_vocab, dtype=torch.bool, device=decoder.device)
    seen[torch.tensor(ids, device=decoder.device)] = True
    stream = TextStream(stops)
    finish_reason = "length"
    logits = decoder.first()
    for i in range(n_new):
        with torch.no_grad():
            processed, candidates = params.process_with_candidates(logits.unsqueeze(0), seen)
            token = int(params.choose(processed, generator, candidates)[0])
            processed = processed[0]
        if token == tokenizer.eot_token:
            finish_reason = "eot"
            break
        yield Step(token, stream.push(tokenizer.token_bytes(token)), logits, processed)
        if stream.stopped:
            finish_reason = "stop"
            break
        seen[token] = True
        if i + 1 < n_new:
            logits = decoder.next(token)
    yield Step(None, stream.finish(), finish_reason=finish_reason)


def generate(
    model: GPT2 | FastGPT2,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | str | None = None,
    stop: str | Sequence[str] | None = None,
) -> Iterator[str]:
    """Yield the continuation of `prompt` in text pieces as tokens arrive (see `generate_steps`).

    Pieces never split a character; the stream ends at <|endoftext|>, at a stop string (not
    included), or after `max_new_tokens` tokens. The prompt itself is not repeated.
    """
    steps = generate_steps(
        model,
        tokenizer,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=stop,
    )
    return (step.text for step in steps if step.text)
