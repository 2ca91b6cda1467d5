"""Continuous batching on the CPU: N concurrent streams through `BatchScheduler` against one stream.

    python -m benchmarks.batching                  # 124M shapes, 8 streams, 64 new tokens each
    python -m benchmarks.batching --streams 1,2,4,8 --new-tokens 128 --rounds 5
    python -m benchmarks.batching --quick          # 2 layers, few tokens: a smoke run

Variants, each repeated `--rounds` times (medians reported), in an order rotated every round so they
share the machine's noise:
    plain      one request through `gpt2.generate_steps` (generation before batching)
    batched×N  N requests submitted at once to one `BatchScheduler`, each consumed by its own thread

Columns: streams, aggregate tokens/s (all tokens / wall time), tokens/s of one stream (its tokens / its
time from submit to last token, median over streams), time to first token (median), and aggregate
tokens/s as a multiple of the plain single stream. Every batched text is also compared with the text
the same request (prompt, seed) gives through `generate_steps` alone: the "same" column counts equal
ones. Weights are random (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import torch

from gpt2 import GPT2, GPT2Config, generate_steps, load_tokenizer, prepare
from gpt2.decoding.batch import BatchScheduler
from gpt2.tokenizer import PACKAGED_BPE_DIR

ROOT = Path(__file__).resolve().parents[1]
SAMPLING = {
    "default": dict(temperature=1.0, top_k=40),  # the app's defaults
    "greedy": dict(temperature=0.0),
    "full": dict(temperature=1.0),  # the whole 50257-token distribution
}


def bpe_dir(given: str | None) -> Path:
    """GPT-2's BPE files from a local folder only (a benchmark never downloads anything)."""
    env = os.environ.get("GPT2_BPE_DIR")
    for c in [given, env, ROOT / "weights", PACKAGED_BPE_DIR]:
        if c and (Path(c) / "encoder.json").is_file() and (Path(c) / "vocab.bpe").is_file():
            return Path(c)
    raise SystemExit("GPT-2's BPE files not found: pass --bpe-dir or set GPT2_BPE_DIR")


def random_gpt2(config: GPT2Config, seed: int = 0) -> GPT2:
    torch.manual_seed(seed)
    model = GPT2(config).eval().requires_grad_(False)
    return prepare(model)  # the native engine where it builds, as `gpt2.load_model` does


