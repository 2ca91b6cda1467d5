"""What a user gets through the app's HTTP API, next to what the library does in-process (issue 12 targets).

    python -m benchmarks.serving                      # 124M shapes, random weights, 3 rounds
    python -m benchmarks.serving --rounds 5 --streams 8 --new-tokens 64 --precision fp32

It writes random 124M-shaped weights (with GPT-2's BPE files) to a temporary folder, starts `app.py` on
127.0.0.1 in its own process, and drives it from a *separate client process* of plain HTTP event-stream
readers (`POST /gradio_api/call/generate`, then `GET .../{event_id}`), as remote browsers would. Round by
round, interleaved: `gpt2.generate` in this process (same weights, prompt and settings), one HTTP stream,
and N simultaneous HTTP streams. Prints tok/s (prefill included, per stream and aggregate), time to first
token, the ratios the targets are stated in, and the CPU's flags. Every HTTP text is checked equal to the
in-process text for the same seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.loadtest import check_loopback, free_port, start_app, wait_ready
from gpt2 import GPT2, SIZES, GPT2Config, generate, load_model, load_tokenizer, save_model

PROMPT = "The lighthouse keeper had not spoken to anyone in three years, until"
SETTINGS = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.0)


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    keep = sorted(f for f in flags if f.startswith(("avx", "fma", "f16c", "amx")))
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return f"{model}, {os.cpu_count()} CPUs: {' '.join(keep)}"


def make_weights(directory: Path, size: str) -> Path:
    """Random weights of a GPT-2 size, saved as the converter would (plus the BPE files)."""
    torch.manual_seed(0)
    save_model(GPT2(GPT2Config(**SIZES[size])), directory / f"gpt2-{size}.safetensors", name=size)
    return directory


# ------------------------------------------------------------------ the client process (plain HTTP)


def _stream(url: str, seed: int, new_tokens: int, n: int = 0) -> dict:
    """One /generate call (or, with n >= 1, one /generate_samples call) over Gradio's REST API: time to
    the first text, total time, the final text (a list of n texts for samples)."""
    import requests

    data = [
        PROMPT,
        new_tokens,
        SETTINGS["temperature"],
        SETTINGS["top_k"],
        SETTINGS["top_p"],
        SETTINGS["repetition_penalty"],
        seed,
        None,
        None,
    ] + ([n] if n else [])
    api = "generate_samples" if n else "generate"
    start = time.perf_counter()
    r = requests.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=60)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    first, text, event = None, None, None
    with requests.get(f"{url}gradio_api/call/{api}/{event_id}", stream=True, timeout=600) as s:
        for line in s.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = json.loads(line[5:])
                if event == "error":
                    raise RuntimeError(str(payload))
                if first is None and payload and any(payload[0] if n else payload[:1]):
                    first = time.perf_counter() - start
                if event == "complete":
                    text = payload[0]
    return {"seconds": time.perf_counter() - start, "ttft": first, "text": text, "seed": seed}


def client_main(url: str, conn) -> None:
    """Serve requests from the benchmark: (n_streams, seeds, new_tokens, samples) → results of those
    streams run at the same time, each in its own thread (samples >= 1: /generate_samples with n=samples)."""
    while True:
        job = conn.recv()
        if job is None:
            return
        n, seeds, new_tokens, samples = job
        results: list = [None] * n

        def run(i: int, seed: int, new_tokens: int, samples: int, results: list = results) -> None:
            results[i] = _stream(url, seed, new_tokens, samples)

        threads = [
            threading.Thread(target=run, args=(i, seed, new_tokens, samples))
            for i, seed in enumerate(seeds[:n])
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn.send({"wall": time.perf_counter() - start, "streams": results})


# ------------------------------------------------------------------ the benchmark


def in_process(model, tokenizer, seed: int, new_tokens: int) -> dict:
    start = time.perf_counter()
    first, pieces = None, []
    for piece in generate(model, tokenizer, PROMPT, max_new_tokens=new_tokens, seed=seed, **SETTINGS):
        if first is None:
            first = time.perf_counter() - start
        pieces.append(piece)
    return {"seconds": time.perf_counter() - start, "ttft": first, "text": "".join(pieces)}


def measure_samples(parent, model, tokenizer, n: int, new_tokens: int, rounds: int) -> None:
    """n samples of one prompt through /generate_samples against one sample through /generate, interleaved:
    wall time and time to first token (issue 15: ≤ 1.6× the wall time, ≤ 1.2× the first token)."""
    one, many, ttft1, ttftn, same = [], [], [], [], 0
    for r in range(rounds):
        seed = 500 + 10 * r
        parent.send((1, [seed], new_tokens, 0))
        a = parent.recv()["streams"][0]
        parent.send((1, [seed], new_tokens, n))
        b = parent.recv()["streams"][0]
        one.append(a["seconds"])
        many.append(b["seconds"])
        ttft1.append(a["ttft"])
        ttftn.append(b["ttft"])
        want = [in_process(model, tokenizer, seed + i, new_tokens)["text"] for i in range(n)]
        same += b["text"] == want
        print(
            f"samples round {r + 1}: 1 × {new_tokens} tokens {a['seconds']:.2f} s "
            f"(first {a['ttft'] * 1000:.0f} ms) · {n} × {new_tokens} tokens {b['seconds']:.2f} s "
            f"(first {b['ttft'] * 1000:.0f} ms)",
            flush=True,
        )
    m1, mn = statistics.median(one), statistics.median(many)
    t1, tn = statistics.median(ttft1), statistics.median(ttftn)
    print("\n| through the API | wall (median) | first token (median) |\n|---|---|---|")
    print(f"| 1 sample × {new_tokens} tokens (/generate) | {m1:.2f} s | {t1 * 1000:.0f} ms |")
    print(
        f"| {n} samples × {new_tokens} tokens (/generate_samples) | {mn:.2f} s ({mn / m1:.2f}×) | "
        f"{tn * 1000:.0f} ms ({tn / t1:.2f}×) |"
    )
    print(f"samples equal to /generate's text with seed + i (in-process check): {same}/{rounds}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="124M", choices=list(SIZES))
    ap.add_argument(
        "--weights", default=None, help="a folder with converted weights (default: random, temporary)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument(
        "--samples", type=int, default=4, help="also time n samples via /generate_samples (0: skip)"
    )
    ap.add_argument("--sample-tokens", type=int, default=128)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the app process")
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    weights = Path(args.weights) if args.weights else make_weights(Path(tmp.name), args.size)
    path = next(weights.glob("*.safetensors"))
    tokenizer = load_tokenizer()
    model = load_model(path, precision=args.precision)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    check_loopback(url)
    env = dict(kv.split("=", 1) for kv in args.env)
    env["GPT2_PRECISION"] = args.precision
    app = start_app(str(weights), port, env)
    parent, child = mp.get_context("spawn").Pipe()
    client = mp.get_context("spawn").Process(target=client_main, args=(url, child), daemon=True)
    try:
        wait_ready(url, app, timeout=300)
        client.start()
        print(cpu_flags())
        print(
            f"{args.size} shapes, random weights · {args.precision} · prompt {len(tokenizer.encode(PROMPT))} "
            f"tokens · {args.new_tokens} new tokens · {SETTINGS} · torch threads {torch.get_num_threads()}"
        )
        parent.send((1, [0], 4, 0))  # warm-up: the app's first request builds its scheduler
        parent.recv()
        rows: dict[str, list[float]] = {"inproc": [], "http1": [], f"http{args.streams}": []}
        ttft: dict[str, list[float]] = {"inproc": [], "http1": []}
        mismatches = 0
        for r in range(args.rounds):
            seed = 100 + r
            ref = in_process(model, tokenizer, seed, args.new_tokens)
            rows["inproc"].append(args.new_tokens / ref["seconds"])
            ttft["inproc"].append(ref["ttft"])
            parent.send((1, [seed], args.new_tokens, 0))
            one = parent.recv()
            s = one["streams"][0]
            rows["http1"].append(args.new_tokens / s["seconds"])
            ttft["http1"].append(s["ttft"])
            mismatches += s["text"] != ref["text"]
            seeds = [1000 * r + i for i in range(args.streams)]
            parent.send((args.streams, seeds, args.new_tokens, 0))
            many = parent.recv()
            rows[f"http{args.streams}"].append(args.streams * args.new_tokens / many["wall"])
            check = in_process(model, tokenizer, seeds[-1], args.new_tokens)["text"]
            mismatches += many["streams"][-1]["text"] != check
            print(
                f"round {r + 1}: in-process {rows['inproc'][-1]:.1f} tok/s · 1 HTTP stream "
                f"{rows['http1'][-1]:.1f} tok/s · {args.streams} HTTP streams "
                f"{rows[f'http{args.streams}'][-1]:.1f} tok/s aggregate",
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in rows.items()}
        t_in, t_http = statistics.median(ttft["inproc"]), statistics.median(ttft["http1"])
        print("\n| what | tok/s (median) | ratio |")
        print("|---|---|---|")
        print(f"| `gpt2.generate` in-process | {med['inproc']:.1f} | 1.00 |")
        print(f"| one HTTP stream | {med['http1']:.1f} | {med['http1'] / med['inproc']:.2f} × in-process |")
        print(
            f"| {args.streams} HTTP streams, aggregate | {med[f'http{args.streams}']:.1f} | "
            f"{med[f'http{args.streams}'] / med['http1']:.2f} × one HTTP stream |"
        )
        print(
            f"\ntime to first token: in-process {t_in * 1000:.0f} ms, HTTP {t_http * 1000:.0f} ms → "
            f"app overhead {(t_http - t_in) * 1000:.0f} ms"
        )
        print(
            f"texts equal to in-process with the same seed: {2 * args.rounds - mismatches}/{2 * args.rounds}"
        )
        if args.samples > 1:
            measure_samples(parent, model, tokenizer, args.samples, args.sample_tokens, args.rounds)
    finally:
        parent.send(None)
        client.join(timeout=10)
        app.terminate()
        app.wait(timeout=30)
        tmp.cleanup()


if __name__ == "__main__":
    main()
