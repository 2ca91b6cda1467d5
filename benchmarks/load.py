"""`python -m benchmarks.serving --load`: many clients against the app at once, on this machine only.

    python -m benchmarks.serving --load                       # 16 gradio_client clients x 5 requests
    python -m benchmarks.serving --load --disconnect 4        # ... plus 4 that leave mid-stream
    python -m benchmarks.serving --load --sequential 500      # RSS over 500 requests in a row
    python -m benchmarks.serving --load --flood 64            # 64 plain-HTTP clients at the same instant

The app runs in its own process (`common.running_app`) on the same weights as `--weights` or random ones.
Clients: each its own `gradio_client.Client` (the Python client users have), each request its own prompt
and seed. Reported: successes, p50/p95 time to first token, tokens/s per stream and in aggregate, and the
server's peak RSS; every text is compared with the same request run alone through `gpt2.generate`
(cross-talk between requests would show), unless `--no-verify`. With `--disconnect K`, K more clients
cancel mid-stream, and the report says how much CPU the server used in the second after the last request
ended (a cancelled request must not keep decoding). `--flood N` sends N requests at one instant through
`common.call_api`: each must be served or told at once that the server is busy (never a hang or an empty
error), and the app must serve normally afterwards. Every request has a deadline (`--timeout`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import common, results

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--load")
    g.add_argument("--load", action="store_true", help="run the load test instead (see below)")
    g.add_argument("--clients", type=int, default=None, help="concurrent gradio_client clients (default 16)")
    g.add_argument("--requests", type=int, default=None, help="requests per client, in a row (default 5)")
    g.add_argument("--sequential", type=int, default=None, help="instead: this many requests in a row")
    g.add_argument("--flood", type=int, default=None, help="instead: this many clients at the same instant")
    g.add_argument("--disconnect", type=int, default=None, help="more clients that cancel mid-stream")
    g.add_argument("--max-new-tokens", type=int, default=None, help="per request (default 32)")
    g.add_argument("--timeout", type=float, default=None, help="deadline for the whole run, s (default 600)")
    g.add_argument("--no-verify", dest="verify", action="store_false", help="skip the alone-run comparison")


LOAD_DEFAULTS = {"clients": 16, "requests": 5, "sequential": 0, "flood": 0, "disconnect": 0}
LOAD_DEFAULTS.update(max_new_tokens=32, timeout=600.0)


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = [k for k in LOAD_DEFAULTS if getattr(args, k) is not None] + ([] if args.verify else ["verify"])
    if not args.load:
        if given:
            p.error(f"--{given[0].replace('_', '-')} goes with --load")
        return
    for key, default in LOAD_DEFAULTS.items():
        setattr(args, key, default if getattr(args, key) is None else getattr(args, key))
    if (
        not 1 <= args.clients <= MAX_CLIENTS
        or args.requests < 1
        or args.clients * args.requests > MAX_REQUESTS
    ):
        p.error(f"--clients 1..{MAX_CLIENTS}, --requests 1.., at most {MAX_REQUESTS} requests in all")
    if not 0 <= args.sequential <= MAX_REQUESTS or not 0 <= args.disconnect <= MAX_CLIENTS:
        p.error(f"--sequential 0..{MAX_REQUESTS}, --disconnect 0..{MAX_CLIENTS}")
    if not 0 <= args.flood <= MAX_CLIENTS or (args.flood and args.sequential):
        p.error(f"--flood 0..{MAX_CLIENTS}, and not with --sequential")
    if not 1 <= args.max_new_tokens <= 1024 or args.timeout <= 0:
        p.error("--max-new-tokens 1..1024, --timeout > 0")
    args.mode = "flood" if args.flood else "sequential" if args.sequential else "clients"


@dataclass
class Job:
    """One request: what it sends, and (filled in) what came back and when."""

    client: int
    index: int
    prompt: str
    seed: int
    max_new_tokens: int
    cancel_after_first: bool = False
    ok: bool = False
    error: str = ""
    text: str = ""
    ttft: float | None = None
    seconds: float = 0.0
    n_tokens: int = 0
    reference: str | None = None  # the text the same request gives alone (verified runs)

    def kwargs(self) -> dict:
        return dict(max_new_tokens=self.max_new_tokens, temperature=1.0, top_k=40, seed=self.seed)


def make_jobs(clients: int, requests: int, max_new_tokens: int, first_client: int = 0) -> list[list[Job]]:
    """Different prompts and seeds for every request, so mixed-up results cannot look right."""
    return [
        [
            Job(c, r, PROMPTS[(c * requests + r) % len(PROMPTS)], 1000 * c + r, max_new_tokens)
            for r in range(requests)
        ]
        for c in range(first_client, first_client + clients)
    ]


class RssSampler:
    """Peak resident memory of a process and its children, polled in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.process, self.error = psutil.Process(pid), psutil.Error
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(self.error):  # a child may exit between listing and reading
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(self.error):
                total += sum(p.cpu_times()[:2])  # user + system
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except self.error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_job(client, job: Job, deadline: float) -> Job:
    """Submit one request and follow its stream (polling the client's outputs every 10 ms)."""
    start = time.perf_counter()
    try:
        handle = client.submit(job.prompt, **job.kwargs(), api_name="/generate")
        while not handle.done():
            if job.ttft is None and any(handle.outputs()):
                job.ttft = time.perf_counter() - start
                if job.cancel_after_first:
                    handle.cancel()
                    job.ok, job.seconds = True, time.perf_counter() - start
                    return job
            if time.monotonic() > deadline:
                handle.cancel()
                raise TimeoutError("request deadline passed")
            time.sleep(0.01)
        job.text = handle.result(timeout=max(1.0, deadline - time.monotonic()))
        job.ttft = job.ttft if job.ttft is not None or not job.text else time.perf_counter() - start
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

    url = common.check_loopback(url)
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


