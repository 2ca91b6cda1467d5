"""Serving GPT-2 to many clients at once: which models exist, how a client's request is checked, and the
one streaming driver that turns a request into updates for a UI or an API. No Gradio in here (`app.py`
is layout and wiring over this module), so all of it is testable without a web server.

    ModelRegistry   models by name, loaded on first use (in the background, within the memory there is)
    Server          per model a `BatchScheduler` (or one sequence at a time), and `stream(...)`, which
                    yields a `Progress` about every `interval` seconds: the texts so far, live numbers,
                    and with `with_probs` what the model thought of each token and of the prompt
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..decoding.batch import BatchScheduler
from ..decoding.generate import run_request
from ..decoding.params import API_DEFAULTS, SERVING, Limits, takes
from ..decoding.probs import (
    PromptProbs,
    TokenProbs,
    build_prompt_probs,
    continuation_summary,
    first_token_score,
    token_probs,
)
from ..decoding.request import Request
from ..decoding.sequence import Step, prompt_ids
from ..model import GPT2
from .registry import ModelRegistry

YIELD_INTERVAL = 1 / 15  # seconds between updates: smooth to read, cheap to send
MAX_UPDATES_PER_SECOND = 30  # all streams together (see Server.update_interval)
DEFAULTS = API_DEFAULTS  # the API's defaults, which the page's controls start from too


@takes(api=True)
def make_request(
    registry: ModelRegistry, *, limits: Limits = SERVING, **options: object
) -> tuple[Request, str]:
    """Check everything a client sent (the declared parameters, in the API's order, with the API's
    defaults) against `limits`; the request and the model's name."""
    model = options.pop("model")
    return Request.create(**options, limits=limits), registry.check_name(model)


def parse_stop_text(text: str | None) -> list[str]:
    """A one-line stop box: comma-separated, with \\n and \\t written as escapes (e.g. `\\n\\n, THE END`)."""
    if not text:
        return []
    parts = [p.strip().replace("\\n", "\n").replace("\\t", "\t") for p in text.split(",")]
    return [p for p in parts if p]


@dataclass
class Progress:
    """What a client sees at an update: each sample's text so far and live numbers."""

    request: Request
    model: str  # the name clients send
    device: str  # what it runs on
    n_prompt: int
    label: str = ""  # the model as people read it, with its precision: "GPT-2 XL · 1558M · int4"
    texts: list[str] = field(default_factory=list)
    n_new: int = 0  # tokens generated, all samples together
    elapsed: float = 0.0
    ttft: float | None = None  # seconds from the request to the first token
    finish_reasons: list[str | None] = field(default_factory=list)
    tokens: list[list[TokenProbs]] = field(default_factory=list)  # with_probs only, per sample
    prompt: PromptProbs | None = None  # with_probs only

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0]

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.finish_reasons)

    @property
    def tokens_per_second(self) -> float | None:
        return self.n_new / self.elapsed if self.n_new and self.elapsed > 0 else None

    def stats(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.n_prompt,
            "new_tokens": self.n_new,
            "seconds": round(self.elapsed, 4),
            "tokens_per_second": self.tokens_per_second,
            "time_to_first_token": self.ttft,
        }

    def payload(self, sample: int = 0) -> dict[str, Any]:
        """The JSON /generate_with_probs streams for one sample (documented in README.md, "Using the API")."""
        tokens = self.tokens[sample] if self.tokens else []
        return {
            "text": self.texts[sample],
            "done": self.done,
            "finish_reason": self.finish_reasons[sample],
            "seed": self.request.seed + sample,
            "model": self.model,
            "stats": self.stats(),
            "prompt": self.prompt.to_dict() if self.prompt is not None else None,
            "tokens": [t.to_dict() for t in tokens],
            "summary": continuation_summary(tokens),
        }


