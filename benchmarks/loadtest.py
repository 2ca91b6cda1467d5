"""Load test: many concurrent `gradio_client` clients against the app, on this machine only.

    python -m benchmarks.loadtest --weights weights/                  # 16 clients × 5 requests
    python -m benchmarks.loadtest --weights weights/ --clients 8 --requests 2 --max-new-tokens 64
    python -m benchmarks.loadtest --weights weights/ --sequential 500  # RSS over 500 requests in a row
    python -m benchmarks.loadtest --weights weights/ --flood 64        # 64 clients arriving at once
    python -m benchmarks.loadtest --url http://127.0.0.1:7860/ ...     # an app already running here

It starts `app.py` on 127.0.0.1 (a free port) with the given converted model, drives the `/generate`
endpoint from N client threads (each its own `gradio_client.Client`, each request its own prompt and
seed), and reports: successes, p50/p95 time to first token, tokens/s per stream and in aggregate, and
the server's peak RSS. `--verify` (on by default) runs every request again alone with `gpt2.generate`
on the same weights and counts results that differ (cross-talk between requests would show here).
With `--disconnect K`, K extra clients cancel mid-stream; the report then says how much CPU the server
used in the second after the last request ended (a cancelled request must not keep decoding).
`--flood N` sends N plain-HTTP requests at the same instant: each must be served or told at once that the
server is busy (never hang, never an empty error), and the app must serve normally afterwards.

Bounded: every request has a deadline (`--timeout`), counts are capped, and only loopback URLs are
accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psutil

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_CLIENTS = 64
MAX_REQUESTS = 1000
PROMPTS = [
    "Every effort moves you",
    "The quick brown fox",
    "In a shocking finding, scientists discovered",
    "def fibonacci(n):",
    "Once upon a time",
    "The meaning of life is",
    "Breaking news:",
    "My favourite recipe starts with",
    "",
    "naïve café 🤗 emoji",
]


@dataclass
class Job:
    """One request: what it sends, and (filled in) what came back and when."""

    client: int
    index: int
    prompt: str
    seed: int
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 40
    cancel_after_first: bool = False
    ok: bool = False
    error: str = ""
    text: str = ""
    ttft: float | None = None
    seconds: float = 0.0
    n_tokens: int = 0
    updates: int = 0
    reference: str | None = None  # the text the same request gives alone (with --verify)

    def kwargs(self) -> dict:
        return dict(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k, seed=self.seed
        )


def make_jobs(clients: int, requests: int, max_new_tokens: int, first_client: int = 0) -> list[list[Job]]:
    """Different prompts and seeds for every request, so mixed-up results cannot look right."""
    return [
        [
            Job(c, r, PROMPTS[(c * requests + r) % len(PROMPTS)], 1000 * c + r, max_new_tokens)
            for r in range(requests)
        ]
        for c in range(first_client, first_client + clients)
    ]


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load-test {url!r}: only 127.0.0.1/localhost")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(weights: str, port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env or {})}
    env.update(
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        NO_PROXY="localhost,127.0.0.1",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    cmd = [sys.executable, str(ROOT / "app.py"), "--weights", weights]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if requests.get(url + "gradio_api/info", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


class RssSampler:
    """Peak resident memory of a process and its children, polled in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_job(client, job: Job, deadline: float, api_name: str = "/generate") -> Job:
    """Submit one request and follow its stream (polling the client's outputs every 10 ms)."""
    start = time.perf_counter()
    try:
        handle = client.submit(job.prompt, **job.kwargs(), api_name=api_name)
        seen = 0
        while not handle.done():
            outputs = handle.outputs()
            if len(outputs) > seen:
                seen = len(outputs)
                if job.ttft is None and any(outputs):
                    job.ttft = time.perf_counter() - start
                    if job.cancel_after_first:
                        handle.cancel()
                        job.ok, job.updates = True, seen
                        job.seconds = time.perf_counter() - start
                        return job
            if time.monotonic() > deadline:
                handle.cancel()
                raise TimeoutError("request deadline passed")
            time.sleep(0.01)
        job.text = handle.result(timeout=max(1.0, deadline - time.monotonic()))
        job.updates = max(seen, len(handle.outputs()))
        if job.ttft is None and job.text:
            job.ttft = time.perf_counter() - start
        job.ok = isinstance(job.text, str)
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none is fatal
        job.ok, job.error = False, f"{type(exc).__name__}: {exc}"[:300]
    job.seconds = time.perf_counter() - start
    return job


