"""Continuous batching: many concurrent requests decoded together, one token per request per step.

Decoding a single stream reads every weight once per token; decoding B streams in one batched call
reads them once for all B. `BatchScheduler` runs a background worker that, between steps, lets new
requests join (each prefilled alone into its own slot of a shared multi-slot KV cache) and finished
or cancelled ones leave, then advances every active request by one token with one batched
`decode_rows` call (`FastGPT2`'s packed-weight version for a CPU model, as `generate_steps` uses).

Each request keeps what makes its output its own: its slot and position, its sampling parameters,
its repetition-penalty mask, its text stream and its seeded generator, drawn from exactly as
`generate_steps` draws (one draw per token, in order), so a seed gives the same text as running
alone. With the native decode engine (see gpt2/fast.py) a row's logits are bit-identical whatever else
is in the batch; on torch's path a batched matmul may round differently from a batch-1 matmul in the
last bit, which can flip a token at an exact near-tie. When a single request is running, the worker
uses the same `decode_one` path as `generate_steps`, so a lone user gets bit-identical results at
unchanged speed.

Consumers get an iterator of the same `Step` objects as `generate_steps`; closing it (Gradio closes
the generator on Stop or a closed tab) cancels the request, which leaves the batch at the next step.
With nothing to do the worker sleeps on a condition variable, using no CPU.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .fast import FastGPT2, runner_for
from .generation import (
    MAX_NEW_TOKENS,
    Step,
    TextStream,
    check_max_new_tokens,
    model_device,
    normalize_stop,
    prompt_ids,
)
from .model import GPT2, KVCache
from .sampling import SamplingParams, make_generator, resolve_seed
from .tokenizer import Tokenizer

# Characters are checked before tokenizing so that a huge paste costs nothing; a BPE token is
# rarely shorter than one character, so this never rejects a prompt the token cap would accept.
CHARS_PER_TOKEN_LIMIT = 16


class BusyError(RuntimeError):
    """Every batch slot and queue place is taken: the client should try again shortly."""


class _SlotCache(KVCache):
    """A one-row view of slot `slot` of a multi-slot cache, for `prefill`/`decode_one` on that row.

    Writes go straight into the shared buffers (no copy). Only the row's own prefix is ever read.
    """

    def __init__(self, parent: KVCache, slot: int) -> None:  # no super().__init__: nothing to allocate
        self.k = parent.k[:, slot : slot + 1]
        self.v = parent.v[:, slot : slot + 1]
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))  # per-layer views, as KVCache has
        self.max_len = parent.max_len
        self.length = 0


@dataclass(eq=False)
class _Request:
    """One request's state, touched only by the worker (except `cancelled`, an Event)."""

    window: list[int]  # the context the model sees, as `_Decoder.window` in generation.py
    params: SamplingParams
    n_new: int
    generator: torch.Generator
    stream: TextStream
    seen: torch.Tensor  # (V,) bool: tokens already in the sequence, for the repetition penalty
    out: queue.Queue = field(default_factory=queue.Queue)  # Step | BaseException, to the consumer
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int | None = None
    length: int = 0  # positions filled in the slot
    produced: int = 0  # tokens sampled so far
    pending: int | None = None  # last sampled token, to be fed to the model at the next step
    done: bool = False


class RequestStream(Iterator[Step]):
    """The consumer side of one request: iterate for `Step`s; `close()`/`cancel()` to stop early.

    Dropping the iterator (garbage collection) also cancels, so an abandoned stream cannot hold a
    batch slot.
    """

    def __init__(self, scheduler: BatchScheduler, request: _Request) -> None:
        self._scheduler = scheduler
        self._request = request
        self._finished = False

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> Step:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._request.out.get(timeout=1.0)
                break
            except queue.Empty:
                # Never hang on a worker that is gone (it fails open requests itself when closed).
                if not self._scheduler._worker.is_alive():
                    self._finished = True
                    raise RuntimeError("the scheduler stopped") from None
        self._scheduler._consumed(self._request)
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.token is None:
            self._finished = True
        return item

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._scheduler._cancel(self._request)

    cancel = close

    def __enter__(self) -> RequestStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort during interpreter shutdown, when the scheduler may already be gone.
        with contextlib.suppress(Exception):
            self.close()


