"""The Gradio app served for real on 127.0.0.1 with a converted fixture model, driven through gradio_client
and plain HTTP: streaming, equality with the library, bad input, cancellation, grad mode, queue set-up."""

from __future__ import annotations

import json
import math
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers.app_server import MODEL_NAME, rest_call, serve, shared_weights_dir

import app
import ui
from gpt2 import generate, generate_steps
from gpt2.decoding.params import REQUEST, SERVER
from gpt2.decoding.params import params as declared
from gpt2.decoding.probs import prompt_probs, token_probs
from gpt2.serving import ModelRegistry, make_request, parse_stop_text
from ui import render

PROMPT = "Every effort moves you"


class StepRecorder:
    """Wraps the served model's `step` (every forward pass the server runs goes through it), recording
    when each ran and whether grad mode was on. The real model runs; nothing is mocked."""

    def __init__(self, model) -> None:
        self.calls: list[tuple[float, bool]] = []
        self._step = model.step
        model.step = self

    def __call__(self, *args, **kwargs):
        self.calls.append((time.monotonic(), torch.is_grad_enabled()))
        return self._step(*args, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory, bpe_dir):
    registry = ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    recorder = StepRecorder(registry.get(MODEL_NAME))
    # An update per token (yield_interval 0), so the stream is observable with a fast model.
    built = app.build_app(registry, yield_interval=0.0)
    with serve(built.blocks) as url:
        yield SimpleNamespace(
            url=url, app=built, registry=registry, recorder=recorder, client=Client(url, verbose=False)
        )


@pytest.fixture
def model_calls(server):
    """(time, grad mode on?) for every forward pass the server runs."""
    calls = server.recorder.calls
    calls.clear()
    yield calls


def library_text(server, prompt=PROMPT, **kwargs) -> str:
    model = server.registry.get(MODEL_NAME)
    return "".join(generate(model, server.registry.tokenizer, prompt, **kwargs))


def test_generate_streams_and_equals_library(server):
    args = dict(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=123)
    job = server.client.submit(PROMPT, **args, api_name="/generate")
    outputs = list(job)
    distinct = list(dict.fromkeys(outputs))
    assert len(distinct) >= 3, outputs
    for a, b in zip(distinct, distinct[1:]):
        assert b.startswith(a) and len(b) > len(a)  # each update extends the previous one
    want = library_text(server, **args)
    assert job.outputs()[-1] == outputs[-1] == want and want
    again = server.client.predict(PROMPT, **args, api_name="/generate")
    assert again == want  # the same seed gives the same text
    other = server.client.predict(PROMPT, **{**args, "seed": 124}, api_name="/generate")
    assert other != want


