"""Load test in CI: 16 gradio_client clients × 5 requests against the real app with batched decoding,
every result compared with the same request run alone; a client that leaves frees its batch slot."""

from __future__ import annotations

import time

import psutil
import pytest
import requests
from helpers.app_server import make_weights_dir, serve
from helpers.waiting import wait_until

from app import build_demo
from benchmarks.load import attach_references, make_jobs, run_clients, summarize
from gpt2.serving import ModelRegistry, Server

pytestmark = pytest.mark.slow
MAX_BATCH = 8


@pytest.fixture(scope="module")
def loaded_app(tmp_path_factory, bpe_dir):
    weights = make_weights_dir(tmp_path_factory.mktemp("load") / "weights", bpe_dir)
    registry = ModelRegistry.from_path(weights)
    server = Server(registry, max_batch=MAX_BATCH, max_queue=16)
    demo = build_demo(registry, server=server, queue_size=64)
    with serve(demo) as url:
        model = registry.get(registry.default)
        yield url, server.scheduler(registry.default), model, registry.tokenizer
    server.close()


def test_16_clients_x_5_requests_no_failures_no_cross_talk(loaded_app):
    url, scheduler, model, tokenizer = loaded_app
    jobs = make_jobs(clients=16, requests=5, max_new_tokens=12)
    wall = run_clients(url, jobs, timeout=300)
    flat = [j for c in jobs for j in c]
    attach_references(model, tokenizer, [j for j in flat if j.ok])
    summary = summarize(flat, wall, tokenizer)
    assert summary["failed"] == 0, summary["errors"]
    assert summary["succeeded"] == 80
    assert summary["mismatched"] == 0, summary["mismatched_jobs"]
    assert len({j.text for j in flat}) > 40  # distinct requests gave distinct texts
    assert scheduler.max_rows_seen > 1  # requests really were decoded together
    assert scheduler.max_rows_seen <= MAX_BATCH
    assert wait_until(lambda: scheduler.idle)


def _worker_cpu(scheduler) -> float:
    thread = next(t for t in psutil.Process().threads() if t.id == scheduler._worker.native_id)
    return thread.user_time + thread.system_time


def _assert_asleep(scheduler) -> None:
    before = _worker_cpu(scheduler)
    time.sleep(0.5)
    assert _worker_cpu(scheduler) - before < 0.1


def test_cancelled_job_frees_its_slot_and_the_cpu(loaded_app):
    from gradio_client import Client

    url, scheduler, _, _ = loaded_app
    client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
    job = client.submit("Never ending story", max_new_tokens=1024, seed=1, api_name="/generate")
    assert wait_until(lambda: any(job.outputs()) or job.done())
    assert not job.done()
    assert scheduler.stats()["active"] == 1
    steps = scheduler.steps
    job.cancel()
    assert wait_until(lambda: scheduler.idle)
    assert scheduler.steps - steps < 900  # it left early, not after its 1024 tokens
    _assert_asleep(scheduler)


def test_closed_connection_frees_its_slot(loaded_app):
    """A browser tab closing: the event stream is dropped without any cancel message."""
    url, scheduler, _, _ = loaded_app
    api = url + "gradio_api/call/generate"
    event = requests.post(api, json={"data": ["A closed tab", 1024, 1.0, 40, 1.0, 1.0, 5]}, timeout=10)
    event_id = event.json()["event_id"]
    with requests.get(f"{api}/{event_id}", stream=True, timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith(b"data:") and len(line) > len(b'data: [""]'):
                steps = scheduler.steps
                break  # the first piece of text arrived; now hang up
    assert wait_until(lambda: scheduler.idle)
    assert scheduler.steps - steps < 900  # it left early, not after its 1024 tokens
    _assert_asleep(scheduler)


def test_full_scheduler_answers_busy_through_the_api(tmp_path, bpe_dir):
    from gradio_client import Client

    registry = ModelRegistry.from_path(make_weights_dir(tmp_path / "weights", bpe_dir))
    server = Server(registry, max_batch=2, max_queue=0)
    # Gradio lets two requests in at once; the scheduler has two slots: a request of two samples
    # takes both, and the next one is refused.
    demo = build_demo(registry, server=server)
    try:
        with serve(demo) as url:
            client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
            first = client.submit("Busy", max_new_tokens=1024, seed=1, n=2, api_name="/generate_samples")
            assert wait_until(lambda: any(first.outputs()) or first.done())
            with pytest.raises(Exception, match="busy"):
                client.predict("Refused", max_new_tokens=4, seed=2, api_name="/generate")
            first.cancel()
    finally:
        server.close()


def test_the_app_serves_through_the_scheduler_by_default(monkeypatch):
    from ui import startup as app

    monkeypatch.delenv("GPT2_MAX_BATCH", raising=False)
    assert app.max_batch_from_env() == 8
    monkeypatch.setenv("GPT2_MAX_BATCH", "1")
    assert app.max_batch_from_env() == 1
    monkeypatch.setenv("GPT2_MAX_BATCH", "eight")
    with pytest.raises(ValueError, match="GPT2_MAX_BATCH"):
        app.max_batch_from_env()


def test_flood_is_served_or_told_busy_at_once_then_serves_normally(tmp_path, bpe_dir):
    """24 plain-HTTP clients at the same instant against 2 batch rows and 4 queue places: every one is
    served or gets Gradio's "Queue is full" answer (never a hang or an empty error); afterwards the app
    serves normally, through the Python client too."""
    from gradio_client import Client

    from benchmarks.common import call_api
    from benchmarks.load import flood, generate_inputs

    registry = ModelRegistry.from_path(make_weights_dir(tmp_path / "weights", bpe_dir))
    server = Server(registry, max_batch=2, max_queue=0)
    demo = build_demo(registry, server=server, queue_size=4)
    try:
        with serve(demo) as url:
            summary = flood(url, 24, max_new_tokens=24, timeout=240)
            assert summary["errors"] == [] and summary["timeouts"] == 0, summary
            assert summary["served"] >= 2 and summary["busy"] >= 1, summary
            assert summary["served"] + summary["busy"] == 24
            assert "Queue is full" in summary["busy_message"]
            assert call_api(url, "generate", generate_inputs("After", 4, 1), 120).outcome == "ok"
            client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
            assert client.predict("After", max_new_tokens=4, seed=1, api_name="/generate")
    finally:
        server.close()