class BatchScheduler:
    """Decode concurrent requests together on one model (see the module docstring).

    Bounds: at most `max_batch` requests decode at once and `max_queue` more wait for a slot;
    beyond that `stream` raises `BusyError`. Each request is capped at `max_new_tokens` new tokens
    and `max_prompt_tokens` prompt tokens (default: the model's context length), with ValueError.
    A request whose consumer has `max_unread` steps not yet read is paused, so a slow reader cannot
    pile up logits in memory.
    """

    def __init__(
        self,
        model: GPT2 | FastGPT2,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 32,
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_prompt_tokens: int | None = None,
        max_unread: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or max_unread < 1:
            raise ValueError("max_batch and max_unread must be at least 1, max_queue at least 0")
        self.model = model
        # Prefill and lone decode steps go through exactly what `generate_steps` runs (the packed fast
        # path for a plain fp32 model), so a request alone in the batch matches it bit for bit.
        self.runner = runner_for(model)
        self._decode_rows = self._batched_decoder()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = model.config.n_ctx if max_prompt_tokens is None else max_prompt_tokens
        self.max_unread = max_unread
        self.n_ctx = model.config.n_ctx
        self.keep = self.n_ctx - self.n_ctx // 4  # as `_Decoder`: re-prefill the last 3/4 when full
        self.device = model_device(model)
        self._cache: KVCache | None = None  # allocated at the first request
        self._views: list[_SlotCache] = []
        self._free: list[int] = list(range(max_batch))
        self._active: list[_Request] = []
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # decode steps run (batched or single), for tests and monitoring
        self.max_rows_seen = 0  # the largest batch decoded so far
        self._worker = threading.Thread(target=self._run, name="gpt2-batch-scheduler", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- consumer side (any thread)

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | str | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> RequestStream:
        """Queue a request (same arguments as `generate_steps`) and return its stream of `Step`s.

        Bad arguments raise ValueError and a full scheduler raises BusyError, both right here,
        before anything is queued.
        """
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        n_new = check_max_new_tokens(max_new_tokens, self.max_new_tokens)
        stops = normalize_stop(stop)
        if isinstance(prompt, str) and len(prompt) > CHARS_PER_TOKEN_LIMIT * self.max_prompt_tokens:
            raise ValueError(f"prompt is too long: {len(prompt)} characters")
        ids = prompt_ids(self.tokenizer, prompt)
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"prompt is {len(ids)} tokens long; at most {self.max_prompt_tokens} are allowed"
            )
        generator = make_generator(resolve_seed(seed), self.device)
        seen = torch.zeros(self.model.config.n_vocab, dtype=torch.bool, device=self.device)
        seen[torch.tensor(ids, device=self.device)] = True
        request = _Request(ids[-self.n_ctx :], params, n_new, generator, TextStream(stops), seen)
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting = deque(r for r in self._waiting if not r.cancelled.is_set())
            busy = sum(not r.cancelled.is_set() for r in self._active) + len(self._waiting)
            if busy >= self.max_batch + self.max_queue:
                raise BusyError(
                    f"The server is busy ({busy} requests running or waiting); please try again in a moment."
                )
            self._waiting.append(request)
            self._cond.notify()
        return RequestStream(self, request)

    def stats(self) -> dict[str, int]:
        """Running and waiting request counts (a snapshot)."""
        with self._cond:
            return {"active": len(self._active), "waiting": len(self._waiting), "steps": self.steps}

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._active and not self._waiting

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker; requests still running or waiting get a RuntimeError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def _cancel(self, request: _Request) -> None:
        request.cancelled.set()
        with self._cond:
            self._cond.notify()

    def _consumed(self, request: _Request) -> None:
        # Wake the worker when a paused request's reader catches up.
        if not request.done and request.out.qsize() < self.max_unread:
            with self._cond:
                self._cond.notify()

    # ----------------------------------------------------------------------- worker (one thread)

    def _run(self) -> None:
        # Grad mode is per thread: the worker never builds an autograd graph.
        with torch.no_grad():
            while True:
                with self._cond:
                    while not self._closed and not self._has_work():
                        self._cond.wait()
                    if self._closed:
                        break
                    self._reap()
                    joining = []
                    while self._waiting and self._free:
                        request = self._waiting.popleft()
                        # Lowest free slot first: active rows then tend to form one contiguous
                        # block of the cache (a batched decode could read it as a view, not a gather).
                        request.slot = min(self._free)
                        self._free.remove(request.slot)
                        self._active.append(request)
                        joining.append(request)
                for request in joining:
                    self._guarded([request], self._start, request)
                self._step()
        with self._cond:
            for request in [*self._active, *self._waiting]:
                request.out.put(RuntimeError("the scheduler was closed"))
            self._active.clear()
            self._waiting.clear()

    def _has_work(self) -> bool:
        if any(r.cancelled.is_set() for r in self._active):
            return True
        if self._waiting and self._free:
            return True
        return any(self._runnable(r) for r in self._active)

    def _runnable(self, request: _Request) -> bool:
        return (
            request.pending is not None
            and not request.cancelled.is_set()
            and request.out.qsize() < self.max_unread
        )

    def _reap(self) -> None:
        """Remove cancelled requests (caller holds the lock); their slots are free for the next one."""
        for request in [r for r in self._active if r.cancelled.is_set()]:
            self._release(request)
        self._waiting = deque(r for r in self._waiting if not r.cancelled.is_set())

    def _release(self, request: _Request) -> None:
        request.done = True
        if request in self._active:
            self._active.remove(request)
            self._free.append(request.slot)

    def _guarded(self, requests: list[_Request], fn: Callable[..., None], *args: object) -> None:
        """Run a model call; if it fails, fail only the requests it was for and keep serving."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the affected consumers
            with self._cond:
                for request in requests:
                    if not request.done:
                        request.out.put(RuntimeError(f"generation failed: {exc}"))
                        self._release(request)

    def _slot_view(self, slot: int) -> _SlotCache:
        if self._cache is None:
            self._cache = self.runner.new_cache(batch_size=self.max_batch)
            self._views = [_SlotCache(self._cache, s) for s in range(self.max_batch)]
        return self._views[slot]

    def _prefill(self, request: _Request) -> torch.Tensor:
        view = self._slot_view(request.slot)
        view.length = 0
        idx = torch.tensor([request.window], device=self.device)  # (1, T)
        logits = self.runner.prefill(idx, view)[0].float()  # (V,)
        request.length = view.length
        return logits

    def _start(self, request: _Request) -> None:
        self._sample(request, self._prefill(request))

    def _step(self) -> None:
        """Feed every runnable request its pending token; one batched decode for all of them."""
        with self._cond:
            rows = [r for r in self._active if self._runnable(r)]
        batch = []
        for request in rows:
            token, request.pending = request.pending, None
            request.window.append(token)
            if request.length >= self.n_ctx:
                # Full context: slide the window, as `_Decoder.next` does, for this row alone.
                request.window = request.window[-self.keep :]
                self._guarded([request], self._start, request)
            else:
                batch.append(request)
        if batch:
            self._guarded(batch, self._decode, batch)

    def _batched_decoder(self) -> Callable[..., torch.Tensor] | None:
        """The batched one-token decode to use: the runner's own if it has one, else `GPT2.decode_rows`
        where its cache layout and dtype match the runner's; None means one row at a time."""
        if hasattr(self.runner, "decode_rows"):
            return self.runner.decode_rows
        probe = self.runner.new_cache(batch_size=1, max_len=1)
        if isinstance(self.model, GPT2) and self.model.wte.weight.dtype == probe.k.dtype:
            return self.model.decode_rows
        return None

    def _decode_alone(self, request: _Request) -> torch.Tensor:
        """The exact `decode_one` call `generate_steps` makes, on this request's slot: logits (V,)."""
        view = self._slot_view(request.slot)
        view.length = request.length
        token = request.window[-1]
        if isinstance(self.runner, FastGPT2):
            return self.runner.decode_one(token, view)[0]
        return self.runner.decode_one(torch.tensor([token], device=self.device), view)[0].float()

    def _decode(self, batch: list[_Request]) -> None:
        """One model step for `batch`, then each row's sampling, each guarded on its own."""
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(batch))
        if len(batch) == 1 or self._decode_rows is None:
            rows = [self._decode_alone(request) for request in batch]
            batch = list(batch)
        else:
            self._slot_view(batch[0].slot)  # make sure the cache exists
            batch = sorted(batch, key=lambda r: r.slot)
            tokens = torch.tensor([r.window[-1] for r in batch], device=self.device)
            positions = torch.tensor([r.length for r in batch], device=self.device)
            slots = torch.tensor([r.slot for r in batch], device=self.device)
            logits = self._decode_rows(tokens, positions, self._cache, slots).float()  # (B, V)
            # clone: a Step must not keep the whole (B, V) batch tensor alive.
            rows = [row.clone() for row in logits]
        for request in batch:
            request.length += 1
        prepared = self._prepare_sampling(batch, rows)
        for request, row, (processed, candidates) in zip(batch, rows, prepared):
            # a bad row fails alone
            self._guarded([request], self._sample, request, row, processed, candidates)

    @staticmethod
    def _prepare_sampling(batch: list[_Request], rows: list[torch.Tensor]) -> list[tuple]:
        """Transform the logits of rows that share sampling settings in one batched call each.

        Only where that is exact to the bit, so a row still gets what it would get alone: penalty,
        temperature, top-k and argmax are elementwise or selections (top-p's softmax/cumsum is left
        per row), and shared candidates only when every row of the group keeps the same number.
        Returns `(processed, candidates)` per row, `(None, None)` where `_sample` does it alone.
        """
        prepared: list[tuple] = [(None, None)] * len(batch)
        groups: dict[SamplingParams, list[int]] = {}
        for i, request in enumerate(batch):
            if request.params.top_p == 1.0:
                groups.setdefault(request.params, []).append(i)
        for params, members in groups.items():
            if len(members) < 2:
                continue
            try:
                logits = torch.stack([rows[i] for i in members])  # (G, V)
                seen = torch.stack([batch[i].seen for i in members])  # (G, V)
                processed, candidates = params.process_with_candidates(logits, seen)
            except Exception:  # leave this group to the per-row path, which fails rows one by one
                continue
            for j, i in enumerate(members):
                row_candidates = None if candidates is None else tuple(c[j : j + 1] for c in candidates)
                prepared[i] = (processed[j], row_candidates)
        return prepared

    def _sample(
        self,
        request: _Request,
        logits: torch.Tensor,
        processed: torch.Tensor | None = None,
        candidates: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """One iteration of `generation._steps`' loop body for this request, same order of draws."""
        params = request.params
        if processed is None:
            processed, candidates = params.process_with_candidates(logits.unsqueeze(0), request.seen)
            processed = processed[0]
        token = int(params.choose(processed.unsqueeze(0), request.generator, candidates)[0])
        request.produced += 1
        if token == self.tokenizer.eot_token:
            return self._finish(request, "eot")
        request.out.put(
            Step(token, request.stream.push(self.tokenizer.token_bytes(token)), logits, processed)
        )
        if request.stream.stopped:
            return self._finish(request, "stop")
        request.seen[token] = True
        if request.produced < request.n_new:
            request.pending = token
        else:
            self._finish(request, "length")

    def _finish(self, request: _Request, reason: str) -> None:
        request.out.put(Step(None, request.stream.finish(), finish_reason=reason))
        with self._cond:
            self._release(request)


class BatchedSteps:
    """A drop-in for `generate_steps` (same call, same `Step`s) that sends every request through a
    `BatchScheduler`, one per model, made on first use.

    At most `max_models` schedulers are kept (each holds its model and a multi-slot KV cache); the
    least recently used idle one is closed when another model is asked for.
    """

    def __init__(self, max_models: int = 2, **scheduler_kwargs: int) -> None:
        self.max_models = max_models
        self.scheduler_kwargs = scheduler_kwargs
        self._schedulers: OrderedDict[int, BatchScheduler] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, model: GPT2, tokenizer: Tokenizer, prompt: str, **kwargs: object) -> RequestStream:
        return self.scheduler_for(model, tokenizer).stream(prompt, **kwargs)

    def scheduler_for(self, model: GPT2, tokenizer: Tokenizer) -> BatchScheduler:
        with self._lock:
            key = id(model)
            scheduler = self._schedulers.get(key)
            if scheduler is None or scheduler.model is not model or scheduler.tokenizer is not tokenizer:
                if scheduler is not None:
                    scheduler.close()
                scheduler = BatchScheduler(model, tokenizer, **self.scheduler_kwargs)
                self._schedulers[key] = scheduler
            self._schedulers.move_to_end(key)
            for old_key, old in list(self._schedulers.items())[:-1]:
                if len(self._schedulers) <= self.max_models:
                    break
                if old.idle:
                    old.close()
                    del self._schedulers[old_key]
            return scheduler

    def close(self) -> None:
        with self._lock:
            for scheduler in self._schedulers.values():
                scheduler.close()
            self._schedulers.clear()