def run_clients(
    url: str, jobs: list[list[Job]], timeout: float, on_done: Callable[[Job], None] | None = None
) -> float:
    """Each inner list is one client's requests, sent one after another; clients run concurrently.
    Returns the wall time."""
    from gradio_client import Client

    check_loopback(url)
    deadline = time.monotonic() + timeout

    def client_thread(client_jobs: list[Job]) -> None:
        try:
            client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        except Exception as exc:  # noqa: BLE001
            for job in client_jobs:
                job.error = f"client failed to connect: {exc}"[:300]
            return
        for job in client_jobs:
            run_job(client, job, deadline)
            if on_done is not None:
                on_done(job)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_thread, args=(j,), daemon=True) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    return time.perf_counter() - start


def http_generate(url: str, data: list, timeout: float) -> tuple[str, str, float]:
    """One /generate call over Gradio's plain REST API: (outcome, detail, seconds), outcome one of
    "ok", "busy" (a full queue or scheduler, said so), "error" (with its message) or "timeout"."""
    import requests

    start = time.perf_counter()
    try:
        r = requests.post(f"{url}gradio_api/call/generate", json={"data": data}, timeout=timeout)
        if r.status_code != 200:
            outcome = "busy" if r.status_code == 503 and "full" in r.text.lower() else "error"
            return outcome, f"HTTP {r.status_code}: {r.text[:200]}", time.perf_counter() - start
        event_id, event = r.json()["event_id"], None
        with requests.get(
            f"{url}gradio_api/call/generate/{event_id}", stream=True, timeout=timeout
        ) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line[5:])
                    if event == "complete":
                        return "ok", payload[0], time.perf_counter() - start
                    message = str((payload or {}).get("error"))
                    outcome = "busy" if "busy" in message.lower() else "error"
                    return outcome, message[:200], time.perf_counter() - start
        return "error", "the event stream ended without a result", time.perf_counter() - start
    except requests.Timeout:
        return "timeout", f"no answer within {timeout:.0f} s", time.perf_counter() - start
    except requests.RequestException as exc:
        return "error", f"{type(exc).__name__}: {exc}"[:200], time.perf_counter() - start


def flood(url: str, n: int, max_new_tokens: int, timeout: float = 300.0) -> dict:
    """`n` plain-HTTP clients, released at the same instant, one request each."""
    check_loopback(url)
    results: list = [None] * n
    gate = threading.Barrier(n)

    def client(i: int) -> None:
        gate.wait()
        data = [PROMPTS[i % len(PROMPTS)], max_new_tokens, 1.0, 40, 1.0, 1.0, i, None, None]
        results[i] = http_generate(url, data, timeout)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    results = [r or ("timeout", "client thread did not finish", timeout) for r in results]
    busy = [r for r in results if r[0] == "busy"]
    return {
        "clients": n,
        "served": sum(r[0] == "ok" for r in results),
        "busy": len(busy),
        "errors": [r[1] for r in results if r[0] == "error"][:5],
        "timeouts": sum(r[0] == "timeout" for r in results),
        "busy_answer_p95_s": percentile([r[2] for r in busy], 95),
        "busy_message": busy[0][1] if busy else None,
        "served_p95_s": percentile([r[2] for r in results if r[0] == "ok"], 95),
    }


def load_reference(weights: str, model_name: str | None = None):
    """The app's model (its default: the first `list_models` gives) and tokenizer, loaded here."""
    from gpt2 import list_models, load_model, load_tokenizer

    path = Path(weights)
    if path.is_dir():
        models = list_models(path)
        path = models[model_name] if model_name else next(iter(models.values()))
        bpe = Path(weights)
    else:
        bpe = path.parent
    has_bpe = (bpe / "encoder.json").is_file() and (bpe / "vocab.bpe").is_file()
    return load_model(path), load_tokenizer(bpe if has_bpe else None)


