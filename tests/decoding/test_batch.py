"""Continuous batching: concurrent requests give what each gives alone; cancel, bounds, idle CPU."""

from __future__ import annotations

import random
import threading
import time

import psutil
import pytest
import torch
from helpers.models import TINY
from helpers.waiting import wait_until

from gpt2 import Limits, Request, generate_steps
from gpt2.decoding.batch import BatchScheduler, BusyError, generate_samples


def tokens_of(steps):
    return [(s.token, s.text, s.finish_reason) for s in steps]


def alone(model, tokenizer, prompt, **kw):
    return tokens_of(generate_steps(model, tokenizer, prompt, **kw))


@pytest.fixture
def scheduler(tiny_model, tokenizer):
    s = BatchScheduler(tiny_model, tokenizer, max_batch=4, max_queue=8)
    yield s
    s.close()


def mixed_requests(tokenizer, model, n, seed=0):
    """Varied prompts and sampling settings; some cross TINY's 128-token context (sliding window)
    and some end at a stop string taken from their own free-running text."""
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        prompt = rng.choice(["Hello", "", "The quick brown fox " * rng.randint(1, 30), "naïve café 🤗"])
        kw = dict(
            max_new_tokens=rng.choice([1, 7, 30, 110]),
            temperature=rng.choice([0.0, 0.7, 1.0, 1.5]),
            top_k=rng.choice([40, 200]),  # (top_k=0 is the same code path here, and slow on a busy CPU)
            top_p=rng.choice([1.0, 0.9]),
            repetition_penalty=rng.choice([1.0, 1.3]),
            seed=1000 + i,
        )
        if i % 5 == 4:
            free = "".join(s.text for s in generate_steps(model, tokenizer, prompt, **kw))
            if len(free.strip()) > 12:
                kw["stop"] = free[8:11]
        requests.append((prompt, kw))
    return requests


def run_concurrently(scheduler, requests):
    results = [None] * len(requests)

    def client(i):
        prompt, kw = requests[i]
        results[i] = tokens_of(scheduler.stream(prompt, **kw))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


@pytest.mark.slow
def test_concurrent_requests_match_running_alone(tiny_model, tokenizer):
    requests = mixed_requests(tokenizer, tiny_model, 12)
    expected = [alone(tiny_model, tokenizer, p, **kw) for p, kw in requests]
    with BatchScheduler(tiny_model, tokenizer, max_batch=6, max_queue=32) as scheduler:
        got = run_concurrently(scheduler, requests)
    assert scheduler.max_rows_seen > 1, "requests were never decoded together"
    mismatched = [i for i in range(len(requests)) if got[i] != expected[i]]
    assert not mismatched, f"{len(mismatched)} of {len(requests)} differ from running alone: {mismatched}"
    reasons = {r[-1][2] for r in expected}
    assert {"length", "stop"} <= reasons  # the stop-string path was exercised
    assert any(len(r) > TINY.n_ctx for r in expected) or any(
        len(tokenizer.encode(p)) + kw["max_new_tokens"] > TINY.n_ctx for p, kw in requests
    )


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=0.9, top_k=40, repetition_penalty=1.3), dict(temperature=0.0, repetition_penalty=1.1)],
    ids=["top-k", "greedy"],
)
def test_rows_sharing_settings_are_transformed_together_exactly(tiny_model, tokenizer, settings):
    """Requests with equal sampling settings go through one batched logits transform and shared
    candidates; each still gets the text it gets alone, with processed logits equal to alone's."""
    requests = [
        (f"Shared settings, prompt {i}: " * (1 + i % 3), dict(settings, max_new_tokens=40, seed=i))
        for i in range(6)
    ]
    with BatchScheduler(tiny_model, tokenizer, max_batch=6, max_queue=8) as scheduler:
        got = run_concurrently(scheduler, requests)
    assert scheduler.max_rows_seen >= 2
    assert got == [alone(tiny_model, tokenizer, p, **kw) for p, kw in requests]


def test_lone_request_is_bit_identical_including_logits(tiny_model, tokenizer, scheduler):
    kw = dict(max_new_tokens=120, temperature=0.9, top_k=50, repetition_penalty=1.2, seed=7)
    ref = list(generate_steps(tiny_model, tokenizer, "A lone request " * 8, **kw))
    got = list(scheduler.stream("A lone request " * 8, **kw))
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert (a.token, a.text, a.finish_reason) == (b.token, b.text, b.finish_reason)
        if b.logits is not None:
            assert torch.equal(a.logits, b.logits) and torch.equal(a.processed, b.processed)
            assert (
                not a.logits.requires_grad
            )  # the worker runs under no_grad (the fixture's params need grad)