class Server:
    """Runs requests on a registry's models: through one `BatchScheduler` per loaded model when
    `max_batch` > 1 (concurrent requests decoded together), else one sequence at a time per call."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_batch: int = 8,
        max_queue: int | None = None,
        interval: float = YIELD_INTERVAL,
    ) -> None:
        self.registry = registry
        self.max_batch = max_batch
        self.max_queue = max_batch if max_queue is None else max_queue
        self.interval = interval
        self.max_updates_per_second = MAX_UPDATES_PER_SECOND
        self._schedulers: dict[str, BatchScheduler] = {}
        self._lock = threading.Lock()
        self._streaming = 0  # streams open now (all models)
        registry.loaded_hooks.append(self._model_changed)
        registry.budget.slots = max_batch  # each model's KV budget: a full batch of texts

    def update_interval(self) -> float:
        """Seconds between one stream's updates: `interval`, longer when many streams are open, so the
        server sends at most `max_updates_per_second` in all. Each update is Gradio and client work on the
        same cores that decode; with 8 streams at 15/s that work took a third of the batched speed."""
        if self.interval <= 0:  # an update per token (tests, local tools)
            return 0.0
        return max(self.interval, self._streaming / self.max_updates_per_second)

    @property
    def batching(self) -> bool:
        return self.max_batch > 1

    def _model_changed(self, name: str, model: GPT2 | None) -> None:
        with self._lock:
            old = self._schedulers.pop(name, None)
        if old is not None:
            old.close()

    def scheduler(self, name: str) -> BatchScheduler:
        model = self.registry.get(name)
        with self._lock:
            scheduler = self._schedulers.get(name)
            if scheduler is None or scheduler.model is not model:
                scheduler = BatchScheduler(
                    model, self.registry.tokenizer, max_batch=self.max_batch, max_queue=self.max_queue
                )
                self._schedulers[name] = scheduler
            return scheduler

    def steps(self, request: Request, name: str, *, score_prompt: bool = False) -> Iterator[Step]:
        """The request's `Step`s from the right driver (each step's `sample` says whose)."""
        if self.batching:
            return self.scheduler(name).submit(request, score_prompt=score_prompt)
        model = self.registry.get(name)
        samples = [
            run_request(
                model, self.registry.tokenizer, request, sample=i, score_prompt=score_prompt and i == 0
            )
            for i in range(request.n)
        ]
        return _round_robin(samples)

    def stream(self, request: Request, name: str, *, with_probs: bool = False) -> Iterator[Progress]:
        """Run one request, yielding a `Progress` about every `interval` seconds; the last one is complete.

        The same `Progress` object is updated and re-yielded (callers render it before asking for more).
        With `with_probs`, each token is inspected from the logits its step already carries, and the prompt
        is scored from the prefill's own logits (one forward pass for both).
        """
        # Kept loaded (never unloaded to make room for another) until the stream ends; a model still
        # loading is waited for, and the clock starts when it is ready.
        with self.registry.using(name) as model:
            yield from self._stream(model, request, name, with_probs)

    def _stream(self, model: GPT2, request: Request, name: str, with_probs: bool) -> Iterator[Progress]:
        registry = self.registry
        tokenizer = registry.tokenizer
        start = time.perf_counter()
        ids = prompt_ids(tokenizer, request.prompt)
        n = request.n
        progress = Progress(
            request,
            name,
            registry.device,
            n_prompt=len(ids),
            label=registry.label(name),
            texts=[""] * n,
            finish_reasons=[None] * n,
            tokens=[[] for _ in range(n)] if with_probs else [],
        )
        pieces: list[list[str]] = [[] for _ in range(n)]
        steps = self.steps(request, name, score_prompt=with_probs)
        last_yield = -math.inf
        next_due = [-math.inf]  # when the next update is due (read by _paced between batches)
        with self._lock:
            self._streaming += 1
        try:
            for step in _paced(steps, next_due):
                now = time.perf_counter()
                i = step.sample
                pieces[i].append(step.text)
                if step.token is None:
                    progress.finish_reasons[i] = step.finish_reason or "length"
                else:
                    progress.n_new += 1
                    if progress.ttft is None:
                        progress.ttft = now - start
                    if with_probs:
                        info = token_probs(tokenizer, step.token, step.logits, step.processed)
                        progress.tokens[i].append(info)
                if step.prompt_scores is not None:
                    first = first_token_score(model, tokenizer, ids[0])
                    n_ctx = model.config.n_ctx
                    progress.prompt = build_prompt_probs(tokenizer, ids, n_ctx, step.prompt_scores, first)
                progress.elapsed = now - start
                interval = self.update_interval()
                if progress.done or now - last_yield >= interval:
                    progress.texts = ["".join(p) for p in pieces]
                    last_yield = now
                    next_due[0] = now + interval
                    yield progress
                    if progress.done:
                        return
            if not progress.done:  # a driver that ended without final steps
                progress.finish_reasons = [r or "length" for r in progress.finish_reasons]
                progress.texts = ["".join(p) for p in pieces]
                yield progress
        finally:
            with self._lock:
                self._streaming -= 1
            # Stopped early (Stop, job.cancel(), a closed tab): tell the driver at once, so the scheduler
            # frees this request's slots now rather than when the garbage collector gets to it.
            close = getattr(steps, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        with self._lock:
            schedulers, self._schedulers = list(self._schedulers.values()), {}
        for scheduler in schedulers:
            scheduler.close()


def _paced(steps: Iterator[Step], due: list[float]) -> Iterator[Step]:
    """The steps of a scheduler's stream, taken in batches: after an update the consumer sleeps until the
    next one is `due` and then takes everything that accumulated, instead of waking for every token —
    on a small CPU each wake-up takes a core from the decoding threads. (A driver that runs in this
    thread, `run_request`, is simply iterated.)"""
    drain = getattr(steps, "drain", None)
    if drain is None:
        yield from steps
        return
    while True:
        batch = drain(due[0])
        if not batch:
            return
        yield from batch


def _round_robin(iterators: list[Iterator[Step]]) -> Iterator[Step]:
    """Interleave samples decoded one at a time (no batching), one step of each in turn."""
    live = list(enumerate(iterators))
    try:
        while live:
            for i, it in list(live):
                step = next(it, None)
                if step is None:
                    live.remove((i, it))
                    continue
                step.sample = i
                yield step
    finally:
        for _, it in live:
            close = getattr(it, "close", None)
            if close is not None:
                close()