def generate_inputs(prompt: str, max_new_tokens: int, seed: int) -> list:
    """/generate's inputs in order: prompt, max_new_tokens, temperature, top_k, top_p, penalty, seed,
    stop, model."""
    return [prompt, max_new_tokens, 1.0, 40, 1.0, 1.0, seed, None, None]


def flood(url: str, n: int, max_new_tokens: int, timeout: float = 300.0) -> dict:
    """`n` plain-HTTP clients, released at the same instant, one request each."""
    url = common.check_loopback(url)
    calls: list = [None] * n
    gate = threading.Barrier(n)

    def client(i: int) -> None:
        gate.wait()
        inputs = generate_inputs(PROMPTS[i % len(PROMPTS)], max_new_tokens, i)
        calls[i] = common.call_api(url, "generate", inputs, timeout)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    calls = [c or common.ApiCall("timeout", "client thread did not finish", timeout) for c in calls]
    busy = [c for c in calls if c.outcome == "busy"]
    return {
        "clients": n,
        "served": sum(c.outcome == "ok" for c in calls),
        "busy": len(busy),
        "errors": [c.output for c in calls if c.outcome == "error"][:5],
        "timeouts": sum(c.outcome == "timeout" for c in calls),
        "busy_answer_p95_s": percentile([c.seconds for c in busy], 95),
        "busy_message": busy[0].output if busy else None,
        "served_p95_s": percentile([c.seconds for c in calls if c.outcome == "ok"], 95),
    }


def reference_model(weights: str | Path, precision: str = "fp32"):
    """The app's default model (the first `list_models` gives) and tokenizer, loaded here."""
    from gpt2 import list_models, load_model, load_tokenizer

    path = Path(weights)
    folder = path if path.is_dir() else path.parent
    model_path = next(iter(list_models(path).values())) if path.is_dir() else path
    has_bpe = (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file()
    return load_model(model_path, precision=precision), load_tokenizer(folder if has_bpe else None)


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
    """Token counts re-encode the returned text (exact for GPT-2's byte-level BPE but at rare merges
    across token boundaries; good enough for a rate)."""
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


def run_flood(args: argparse.Namespace, url: str) -> tuple[dict, bool]:
    summary = flood(url, args.flood, args.max_new_tokens, timeout=args.timeout)
    summary["after_flood"] = common.call_api(url, "generate", generate_inputs("After", 8, 1), 120).outcome
    ok = not summary["errors"] and not summary["timeouts"] and summary["after_flood"] == "ok"
    return summary, ok and summary["served"] > 0


def run_streams(args: argparse.Namespace, url: str, sampler: RssSampler, weights: Path) -> tuple[dict, bool]:
    """The clients (or sequential) mode, the leavers alongside; then the idle second's CPU."""
    clients, requests = (1, args.sequential) if args.sequential else (args.clients, args.requests)
    jobs = make_jobs(clients, requests, args.max_new_tokens)
    leavers = make_jobs(args.disconnect, 1, 1000, first_client=len(jobs))
    for job in (j for c in leavers for j in c):
        job.cancel_after_first = True
    flat = [j for c in jobs for j in c]
    marks = {10, 20, 50, 100, 150, len(flat)} if args.sequential else set()
    trace: list[tuple[int, float]] = []

    def on_done(job: Job) -> None:  # memory must not grow with the number of requests served
        n = sum(j.ok or bool(j.error) for j in flat)
        if n in marks:
            trace.append((n, round(sampler.rss() / 2**20, 1)))

    wall = run_clients(url, jobs + leavers, args.timeout, on_done)
    time.sleep(1.0)  # let any cancelled request leave the batch
    before = sampler.cpu_seconds()
    time.sleep(1.0)
    idle_cpu = round(sampler.cpu_seconds() - before, 3)
    model, tokenizer = reference_model(weights, args.precision)
    if args.verify:
        attach_references(model, tokenizer, [j for j in flat if j.ok])
    summary = summarize(flat + [j for c in leavers for j in c], wall, tokenizer)
    summary.update(clients=len(jobs), disconnected=len(leavers), server_cpu_s_in_1s_idle=idle_cpu)
    summary["rss_mb_after_n_requests"] = trace
    return summary, summary["failed"] == 0 and summary["mismatched"] == 0


def run(args: argparse.Namespace, env: dict) -> tuple[dict, bool]:
    with tempfile.TemporaryDirectory(prefix="gpt2-load-") as tmp:
        weights = common.weights_folder(Path(tmp), args.size, args.weights, args.layers)
        with common.running_app(weights, {"GPT2_PRECISION": args.precision, **args.env}) as (url, proc):
            with RssSampler(proc.pid) as sampler:
                if args.flood:
                    summary, ok = run_flood(args, url)
                else:
                    summary, ok = run_streams(args, url, sampler, weights)
            summary["server_peak_rss_mb"] = round(sampler.peak / 2**20, 1)
    print(json.dumps(summary, indent=2))
    settings = {k: getattr(args, k) for k in ("mode", "max_new_tokens", "precision", "size", "layers", "env")}
    settings.update(
        {k: getattr(args, k) for k in ("clients", "requests", "sequential", "flood", "disconnect")}
    )
    return {"environment": env, "settings": settings, "summary": summary, "ok": ok}, ok


def save(run_record: dict, path: str | Path = "") -> Path:
    """Add this run to the load results file under its mode (each mode's last run is kept)."""
    path = Path(path) if path else results.RESULTS / "load.json"
    record = json.loads(path.read_text()) if path.is_file() else {"benchmark": "load", "runs": {}}
    record["runs"][run_record["settings"]["mode"]] = run_record
    return results.save(record, path)