def test_batched_rows_do_not_leak_into_each_other(tiny_model, tokenizer, scheduler):
    """Rows decoded together see only their own cache: logits stay within float rounding of alone."""
    prompts = ["Short", "A much longer prompt that fills more cache positions than the others " * 3, ""]
    kw = dict(max_new_tokens=30, temperature=0.0)
    streams = [scheduler.stream(p, **kw) for p in prompts]
    got = [list(s) for s in streams]
    assert scheduler.max_rows_seen >= 2
    for prompt, steps in zip(prompts, got):
        ref = list(generate_steps(tiny_model, tokenizer, prompt, **kw))
        assert [s.token for s in steps] == [s.token for s in ref]
        for a, b in zip(steps[:-1], ref[:-1]):
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_endoftext_finishes_a_row_and_others_go_on(tiny_model, tokenizer):
    model = type(tiny_model)(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    with torch.no_grad():  # make <|endoftext|> likely: greedy runs end early, sampled ones at random
        model.wte.weight[tokenizer.eot_token] = model.ln_f.bias.sign() * 0.5
    requests = [("The end", dict(max_new_tokens=40, top_k=200, seed=i)) for i in range(6)]
    expected = [alone(model, tokenizer, p, **kw) for p, kw in requests]
    with BatchScheduler(model, tokenizer, max_batch=8) as scheduler:
        got = run_concurrently(scheduler, requests)
    assert got == expected
    assert {r[-1][2] for r in expected} == {"eot", "length"}


def test_close_cancels_and_frees_the_slot_and_the_cpu(tiny_model, tokenizer, scheduler):
    stream = scheduler.stream("Never ending", max_new_tokens=8192, temperature=1.0, seed=1)
    for _ in range(3):
        assert next(stream).token is not None
    stream.close()
    assert wait_until(lambda: scheduler.idle)
    worker = next(t for t in psutil.Process().threads() if t.id == scheduler._worker.native_id)
    before = worker.user_time + worker.system_time
    time.sleep(0.5)
    worker = next(t for t in psutil.Process().threads() if t.id == scheduler._worker.native_id)
    assert worker.user_time + worker.system_time - before < 0.1  # asleep, not spinning
    with pytest.raises(StopIteration):
        next(stream)
    # The slot is reusable and the next request is unaffected.
    assert tokens_of(scheduler.stream("Next", max_new_tokens=5, seed=2)) == alone(
        tiny_model, tokenizer, "Next", max_new_tokens=5, seed=2
    )


def test_dropped_stream_is_cancelled(tiny_model, tokenizer, scheduler):
    stream = scheduler.stream("Abandoned", max_new_tokens=8192, seed=1)
    next(stream)
    del stream  # e.g. Gradio dropping the generator of a closed tab
    assert wait_until(lambda: scheduler.idle)


def test_cancel_while_waiting_in_the_queue(tiny_model, tokenizer):
    with BatchScheduler(tiny_model, tokenizer, max_batch=1, max_queue=2) as scheduler:
        running = scheduler.stream("Running", max_new_tokens=8192, seed=1)
        next(running)
        waiting = scheduler.stream("Waiting", max_new_tokens=5, seed=1)
        waiting.cancel()
        running.cancel()
        assert wait_until(lambda: scheduler.idle)


def test_full_scheduler_says_busy_then_recovers(tiny_model, tokenizer):
    with BatchScheduler(tiny_model, tokenizer, max_batch=1, max_queue=1) as scheduler:
        first = scheduler.stream("one", max_new_tokens=8192, seed=1)
        second = scheduler.stream("two", max_new_tokens=3, seed=2)
        with pytest.raises(BusyError, match="busy"):
            scheduler.stream("three", max_new_tokens=3, seed=3)
        first.close()
        assert tokens_of(second) == alone(tiny_model, tokenizer, "two", max_new_tokens=3, seed=2)
        assert tokens_of(scheduler.stream("three", max_new_tokens=3, seed=3)) == alone(
            tiny_model, tokenizer, "three", max_new_tokens=3, seed=3
        )


def test_bad_requests_fail_before_queueing(tiny_model, tokenizer):
    limits = Limits(max_new_tokens=(1, 100), prompt=(0, 5000))
    with BatchScheduler(tiny_model, tokenizer, max_batch=2, limits=limits) as scheduler:
        with pytest.raises(ValueError, match="max_new_tokens"):
            scheduler.stream("x", max_new_tokens=101)
        with pytest.raises(ValueError, match="too long"):
            scheduler.stream("x" * 100_000)
        with pytest.raises(ValueError, match="temperature"):
            scheduler.stream("x", temperature=-1)
        with pytest.raises(ValueError, match="seed"):
            scheduler.stream("x", seed="abc")
        with pytest.raises(ValueError, match="prompt"):
            scheduler.stream(None)
        with pytest.raises(ValueError, match="n must be between 1 and 4"):
            scheduler.stream("x", n=5)
        with pytest.raises(ValueError, match="n must be at most 2"):
            scheduler.stream("x", n=3)  # more samples than the batch has rows
        assert scheduler.stats()["waiting"] == 0 and scheduler.idle


def test_long_prompt_keeps_its_last_tokens_as_generate_does(tiny_model, tokenizer, scheduler):
    prompt = "word " * 400  # > TINY's 128-token context
    kw = dict(max_new_tokens=5, seed=2, top_k=40)
    assert tokens_of(scheduler.stream(prompt, **kw)) == alone(tiny_model, tokenizer, prompt, **kw)


@pytest.mark.parametrize("n", [2, 4])
def test_samples_equal_single_requests_with_seed_plus_i(tiny_model, tokenizer, scheduler, n):
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.1)
    steps = list(scheduler.submit(Request.create("Once upon a time", n=n, seed=70, **kw)))
    assert scheduler.stats()["active"] == 0
    for i in range(n):
        got = tokens_of(s for s in steps if s.sample == i)
        assert got == alone(tiny_model, tokenizer, "Once upon a time", seed=70 + i, **kw), i
    texts = ["".join(s.text for s in steps if s.sample == i) for i in range(n)]
    assert len(set(texts)) > 1  # different seeds really gave different samples
    assert generate_samples(tiny_model, tokenizer, "Once upon a time", n=n, seed=70, **kw) == texts


