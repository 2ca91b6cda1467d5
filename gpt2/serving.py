"""Serving GPT-2 to many clients at once: which models exist, how a client's request is checked, and the
one streaming driver that turns a request into updates for a UI or an API. No Gradio in here (`app.py`
is layout and wiring over this module), so all of it is testable without a web server.

    ModelRegistry   converted models by display name, loaded on first use in the serving precision
    Server          per model a `BatchScheduler` (or one sequence at a time), and `stream(...)`, which
                    yields a `Progress` about every `interval` seconds: the texts so far, live numbers,
                    and with `with_probs` what the model thought of each token and of the prompt
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import hub
from .engine import describe
from .generation import run_request
from .inspect import (
    PromptProbs,
    TokenProbs,
    build_prompt_probs,
    continuation_summary,
    first_token_score,
    token_probs,
)
from .model import GPT2
from .precision import check_precision
from .request import SERVING, Limits, Request
from .scheduler import BatchScheduler
from .sequence import Step, prompt_ids
from .tokenizer import BPE_FILE_SHA256, Tokenizer, load_tokenizer
from .weights import list_models, load_model, read_metadata

CONVERT_COMMAND = "python -m convert --model 124M"
HUB_DEFAULT = "hf://openai-community/gpt2"  # what a Space serves when its repo holds no converted weights
YIELD_INTERVAL = 1 / 15  # seconds between updates: smooth to read, cheap to send
MAX_UPDATES_PER_SECOND = 30  # all streams together (see Server.update_interval)
# The API's defaults, which the UI's controls start from too.
DEFAULTS: dict[str, float] = {
    "max_new_tokens": 100,
    "temperature": 1.0,
    "top_k": 40,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "n": 1,
}


class NoWeightsError(RuntimeError):
    pass


def default_weights(folder: Path) -> str:
    """Where the app's models come from by default: $GPT2_WEIGHTS, else `folder` — except on a Space
    (SPACE_ID set) whose `folder` holds no converted model: then GPT-2 124M from the Hub."""
    if os.environ.get("GPT2_WEIGHTS"):
        return os.environ["GPT2_WEIGHTS"]
    if os.environ.get("SPACE_ID") and not list_models(folder):
        return HUB_DEFAULT
    return str(folder)


class ModelRegistry:
    """Models by display name, loaded on first use and kept (at most `max_loaded` at a time).

    Names are the only handle a request has on a model: a name must be one the registry listed, so no
    request can make the server open a path of its choosing. `sources` maps each name to a weights file
    or to a function that returns the fp32 model (e.g. one fetched from the Hugging Face Hub).
    """

    def __init__(
        self,
        sources: dict[str, Path | Callable[[], GPT2]],
        tokenizer: Tokenizer,
        *,
        directory: Path | None = None,
        device: str | None = None,
        precision: str = "fp32",
        max_loaded: int = 2,
    ) -> None:
        if not sources:
            raise NoWeightsError("no converted models")
        self.sources = dict(sources)
        self.tokenizer = tokenizer
        self.directory = directory  # re-scanned when a request names a model converted after start-up
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = check_precision(precision)
        if precision != "fp32" and not self.device.startswith("cpu"):
            raise ValueError(f"precision {precision!r} is a CPU mode; on {self.device} use fp32")
        self.max_loaded = max_loaded
        self._models: OrderedDict[str, GPT2] = OrderedDict()
        self._lock = threading.Lock()
        self.loaded_hooks: list[Callable[[str, GPT2 | None], None]] = []  # (name, model or None = unloaded)

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], device: str | None = None, precision: str = "fp32"
    ) -> ModelRegistry:
        """Every converted model in a folder, the single model in a weights file, or the model an
        `hf://OWNER/REPO[@REVISION][/FILE]` spec names (fetched through huggingface_hub on first use)."""
        if hub.is_hub_spec(str(path)):
            spec = str(path)
            name = hub.model_name(spec)  # validates the spec: a malformed one is a HubError (ValueError)
            return cls(
                {name: lambda: hub.load_hub_model(spec)}, load_tokenizer(), device=device, precision=precision
            )
        path = Path(path)
        if path.is_file():
            name = read_metadata(path).get("name") or path.stem
            sources, directory, bpe = {name: path.resolve()}, None, path.parent
        else:
            sources, directory, bpe = list_models(path), path, path
        if not sources:
            raise NoWeightsError(
                f"No converted GPT-2 weights found in {path}. Convert OpenAI's checkpoint first:\n\n"
                f"    {CONVERT_COMMAND}\n\n(or point --weights at a converted .safetensors file or folder)"
            )
        has_bpe = all((bpe / name).is_file() for name in BPE_FILE_SHA256)  # the converter puts them there
        tokenizer = load_tokenizer(bpe if has_bpe else None)
        return cls(sources, tokenizer, directory=directory, device=device, precision=precision)

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def default(self) -> str:
        return self.names[0]  # list_models sorts by size: the smallest (fastest) model first

    def is_loaded(self, name: str) -> bool:
        return name in self._models

    def check_name(self, name: object) -> str:
        if name is None or name == "":
            return self.default
        if not isinstance(name, str):
            raise ValueError(f"model must be a model name (a string), got {type(name).__name__}")
        if name not in self.sources and self.directory is not None:
            self.sources = {**self.sources, **list_models(self.directory)}
        if name not in self.sources:
            raise ValueError(f"unknown model {name[:80]!r}; available: {', '.join(self.names)}")
        return name

    @property
    def device_label(self) -> str:
        return self.device if self.precision == "fp32" else f"{self.device}, {self.precision}"

    def get(self, name: str) -> GPT2:
        name = self.check_name(name)
        with self._lock:  # two first requests for one model load it once
            if name not in self._models:
                source = self.sources[name]
                if isinstance(source, Path):
                    model = load_model(source, device=self.device, precision=self.precision)
                else:
                    from .weights import prepare

                    model = prepare(source().to(self.device).eval(), self.precision)
                # The first prompt token is scored after <|endoftext|>: that distribution is the same for
                # every prompt, so compute it now rather than on a request's time.
                first_token_score(model, self.tokenizer, 0)
                self._models[name] = model
                for hook in self.loaded_hooks:
                    hook(name, model)
                while len(self._models) > self.max_loaded:
                    old, _ = self._models.popitem(last=False)
                    for hook in self.loaded_hooks:
                        hook(old, None)
            self._models.move_to_end(name)
            return self._models[name]

    def engine_line(self, name: str | None = None) -> str:
        """Which path decodes a (loaded) model: for the start-up log."""
        return describe(self.get(name or self.default))


def make_request(
    registry: ModelRegistry,
    prompt: object,
    max_new_tokens: object = DEFAULTS["max_new_tokens"],
    temperature: object = DEFAULTS["temperature"],
    top_k: object = DEFAULTS["top_k"],
    top_p: object = DEFAULTS["top_p"],
    repetition_penalty: object = DEFAULTS["repetition_penalty"],
    seed: object = None,
    stop: object = None,
    model: object = None,
    n: object = 1,
    limits: Limits = SERVING,
) -> tuple[Request, str]:
    """Check everything a client sent (the API's parameters, in the API's order); the model's name."""
    request = Request.create(
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=stop,
        n=n,
        limits=limits,
    )
    return request, registry.check_name(model)


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
    model: str
    device: str
    n_prompt: int
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
        registry = self.registry
        tokenizer = registry.tokenizer
        start = time.perf_counter()
        model = registry.get(name)
        ids = prompt_ids(tokenizer, request.prompt)
        n = request.n
        progress = Progress(
            request,
            name,
            registry.device_label,
            n_prompt=len(ids),
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