def prompts(tokenizer, n: int, length: int) -> list[str]:
    """n different prompts of `length` tokens each (different so no two streams are alike)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n):
        ids = torch.randint(300, 20000, (length,), generator=g).tolist()
        text = tokenizer.decode(ids)
        out.append(tokenizer.decode(tokenizer.encode(text)[:length]))
    return out


def run_plain(model, tokenizer, prompt: str, kw: dict) -> dict:
    start = time.perf_counter()
    ttft, tokens = None, []
    for step in generate_steps(model, tokenizer, prompt, **kw):
        if step.token is not None:
            tokens.append(step.token)
            ttft = ttft or time.perf_counter() - start
    seconds = time.perf_counter() - start
    return dict(tokens=tokens, seconds=seconds, ttft=ttft)


def run_batched(scheduler: BatchScheduler, jobs: list[tuple[str, dict]]) -> tuple[list[dict], float]:
    results: list[dict] = [{} for _ in jobs]
    barrier = threading.Barrier(len(jobs))

    def consume(i: int) -> None:
        prompt, kw = jobs[i]
        barrier.wait()
        start = time.perf_counter()
        ttft, tokens = None, []
        for step in scheduler.stream(prompt, **kw):
            if step.token is not None:
                tokens.append(step.token)
                ttft = ttft or time.perf_counter() - start
        results[i] = dict(tokens=tokens, seconds=time.perf_counter() - start, ttft=ttft)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(jobs))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Continuous batching: N streams vs one")
    ap.add_argument("--model", default="124M", help="shapes of this GPT-2 size (random weights)")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    ap.add_argument("--streams", default="8", help="comma-separated concurrent stream counts")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sampling", choices=sorted(SAMPLING), default="default")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--bpe-dir", default=None, help="folder with encoder.json and vocab.bpe")
    ap.add_argument("--quick", action="store_true", help="2 layers, 8 tokens, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.new_tokens, args.rounds = 2, 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPT2Config.from_name(args.model)
    if args.layers:
        config = GPT2Config(**{**config.to_hparams(), "n_layer": args.layers})
    counts = sorted({int(s) for s in args.streams.split(",")})
    model = random_gpt2(config)
    tokenizer = load_tokenizer(bpe_dir(args.bpe_dir))
    texts = prompts(tokenizer, max(counts), args.prompt_tokens)
    # max_new_tokens with random weights: <|endoftext|> is 1 in 50257, so streams run to the end.
    kws = [
        dict(max_new_tokens=args.new_tokens, seed=100 + i, **SAMPLING[args.sampling])
        for i in range(len(texts))
    ]
    scheduler = BatchScheduler(model, tokenizer, max_batch=max(counts), max_queue=0)

    print(
        f"{args.model} shapes, {config.n_layer} layers, random weights · {args.prompt_tokens}-token prompts, "
        f"{args.new_tokens} new tokens, sampling {args.sampling} {SAMPLING[args.sampling]} · "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    run_plain(model, tokenizer, texts[0], {**kws[0], "max_new_tokens": 4})  # warm-up (packs weights)
    run_batched(scheduler, [(texts[0], {**kws[0], "max_new_tokens": 4})] * 2)

    variants = ["plain"] + [f"batched×{n}" for n in counts]
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    alone_tokens: dict[int, list[int]] = {}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            if variant == "plain":
                res = run_plain(model, tokenizer, texts[0], kws[0])
                alone_tokens.setdefault(0, res["tokens"])
                n = len(res["tokens"])
                rows[variant].append(
                    dict(agg=n / res["seconds"], stream=n / res["seconds"], ttft=res["ttft"])
                )
                continue
            k = int(variant.split("×")[1])
            results, wall = run_batched(scheduler, list(zip(texts[:k], kws[:k])))
            total = sum(len(x["tokens"]) for x in results)
            rows[variant].append(
                dict(
                    agg=total / wall,
                    stream=statistics.median(len(x["tokens"]) / x["seconds"] for x in results),
                    ttft=statistics.median(x["ttft"] for x in results),
                    results=results,
                )
            )
    # Correctness: each batched stream against the same request alone.
    for i in range(max(counts)):
        if i not in alone_tokens:
            alone_tokens[i] = run_plain(model, tokenizer, texts[i], kws[i])["tokens"]
    scheduler.close()

    base = statistics.median(x["agg"] for x in rows["plain"])
    single = None
    header = f"{'variant':<12}{'streams':>8}{'agg tok/s':>11}{'tok/s/stream':>14}{'TTFT ms':>9}"
    header += f"{'x plain':>9}{'same':>9}"
    print(header)
    print("-" * len(header))
    for variant in variants:
        k = 1 if variant == "plain" else int(variant.split("×")[1])
        agg = statistics.median(x["agg"] for x in rows[variant])
        stream = statistics.median(x["stream"] for x in rows[variant])
        ttft = statistics.median(x["ttft"] for x in rows[variant]) * 1000
        if variant == "plain":
            same = "-"
        else:
            checks = [
                res["tokens"] == alone_tokens[i] for x in rows[variant] for i, res in enumerate(x["results"])
            ]
            same = f"{sum(checks)}/{len(checks)}"
        if k == 1 and variant != "plain":
            single = agg
        print(f"{variant:<12}{k:>8}{agg:>11.2f}{stream:>14.2f}{ttft:>9.0f}{agg / base:>9.2f}{same:>9}")
    if single:
        top = max(counts)
        agg_top = statistics.median(x["agg"] for x in rows[f"batched×{top}"])
        print(f"\n{top} streams aggregate / 1 batched stream: {agg_top / single:.2f}×")
        print(f"{top} streams aggregate / plain generate_steps: {agg_top / base:.2f}×")
        print(f"1 batched stream / plain generate_steps: {single / base:.2f}×")
    one, many = model_step_ms(model, max(counts), args.prompt_tokens + args.new_tokens // 2, args.rounds)
    print(
        f"model step only (no sampling, no prefill), context {args.prompt_tokens + args.new_tokens // 2}: "
        f"1 row {one:.1f} ms, {max(counts)} rows {many:.1f} ms → "
        f"{max(counts) * one / many:.2f}× the tokens per second"
    )


def model_step_ms(model: GPT2, rows: int, context: int, rounds: int) -> tuple[float, float]:
    """Median ms of one decode step for one sequence and for `rows` sequences at once (both one
    `GPT2.step` call): the ceiling for the batched speed-up."""
    cache = model.new_cache(batch_size=rows)
    with torch.no_grad():
        prompt = torch.randint(0, 50000, (context,))
        for slot in range(rows):
            model.step(prompt, torch.arange(context), torch.full((context,), slot), cache)
        one, many = [], []
        for _ in range(max(5, 3 * rounds)):
            for n, times in ((1, one), (rows, many)):
                start = time.perf_counter()
                model.step(torch.full((n,), 5), torch.full((n,), context), torch.arange(n), cache)
                times.append(time.perf_counter() - start)
    return statistics.median(one) * 1000, statistics.median(many) * 1000


if __name__ == "__main__":
    main()