def attach_references(model, tokenizer, jobs: list[Job]) -> None:
    """What each request gives when run alone through the library, on the same weights."""
    from gpt2 import generate

    for job in jobs:
        job.reference = "".join(generate(model, tokenizer, job.prompt, **job.kwargs()))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def summarize(jobs: list[Job], wall: float, tokenizer) -> dict:
    """Token counts re-encode the returned text (exact for GPT-2's byte-level BPE except at rare
    merges across token boundaries; good enough for a rate)."""
    done = [j for j in jobs if j.ok and not j.cancel_after_first]
    for j in done:
        j.n_tokens = len(tokenizer.encode(j.text))
    ttfts = [j.ttft for j in done if j.ttft is not None]
    per_stream = [j.n_tokens / j.seconds for j in done if j.seconds > 0 and j.n_tokens]
    mismatched = [j for j in done if j.reference is not None and j.text != j.reference]
    return {
        "requests": len([j for j in jobs if not j.cancel_after_first]),
        "succeeded": len(done),
        "failed": len([j for j in jobs if not j.ok]),
        "errors": sorted({j.error for j in jobs if j.error})[:5],
        "verified": sum(j.reference is not None for j in done),
        "mismatched": len(mismatched),
        "mismatched_jobs": [(j.client, j.index) for j in mismatched][:10],
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "stream_tok_s_p50": percentile(per_stream, 50),
        "aggregate_tok_s": sum(j.n_tokens for j in done) / wall if wall > 0 else None,
        "wall_s": wall,
    }


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "weights"), help="converted model file or folder")
    ap.add_argument("--model", default=None, help="model name (default: the app's default)")
    ap.add_argument("--url", default=None, help="test an app already running on this machine")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=5, help="requests per client, one after another")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=0, help="instead: this many requests in a row")
    ap.add_argument("--flood", type=int, default=0, help="instead: this many clients at the same instant")
    ap.add_argument("--disconnect", type=int, default=0, help="extra clients that cancel mid-stream")
    ap.add_argument("--timeout", type=float, default=600.0, help="deadline for the whole run, seconds")
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the app process")
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    if not (1 <= args.clients <= MAX_CLIENTS and args.requests >= 1 and args.clients * args.requests <= 1000):
        ap.error(f"at most {MAX_CLIENTS} clients and {MAX_REQUESTS} requests in all")
    if not 0 <= args.sequential <= MAX_REQUESTS or not 0 <= args.disconnect <= MAX_CLIENTS:
        ap.error("--sequential at most 1000, --disconnect at most 64")
    if not 0 <= args.flood <= MAX_CLIENTS:
        ap.error(f"--flood at most {MAX_CLIENTS}")

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        proc = start_app(args.weights, port, dict(kv.split("=", 1) for kv in args.env))
    check_loopback(url)
    url = url if url.endswith("/") else url + "/"
    try:
        wait_ready(url, proc, timeout=180)
        pid = proc.pid if proc else None
        if args.flood:
            with RssSampler(pid) if pid else _null() as sampler:
                summary = flood(url, args.flood, args.max_new_tokens, timeout=args.timeout)
                summary["after_flood"] = http_generate(
                    url, ["After the flood", 8, 1.0, 40, 1.0, 1.0, 1, None, None], 120
                )[0]
            summary["server_peak_rss_mb"] = round(sampler.peak / 2**20, 1) if pid else None
            print(json.dumps(summary, indent=2))
            ok = not summary["errors"] and not summary["timeouts"] and summary["after_flood"] == "ok"
            return 0 if ok and summary["served"] > 0 else 1
        if args.sequential:
            jobs = [make_jobs(1, args.sequential, args.max_new_tokens)[0]]
        else:
            jobs = make_jobs(args.clients, args.requests, args.max_new_tokens)
        leavers = make_jobs(args.disconnect, 1, 1000, first_client=len(jobs))
        for job in (j for c in leavers for j in c):
            job.cancel_after_first = True
        flat = [j for c in jobs for j in c]
        rss_trace: list[tuple[int, int]] = []
        with RssSampler(pid) if pid else _null() as sampler:
            marks = {10, 20, 50, 100, 150, len(flat)} if args.sequential else set()

            def on_done(job: Job) -> None:
                # Warm-up aside, memory must not grow with the number of requests served.
                n = sum(j.ok or bool(j.error) for j in flat)
                if pid and n in marks:
                    rss_trace.append((n, sampler.rss()))

            wall = run_clients(url, jobs + leavers, args.timeout, on_done)
            idle_cpu = None
            if pid:
                time.sleep(1.0)  # let any cancelled request leave the batch
                before = cpu_seconds(pid)
                time.sleep(1.0)
                idle_cpu = cpu_seconds(pid) - before
        model, tokenizer = load_reference(args.weights, args.model)
        if args.verify:
            attach_references(model, tokenizer, [j for j in flat if j.ok])
        summary = summarize(flat + [j for c in leavers for j in c], wall, tokenizer)
        summary.update(
            clients=len(jobs),
            max_new_tokens=args.max_new_tokens,
            disconnected=len(leavers),
            server_peak_rss_mb=round(sampler.peak / 2**20, 1) if pid else None,
            server_cpu_s_in_1s_idle=idle_cpu,
            rss_mb_after_n_requests=[(n, round(r / 2**20, 1)) for n, r in rss_trace],
        )
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if summary["failed"] == 0 and summary["mismatched"] == 0 else 1


class _null:
    peak = 0

    def __enter__(self) -> _null:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
