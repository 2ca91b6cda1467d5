"""`python -m benchmarks.decode --sizes 124M,1558M`: ours at GPT-2's sizes, per precision, in fresh processes.

For each size, random weights at its real shapes are saved once as a `.safetensors` file; then each
precision runs in a fresh process (`--child sizes`), so its memory is that model's alone and its load
is a cold build from the file (`common.build_ours`). The child reports: load time; peak RSS while loading;
RSS after loading, anonymous (tensors) and file-backed (mapped files, libraries); batch-1 greedy decode
tok/s (median of `--rounds`) and the peak RSS so far; then, with the peak reset, `--streams` concurrent
requests of `--stream-tokens` new tokens each through one `BatchScheduler` (as the app serves them):
aggregate tok/s and the peak RSS meanwhile. The parent holds no model while the children run (1558M in
fp32 is a 6.2 GB file) and deletes each file before the next size. The last line says which size and
precision a 2-vCPU / 16 GB Space can serve at >= 15 tok/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.results import render_sizes
from gpt2 import PRECISIONS, SIZES, BatchScheduler, GPT2Config, load_tokenizer

# The Space the verdict is for: 2 vCPUs, 16 GB; the app, Python and the OS need some of that memory.
SPACE_MEMORY_MB = 16 * 1024
APP_HEADROOM_MB = 2 * 1024
TARGET_TOK_S = 15.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--sizes")
    g.add_argument("--streams", type=int, default=None, help="concurrent requests (default 8)")
    g.add_argument("--stream-tokens", type=int, default=None, help="new tokens per request (default 256)")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.sizes:
        if args.streams is not None or args.stream_tokens is not None:
            p.error("--streams and --stream-tokens go with --sizes")
        return
    args.size_list = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in args.size_list if s not in SIZES]
    if unknown or not args.size_list:
        p.error(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")
    ours = [v for v in args.variant_list if v in PRECISIONS]
    if args.variants is not None and len(ours) < len(args.variant_list):
        p.error(f"--sizes times our precisions only: --variants from {', '.join(PRECISIONS)}")
    args.precisions = ours
    args.streams = 8 if args.streams is None else args.streams
    args.stream_tokens = 256 if args.stream_tokens is None else args.stream_tokens
    if not 1 <= args.streams <= 64 or not 1 <= args.stream_tokens <= 1024 - args.prompt_tokens:
        p.error("--streams 1..64; --stream-tokens 1.., with the prompt within 1024 positions")


# ---------------------------------------------------------------------------------------------- the child


def run_streams(model, n: int, new_tokens: int, prompt_tokens: int) -> tuple[float, float]:
    """`n` requests at once through one `BatchScheduler`, each consumed by its own thread: (aggregate
    tok/s, seconds)."""
    tokenizer = load_tokenizer()
    g = torch.Generator().manual_seed(1234)
    prompts = [
        tokenizer.decode(torch.randint(300, 20000, (prompt_tokens,), generator=g).tolist()) for _ in range(n)
    ]
    counts = [0] * n
    with BatchScheduler(model, tokenizer, max_batch=n, max_queue=0) as scheduler:
        streams = [scheduler.stream(p, max_new_tokens=new_tokens, seed=i) for i, p in enumerate(prompts)]

        def consume(i: int) -> None:
            counts[i] = sum(step.token is not None for step in streams[i])

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(n)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    return sum(counts) / seconds, seconds


def child(args: argparse.Namespace, path: str, precision: str) -> None:
    """In a fresh process: build from the file, measure (see the module docstring), print a JSON line."""
    t0 = time.perf_counter()
    runner = common.build_ours(path, precision)
    load_s = time.perf_counter() - t0
    load_peak = common.rss_mb()["peak"]
    gc.collect()  # the fp32 stepping stone is garbage once packed
    after = common.rss_mb()
    torch.manual_seed(1)
    prompt = torch.randint(0, runner.config.n_vocab, (args.prompt_tokens,)).tolist()
    stepper = partial(common.ours_stepper, runner)
    common.greedy(stepper, prompt[:4], 2)  # warm-up: lazy init, first touch of every page
    tok_s = statistics.median(common.greedy(stepper, prompt, args.new_tokens)[1] for _ in range(args.rounds))
    peak = common.rss_mb()["peak"]
    reset = common.reset_peak_rss()
    streams_tok_s, _ = run_streams(runner, args.streams, args.stream_tokens, args.prompt_tokens)
    rt = runner.runtime
    result = {
        "runs_as": rt.precision if rt.engine is not None else f"{rt.precision} (PyTorch)",
        "load_s": round(load_s, 2),
        "load_peak_rss_mb": round(load_peak),
        "rss_anon_mb": round(after["anon"]),
        "rss_file_mb": round(after["file"]),
        "tok_s": round(tok_s, 2),
        "peak_rss_mb": round(peak),
        "streams": {
            "tok_s": round(streams_tok_s, 2),
            "peak_rss_mb": round(common.rss_mb()["peak"]) if reset else None,
        },
    }
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------- the parent


def run_child(args: argparse.Namespace, path: Path, precision: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.decode", *args.argv, "--child", "sizes", str(path), precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=common.ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-1500:] or f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(rows: list[dict]) -> str:
    """The largest size (then the fastest precision) meeting the Space's speed and memory bounds; memory:
    the larger of batch-1's peak and the streams' peak."""
    budget = SPACE_MEMORY_MB - APP_HEADROOM_MB
    peak = lambda r: max(r["peak_rss_mb"], r["streams"]["peak_rss_mb"] or 0)  # noqa: E731
    ok = [r for r in rows if not r.get("error") and r["tok_s"] >= TARGET_TOK_S and peak(r) <= budget]
    bounds = f">= {TARGET_TOK_S:.0f} tok/s and peak RSS <= {budget / 1024:.0f} GB"
    if not ok:
        return f"Verdict: no size/precision measured here reaches {bounds} on 2 vCPUs / 16 GB."
    best = max(ok, key=lambda r: (r["params_m"], r["tok_s"]))
    note = f" (runs as {best['runs_as']} here)" if best["runs_as"] != best["precision"] else ""
    return (
        f"Verdict: a 2-vCPU / 16 GB Space can serve up to {best['size']} {best['precision']}{note} at"
        f" {best['tok_s']:.1f} tok/s, {peak(best) / 1024:.1f} GB peak RSS ({bounds})."
    )


def run(args: argparse.Namespace, env: dict) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpt2-sizes-") as tmp:
        for size in args.size_list:
            config = GPT2Config.from_name(size)
            if args.layers:  # a smoke run: the size's widths, fewer blocks
                config = dataclasses.replace(config, n_layer=args.layers)
            path = common.random_weights(Path(tmp) / f"gpt2-{size}.safetensors", config)
            gc.collect()
            for precision in args.precisions:
                row = {"size": size, "params_m": round(config.num_parameters() / 1e6), "precision": precision}
                try:
                    row.update(run_child(args, path, precision))
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
                    row["error"] = str(exc)
                print(f"{size} {precision}: {json.dumps(row)}", file=sys.stderr)
                rows.append(row)
            path.unlink()
    settings = {
        k: getattr(args, k) for k in ("prompt_tokens", "new_tokens", "rounds", "streams", "stream_tokens")
    }
    settings["layers"] = args.layers
    record = {
        "benchmark": "sizes",
        "environment": env,
        "settings": settings,
        "sizes": rows,
        "verdict": verdict(rows),
    }
    print("\n" + render_sizes(record))
    return record