def test_samples_take_a_slot_each_and_stop_together(tiny_model, tokenizer):
    with BatchScheduler(tiny_model, tokenizer, max_batch=4, max_queue=0) as scheduler:
        stream = scheduler.stream("x", n=3, max_new_tokens=1000, seed=1)
        next(stream)
        with pytest.raises(BusyError):
            scheduler.stream("y", n=2)  # 3 + 2 sequences > 4 slots, no queue
        other = scheduler.stream("y", n=1, max_new_tokens=3, seed=1)  # the fourth slot
        stream.close()  # Stop ends all three samples at once
        assert wait_until(lambda: scheduler.stats()["active"] <= 1)
        assert tokens_of(other)[-1][2] == "length"
        assert wait_until(lambda: scheduler.idle)


def test_slow_reader_is_paused_not_buffered(tiny_model, tokenizer):
    with BatchScheduler(tiny_model, tokenizer, max_unread=4) as scheduler:
        stream = scheduler.stream("Slow reader", max_new_tokens=60, seed=5)
        assert wait_until(lambda: stream._job.out.qsize() >= 4)
        time.sleep(0.3)
        assert stream._job.out.qsize() <= 5  # at most max_unread steps (+ the final one) wait
        assert tokens_of(stream) == alone(tiny_model, tokenizer, "Slow reader", max_new_tokens=60, seed=5)


def test_closing_the_scheduler_fails_open_requests(tiny_model, tokenizer):
    scheduler = BatchScheduler(tiny_model, tokenizer, max_unread=2)
    stream = scheduler.stream("x", max_new_tokens=8192, seed=1)
    next(stream)
    scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        for _ in stream:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.stream("x")


@pytest.mark.slow
def test_memory_stays_flat_over_200_sequential_requests(tiny_model, tokenizer, scheduler):
    process = psutil.Process()

    def serve(n, offset):
        for i in range(n):
            steps = list(scheduler.stream(f"Request {offset + i}", max_new_tokens=4, seed=i))
            assert steps[-1].token is None

    serve(20, 0)  # warm-up: allocator pools, the multi-slot cache, packed weights
    before = process.memory_info().rss
    serve(180, 20)
    growth = process.memory_info().rss - before
    # Keeping each request's steps (4 tokens × two 50257-float logit rows) would add ~300 MB.
    assert growth < 30 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 180 requests"
    assert scheduler.idle


def test_a_failing_step_fails_its_request_and_the_scheduler_goes_on(tiny_model, tokenizer, scheduler):
    real = scheduler._forward

    def broken(*args):  # a fault injected into the worker (e.g. out of memory mid-step)
        raise RuntimeError("boom")

    scheduler._forward = broken
    stream = scheduler.stream("x", max_new_tokens=5, seed=1)
    with pytest.raises(RuntimeError, match="generation failed: boom"):
        list(stream)
    scheduler._forward = real
    assert wait_until(lambda: scheduler.idle)
    assert tokens_of(scheduler.stream("y", max_new_tokens=5, seed=1)) == alone(
        tiny_model, tokenizer, "y", max_new_tokens=5, seed=1
    )