def test_defaults_and_named_parameters(server):
    info = server.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    # UI events are private: only the API's endpoints are listed.
    assert set(info) == {"/generate", "/generate_with_probs", "/generate_samples", "/inspect"}
    params = info["/generate"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names == [p.name for p in declared(REQUEST, SERVER)]  # /generate: every one but n
    assert not params[0]["parameter_has_default"] and all(p["parameter_has_default"] for p in params[1:])
    # Only the prompt given: the documented defaults (top_k 40, 100 tokens) and a random seed.
    out = server.client.predict("Hello", max_new_tokens=3, seed=5, api_name="/generate")
    assert out == library_text(server, "Hello", max_new_tokens=3, top_k=40, seed=5)


def test_stop_string_ends_the_text_before_it(server):
    full = server.client.predict(PROMPT, max_new_tokens=20, seed=9, api_name="/generate")
    words = full.split()
    assert len(words) >= 4
    stop = words[3]
    got = server.client.predict(PROMPT, max_new_tokens=20, seed=9, stop=[stop], api_name="/generate")
    assert got == full[: full.index(stop)]


def test_generate_with_probs_streams_token_data(server):
    args = dict(max_new_tokens=8, temperature=0.8, top_k=20, seed=7)
    job = server.client.submit(PROMPT, **args, api_name="/generate_with_probs")
    updates = list(job)
    assert len(updates) >= 3
    counts = [len(u["tokens"]) for u in updates]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    final = updates[-1]
    assert final["done"] and final["finish_reason"] in ("length", "eot") and final["seed"] == 7
    assert final["text"] == library_text(server, **args, top_p=1.0, repetition_penalty=1.0)
    # Each token's numbers are what gpt2.decoding.probs gives for the library's own steps.
    model, tok = server.registry.get(MODEL_NAME), server.registry.tokenizer
    steps = [s for s in generate_steps(model, tok, PROMPT, **args) if s.token is not None]
    assert [t["token"] for t in final["tokens"]] == [s.token for s in steps]
    assert final["stats"]["new_tokens"] == len(steps)
    assert final["stats"]["prompt_tokens"] == len(tok.encode(PROMPT))
    for got, s in zip(final["tokens"], steps, strict=True):
        want = token_probs(tok, s.token, s.logits, s.processed)
        assert got["prob"] == pytest.approx(want.prob, abs=1e-6)
        assert got["raw_prob"] == pytest.approx(want.raw_prob, abs=1e-6)
        assert got["rank"] == want.rank and len(got["alternatives"]) == 5
    want_prompt = prompt_probs(model, tok, tok.encode(PROMPT))
    assert final["prompt"]["perplexity"] == pytest.approx(want_prompt.perplexity, rel=1e-5)
    assert final["summary"]["mean_logprob"] == pytest.approx(
        sum(t["logprob"] for t in final["tokens"]) / len(final["tokens"]), abs=1e-6
    )


BAD = [
    (dict(max_new_tokens=-1), "max_new_tokens must be between 1 and 1024"),
    (dict(max_new_tokens=10**9), "max_new_tokens must be between 1 and 1024"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    (dict(temperature=-1), "temperature must be between 0 and 2"),
    (dict(top_p=0), "top_p must be between 0.05 and 1"),
    (dict(top_k="40"), "top_k must be a number"),
    (dict(repetition_penalty=True), "repetition_penalty must be a number"),
    (dict(seed="abc"), "seed must be a whole number"),
    (dict(stop=[1, 2]), "stop must be a string or a list of strings"),
    (dict(model="../../etc/passwd"), "unknown model"),
    (dict(model="/tmp/gpt2-fixture.safetensors"), "unknown model"),
    (dict(prompt="x" * 1_000_000), "prompt is too long"),
    (dict(prompt=None), "prompt must be a string"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_values_get_a_clear_error_and_the_server_keeps_serving(server, bad, message):
    kwargs = {"prompt": PROMPT, "max_new_tokens": 3, **bad}
    with pytest.raises(AppError, match=message):
        server.client.predict(**kwargs, api_name="/generate")
    assert server.client.predict(PROMPT, max_new_tokens=2, seed=1, api_name="/generate")


@pytest.mark.parametrize("prompt", ["<|endoftext|>", "Say <|endoftext|> twice", "🙂🎉🚀", ""])
def test_awkward_prompts_give_sensible_results(server, prompt):
    out = server.client.predict(prompt, max_new_tokens=4, seed=3, api_name="/generate_with_probs")
    assert out["text"] == library_text(server, prompt, max_new_tokens=4, top_k=40, seed=3)
    tok = server.registry.tokenizer
    # <|endoftext|> typed by a person is text (several tokens), never the special token.
    assert out["stats"]["prompt_tokens"] == max(1, len(tok.encode(prompt)))
    if "<|endoftext|>" in prompt:
        assert out["stats"]["prompt_tokens"] > 1


def test_plain_http_streaming_and_nan(server):
    body = json.dumps({"data": [PROMPT, 12, 1.0, 40, 1.0, 1.0, 11, None, MODEL_NAME]})
    events = rest_call(server.url, body)
    generating = [d[0] for e, d in events if e == "generating"]
    complete = [d[0] for e, d in events if e == "complete"]
    assert len(set(generating)) >= 3
    assert complete == [library_text(server, max_new_tokens=12, top_k=40, seed=11)]
    # NaN is not JSON, but Python's parser (and so Gradio's) accepts the literal: it must still be refused.
    nan_body = f'{{"data": ["{PROMPT}", 5, NaN, 40, 1.0, 1.0, null, null, "{MODEL_NAME}"]}}'
    events = rest_call(server.url, nan_body)
    assert events[-1][0] == "error" and "temperature must be a finite number" in events[-1][1]["error"]
    assert rest_call(server.url, body)[-1][0] == "complete"


def test_cancel_stops_token_production_within_a_second(server, model_calls):
    job = server.client.submit(PROMPT, max_new_tokens=1024, seed=1, api_name="/generate")
    deadline = time.monotonic() + 60
    while len(model_calls) < 5:
        assert time.monotonic() < deadline, "generation never started"
        time.sleep(0.01)
    cancelled_at = time.monotonic()
    job.cancel()
    time.sleep(1.5)
    late = [t - cancelled_at for t, _ in model_calls if t > cancelled_at + 1.0]
    assert not late, f"{len(late)} tokens produced more than 1 s after cancel"
    assert len(model_calls) < 1024  # it was stopped, it did not just finish
    count = len(model_calls)
    time.sleep(0.3)
    assert len(model_calls) == count
    assert server.client.predict(PROMPT, max_new_tokens=2, seed=1, api_name="/generate")


def test_grad_mode_is_off_in_every_step(server, model_calls):
    # Several updates, so the generator resumes on several of Gradio's worker threads.
    done = threading.Event()
    result = {}

    def call():
        result["out"] = server.client.predict(
            PROMPT, max_new_tokens=24, seed=2, api_name="/generate_with_probs"
        )
        done.set()

    call()
    assert done.is_set() and len(result["out"]["tokens"]) >= 1
    assert len(model_calls) >= 24  # the prefill (which also scores the prompt) + 23 decode steps
    assert not any(grad for _, grad in model_calls)


def test_events_that_run_the_model_share_one_bounded_queue(server):
    model_fns = [
        f
        for f in server.app.blocks.fns.values()
        if f.name in ("generate", "generate_with_probs", "generate_samples", "ui_generate")
    ]
    assert len(model_fns) == 4
    assert {f.concurrency_id for f in model_fns} == {app.CONCURRENCY_ID}
    assert len({f.concurrency_limit for f in model_fns}) == 1
    assert server.app.blocks._queue.max_size == 32
    # ui.quiet_queue: the pinned Gradio has the settings it changes, and they took effect.
    assert server.app.blocks._queue.sleep_when_free == ui.QUEUE_POLL_S
    assert server.app.blocks._queue.progress_update_sleep_when_free == ui.PROGRESS_POLL_S
    assert server.app.blocks._queue.ANAYLTICS_CACHE_FREQUENCY == ui.ANALYTICS_EVERY


def test_stream_generation_batches_updates(server):
    request, name = make_request(server.registry, PROMPT, max_new_tokens=20, temperature=0, seed=1)
    want = library_text(server, max_new_tokens=20, temperature=0)
    every = [p.text for p in server.app.server.stream(request, name)]
    assert len(every) == 21 and every[-1] == want  # one update per token, then the final one
    # A huge interval: the first token (for time to first token) and the final, complete text only.
    sparse_server = app.Server(server.registry, max_batch=server.app.server.max_batch, interval=1e9)
    try:
        sparse = list(sparse_server.stream(request, name))
    finally:
        sparse_server.close()
    assert len(sparse) == 2 and sparse[-1].done and sparse[-1].text == want and sparse[-1].n_new == 20
    assert sparse[-1].ttft is not None and sparse[-1].tokens_per_second > 0


def test_parse_stop_text():
    assert parse_stop_text(r"\n\n, THE END ,") == ["\n\n", "THE END"]
    assert parse_stop_text("") == [] and parse_stop_text(None) == []


def test_no_weights_stops_with_the_three_ways_to_get_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        app.main(["--weights", str(tmp_path)])
    said = " ".join(capsys.readouterr().err.split())  # one paragraph, wrapped for the terminal
    assert exc.value.code == ui.startup.NO_WEIGHTS_STATUS == 2
    assert f"no converted model in {tmp_path}" in said and "python -m convert --model 124M" in said
    assert "--weights hf://openai-community/gpt2" in said and "HF_HUB_OFFLINE" in said


def test_rendering_is_escaped_and_coloured():
    from gpt2.decoding.probs import Alternative, TokenProbs

    t = TokenProbs(1, "<i>&", 0.5, 0.25, math.log(0.25), 2, 3.0, [Alternative(2, "\n", 0.5, 0.5)])
    span = render.token_span(t)
    assert "<i>" not in span and "&lt;i&gt;&amp;" in span and "hsla(" in span
    assert render.prob_color(1.0) != render.prob_color(1e-5)


def test_stopping_a_stream_frees_its_scheduler_slot(server):
    """A shared scheduler frees a request's slot when its stream is closed: stopping must close it."""
    served = server.app.server
    request, name = make_request(server.registry, PROMPT, max_new_tokens=500, seed=1)
    stream = served.stream(request, name)
    assert next(stream).n_new == 1 and next(stream).n_new == 2
    scheduler = served.scheduler(name)
    assert scheduler.stats()["active"] == 1
    stream.close()  # what dropping a cancelled generator does
    deadline = time.monotonic() + 30
    while not scheduler.idle:
        assert time.monotonic() < deadline
        time.sleep(0.01)
