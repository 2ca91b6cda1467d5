"""Continuous batching: many concurrent requests decoded together, one token per sequence per step.

Decoding a single stream reads every weight once per token; decoding B streams in one batched call
reads them once for all B. `BatchScheduler` is the batch-N driver of `gpt2.sequence.Sequence` (the batch-1
driver is `generate_steps`): a background worker lets new requests join between steps (each sample gets a
slot of a shared multi-slot KV cache; a prompt is prefilled once and copied into the slots of its other
samples), lets finished or cancelled ones leave, and advances every running sequence by one token with
one `GPT2.step` call. A sequence's draws come from its own seeded generator in the same order as when run
alone, so a seed gives the same text; with the native engine a row's logits are bit-identical whatever
else is in the batch (on torch's path a batched matmul may round differently in the last bit, which can
flip a token at an exact near-tie).

Consumers get an iterator of `Step`s (a request of n samples: each step's `sample` says whose); closing
it (Gradio closes the generator on Stop or a closed tab) cancels the request, which leaves the batch at
the next step. With nothing to do the worker sleeps on a condition variable, using no CPU.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import torch

from ..engine.threads import single_threaded_torch
from ..model import GPT2, KVCache
from ..tokenizer import Tokenizer
from .params import LIBRARY, REQUEST, SAMPLES, SAMPLES_DEFAULT, Limits, takes
from .request import Request
from .request_stream import Job, RequestStream
from .sampling import Kept, prepare_sampling
from .sequence import Sequence, Step, prompt_ids


class BusyError(RuntimeError):
    """Every batch slot and queue place is taken: the client should try again shortly."""


class BatchScheduler:
    """Decode concurrent requests together on one model (see the module docstring).

    Bounds: at most `max_batch` sequences decode at once (a request of n samples takes n) and requests
    for `max_queue` more wait; beyond that `submit` raises `BusyError`. Requests are checked against
    `limits`. A request whose consumer has `max_unread` steps not yet read is paused, so a slow reader
    cannot pile up logits in memory.
    """

    def __init__(
        self,
        model: GPT2,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 32,
        limits: Limits = LIBRARY,
        max_unread: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or max_unread < 1:
            raise ValueError("max_batch and max_unread must be at least 1, max_queue at least 0")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.limits = limits
        self.max_unread = max_unread
        self.n_ctx = model.config.n_ctx
        self.device = model.wte.weight.device
        self._cache: KVCache | None = None  # allocated at the first request, dropped when idle
        self._free: list[int] = list(range(max_batch))
        self._active: list[Job] = []
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # model steps run for decoding, for tests and monitoring
        self.max_rows_seen = 0  # the largest batch decoded so far
        self._worker = threading.Thread(target=self._run, name="gpt2-batch-scheduler", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- consumer side (any thread)

    @takes(REQUEST, SAMPLES)
    def stream(self, prompt: str, **options: object) -> RequestStream:
        """`Request.create(prompt, **options)` against this scheduler's limits, then `submit`: the same
        arguments as `generate_steps` (plus `n`). ValueError and BusyError are raised right here."""
        return self.submit(Request.create(prompt, limits=self.limits, **options))

    def submit(self, request: Request, *, score_prompt: bool = False) -> RequestStream:
        """Queue a checked request and return its stream of `Step`s (see `RequestStream`)."""
        if request.n > self.max_batch:
            raise ValueError(f"n must be at most {self.max_batch} here (the batch size), got {request.n}")
        job = Job(request, prompt_ids(self.tokenizer, request.prompt), score_prompt)
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting = deque(j for j in self._waiting if not j.cancelled.is_set())
            busy = sum(j.n for j in self._active if not j.cancelled.is_set()) + sum(
                j.n for j in self._waiting
            )
            if busy + job.n > self.max_batch + self.max_queue:
                raise BusyError(
                    f"The server is busy ({busy} sequences running or waiting); please try again in a moment."
                )
            self._waiting.append(job)
            self._cond.notify()
        return RequestStream(job, self._worker, on_read=self._consumed, on_close=self._cancel)

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

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cancel(self, job: Job) -> None:
        job.cancelled.set()
        job.ended.set()
        with self._cond:
            self._cond.notify()

    def _consumed(self, job: Job) -> None:
        # Wake the worker when a paused request's reader catches up.
        if not job.done and job.out.qsize() < self.max_unread:
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
                    joining = self._admit()
                for job in joining:
                    self._guarded([job], self._start, job)
                self._step()
        with self._cond:
            for job in [*self._active, *self._waiting]:
                job.out.put(RuntimeError("the scheduler was closed"))
                job.ended.set()
            self._active.clear()
            self._waiting.clear()

    def _admit(self) -> list[Job]:
        """Move waiting jobs into free slots, first come first served (caller holds the lock)."""
        joining = []
        while self._waiting and len(self._free) >= self._waiting[0].n:
            job = self._waiting.popleft()
            # Lowest free slots first: active rows then tend to form one block of the cache.
            self._free.sort()
            job.slots, self._free = self._free[: job.n], self._free[job.n :]
            self._active.append(job)
            joining.append(job)
        return joining

    def _has_work(self) -> bool:
        if any(j.cancelled.is_set() for j in self._active):
            return True
        if self._waiting and len(self._free) >= self._waiting[0].n:
            return True
        return any(self._runnable(j) for j in self._active)

    def _runnable(self, job: Job) -> bool:
        return bool(job.seqs) and not job.cancelled.is_set() and job.out.qsize() < self.max_unread

    def _reap(self) -> None:
        """Remove cancelled jobs (caller holds the lock); their slots are free for the next ones."""
        for job in [j for j in self._active if j.cancelled.is_set()]:
            self._release(job)
        self._waiting = deque(j for j in self._waiting if not j.cancelled.is_set())

    def _release(self, job: Job) -> None:
        job.done = True
        job.ended.set()
        if job in self._active:
            self._active.remove(job)
            self._free.extend(job.slots)
        if not self._active:  # idle: give the cache's memory back (it grows again with the next texts)
            self._cache = None

    def _guarded(self, jobs: list[Job], fn: Callable[..., None], *args: object) -> None:
        """Run a model call; if it fails, fail only the requests it was for and keep serving."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the affected consumers
            with self._cond:
                for job in jobs:
                    if not job.done:
                        job.out.put(RuntimeError(f"generation failed: {exc}"))
                        self._release(job)

    def _cache_for_slots(self) -> KVCache:
        if self._cache is None:
            self._cache = self.model.new_cache(batch_size=self.max_batch)
        return self._cache

    def _forward(self, tokens: list[int], positions: list[int], slots: list[int], logits_from: int):
        d = self.device
        return self.model.step(
            torch.tensor(tokens, device=d),
            torch.tensor(positions, device=d),
            torch.tensor(slots, device=d),
            self._cache_for_slots(),
            logits_from=logits_from,
        )

    def _start(self, job: Job) -> None:
        """Prefill a joining request's prompt once, copy it into the slots of its other samples, and draw
        every sample's first token from those logits (each with its own seed)."""
        r = job.request
        job.seqs = [
            Sequence(
                r,
                self.tokenizer,
                self.n_ctx,
                self.device,
                sample=i,
                score_prompt=job.score_prompt and i == 0,  # scored once, by sample 0
                ids=job.ids,
            )
            for i in range(job.n)
        ]
        lead = job.seqs[0]
        tokens, start = lead.next_input()
        logits = self._forward(
            tokens, list(range(start, start + len(tokens))), [job.slots[0]] * len(tokens), lead.logits_from
        )
        cache = self._cache_for_slots()
        end = start + len(tokens)
        for slot in job.slots[1:]:
            cache.k[:, slot, :, :end] = cache.k[:, job.slots[0], :, :end]
            cache.v[:, slot, :, :end] = cache.v[:, job.slots[0], :, :end]
        for i, seq in enumerate(job.seqs):
            self._emit(job, i, seq.advance(logits))

    def _step(self) -> None:
        """Advance every runnable sequence by one token: one batched model step for all whose next input
        is one token; a sequence whose context is full re-prefills its window alone."""
        with self._cond:
            jobs = [j for j in self._active if self._runnable(j)]
        rows: list[tuple[Job, int]] = []
        for job in jobs:
            for i, seq in enumerate(job.seqs):
                if seq.done:
                    continue
                tokens, start = seq.next_input()
                if len(tokens) == 1:
                    rows.append((job, i))
                else:  # the window slid: run it again from position 0, for this sequence alone
                    self._guarded([job], self._refill, job, i)
        if rows:
            self._guarded(list({id(j): j for j, _ in rows}.values()), self._decode, rows)

    def _refill(self, job: Job, i: int) -> None:
        seq = job.seqs[i]
        tokens, start = seq.next_input()
        positions = list(range(start, start + len(tokens)))
        logits = self._forward(tokens, positions, [job.slots[i]] * len(tokens), seq.logits_from)
        self._emit(job, i, seq.advance(logits))

    def _decode(self, rows: list[tuple[Job, int]]) -> None:
        """One model step for `rows`, then each row's sampling, each guarded on its own."""
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(rows))
        rows = sorted(rows, key=lambda r: r[0].slots[r[1]])  # slot order: a contiguous block reads as a view
        seqs = [job.seqs[i] for job, i in rows]
        inputs = [seq.next_input() for seq in seqs]
        logits = self._forward(
            [t[0] for t, _ in inputs], [p for _, p in inputs], [job.slots[i] for job, i in rows], 0
        )  # (B, V)
        with single_threaded_torch():  # sampling between steps: see there why not on torch's threads
            # clone: a Step must not keep the whole (B, V) batch tensor alive.
            per_row = [logits[0]] if len(rows) == 1 else [row.clone() for row in logits]
            prepared = prepare_sampling([seq.params for seq in seqs], [seq.seen for seq in seqs], per_row)
            for (job, i), row, kept in zip(rows, per_row, prepared):
                self._guarded([job], self._advance, job, i, row, kept)

    def _advance(self, job: Job, i: int, row: torch.Tensor, kept: Kept | None) -> None:
        self._emit(job, i, job.seqs[i].advance(row, kept))

    def _emit(self, job: Job, i: int, steps: list[Step]) -> None:
        for step in steps:
            step.sample = i
            job.out.put(step)
        if all(seq.done for seq in job.seqs):
            with self._cond:
                self._release(job)


@takes(REQUEST, SAMPLES)
def generate_samples(
    model: GPT2, tokenizer: Tokenizer, prompt: str, *, n: int = SAMPLES_DEFAULT, **options: object
) -> list[str]:
    """`n` continuations of `prompt` decoded side by side (sample i uses seed + i); the texts, in order.
    Takes `generate`'s arguments; without a seed a random one is drawn for sample 0."""
    request = Request.create(prompt, n=n, **options)
    texts = [""] * request.n
    with BatchScheduler(model, tokenizer, max_batch=request.n, max_queue=0) as scheduler:
        for step in scheduler.submit(request):
            texts[step.sample] += step.text
    return texts
