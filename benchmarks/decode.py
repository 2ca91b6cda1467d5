"""Batch-1 CPU decoding: our GPT-2 (plain and fast paths, fp32/bf16/int8) against Hugging Face transformers.

    python -m benchmarks.decode                 # full run: 124M shapes, 20-token prompt + 128 new tokens
    python -m benchmarks.decode --quick         # a few tokens, 2 layers: the CI smoke run

Every variant runs once per round, in an order rotated each round, so ours and HF's `generate` share the
same noise; the table reports medians over rounds and the ratios to HF. Weights are random (speed does
not depend on their values) unless `--weights` names a converted checkpoint.

Columns: decode tok/s and ms/token (tokens after the first), time to first token (prefill of the prompt
plus the first argmax), prefill time of a long prompt, bytes read per token (weights actually touched +
KV cache at the mean context), achieved GB/s (bytes × tok/s), peak RSS of a process that runs only that
variant, and the relative logit error against the fp32 reference path.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from gpt2 import GPT2, GPT2Config, native
from gpt2.fast import FastGPT2, bf16_supported

VARIANTS = ("hf", "plain", "fp32", "bf16", "int8")
LABELS = {
    "hf": "HF transformers fp32",
    "plain": "ours, plain fp32",
    "fp32": "ours, fast fp32",
    "bf16": "ours, fast bf16",
    "int8": "ours, fast int8",
}
# llama.cpp on this project's machines, from the issue, as multiples of HF's fp32 tok/s measured there.
LLAMA_CPP_RATIO = {"fp32": 110 / 35, "bf16": 180 / 35, "int8": 240 / 35}
COLUMNS = (
    "variant",
    "tok/s",
    "ms/tok",
    "CPU ms/tok",
    "TTFT ms",
    "prefill ms",
    "MB/tok",
    "GB/s",
    "peak RSS MB",
    "x HF tok/s",
    "x HF CPU",
    "prefill / HF",
    "rel logit err",
)


@dataclass
class Result:
    variant: str
    tok_s: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    prefill_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    bytes_per_token: int = 0
    peak_rss_mb: float | None = None
    rel_logit_err: float | None = None
    tokens: list[int] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------- models


def make_model(config: GPT2Config, weights: str | None, seed: int = 0) -> GPT2:
    if weights:
        from gpt2.weights import load_model

        return load_model(weights).eval()
    torch.manual_seed(seed)
    return GPT2(config).eval()  # GPT-2's own initialisation: random, realistically scaled


def hf_from_ours(model: GPT2):
    """transformers' GPT2LMHeadModel holding our weights: the same mapping the parity tests use
    (`tests/reference.py`), with transformers' default (fast) attention for a fair race."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from reference import hf_from_ours as reference_hf

    return reference_hf(model, attn_implementation="sdpa")


def native_status() -> str:
    """Which precisions the fast variants decode with gpt2/csrc/decode.c (else oneDNN through torch)."""
    on = [p for p in ("fp32", "bf16", "int8") if native.available(p)]
    return ", ".join(on) if on else f"off ({native.unavailable_reason()})"


def plain_bytes_per_token(model: GPT2, context: int) -> int:
    """fp32 bytes a decode step reads on the plain/HF path: every parameter except the unused
    embedding rows (the tied head reads all of `wte`), plus the KV cache."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - c.n_ctx * c.n_embd + c.n_embd  # one wpe row
    return 4 * n + 2 * c.n_layer * context * c.n_embd * 4


# ---------------------------------------------------------------------------------------------- timing


def greedy_ours(
    runner: GPT2 | FastGPT2, prompt: torch.Tensor, n_new: int
) -> tuple[float, float, float, list[int]]:
    """(time to first token s, decode tok/s, CPU ms/token, tokens) of greedy prefill + decode_one."""
    fast = isinstance(runner, FastGPT2)
    with torch.inference_mode():
        t0 = time.perf_counter()
        cache = runner.new_cache(1, max_len=prompt.shape[1] + n_new)
        token = int(runner.prefill(prompt, cache)[0].argmax())
        t1, c1 = time.perf_counter(), time.process_time()
        tokens = [token]
        for _ in range(n_new - 1):
            step = token if fast else torch.tensor([token])
            token = int(runner.decode_one(step, cache)[0].argmax())
            tokens.append(token)
        t2, c2 = time.perf_counter(), time.process_time()
    return t1 - t0, (n_new - 1) / (t2 - t1), (c2 - c1) * 1000 / (n_new - 1), tokens


def greedy_hf(hf, prompt: torch.Tensor, n_new: int) -> tuple[float, float, float, list[int]]:
    """The same through `hf.generate`; a streamer stamps the time each new token comes out."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def end(self) -> None:
            pass

    stamps = Stamps()
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=0,
            streamer=stamps,
        )
    times, cpu = stamps.times[1:], stamps.cpu[1:]  # the first put() is the prompt itself
    cpu_ms = (cpu[-1] - cpu[0]) * 1000 / (n_new - 1)
    return times[0] - t0, (n_new - 1) / (times[-1] - times[0]), cpu_ms, out[0, prompt.shape[1] :].tolist()


def prefill_ours(runner: GPT2 | FastGPT2, prompt: torch.Tensor) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        runner.prefill(prompt, runner.new_cache(1, max_len=prompt.shape[1]))
        return time.perf_counter() - t0


def prefill_hf(hf, prompt: torch.Tensor) -> float:
    # What generate's first step does: all positions through the blocks, the head for the last one.
    with torch.inference_mode():
        t0 = time.perf_counter()
        hf(prompt, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0


def read_bandwidth_gbs(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """A streaming read of a buffer far larger than the caches: the machine's usable bandwidth here."""
    buf = torch.ones(n_bytes // 4)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        best = max(best, n_bytes / (time.perf_counter() - t0) / 1e9)
    del buf
    return best


def relative_logit_error(runner: FastGPT2, reference: GPT2, idx: torch.Tensor) -> float:
    """max |logits − fp32 logits| / max |fp32 logits| over the positions of `idx` after its first 8,
    the runner's logits taken as generation takes them: `prefill` of the first 8 tokens, then one
    `decode_one` step per token (the path the speed columns time, native engine included)."""
    with torch.inference_mode():
        want = reference(idx)[0, 7:-1]  # (T - 8, V)
        cache = runner.new_cache(1, max_len=idx.shape[1])
        got = [runner.prefill(idx[:, :8], cache)[0]]
        got += [runner.decode_one(int(t), cache)[0] for t in idx[0, 8:-1]]
    return ((torch.stack(got) - want).abs().max() / want.abs().max()).item()


# ---------------------------------------------------------------------------------------------- peak RSS


def _rss_child(variant: str, args: argparse.Namespace) -> None:
    """Run one variant alone and print its peak RSS (MB): what serving that variant costs."""
    import resource

    torch.set_num_threads(args.threads)
    config = GPT2Config(n_layer=args.layers)
    prompt = torch.randint(0, config.n_vocab, (1, args.prompt_tokens))
    model = make_model(config, args.weights)
    if variant == "hf":
        runner = hf_from_ours(model)
        del model
        gc.collect()
        greedy_hf(runner, prompt, min(args.new_tokens, 8))
    else:
        runner = model if variant == "plain" else FastGPT2(model, variant)
        if variant != "plain":
            del model  # serving keeps only the packed copy
            gc.collect()
        greedy_ours(runner, prompt, min(args.new_tokens, 8))
    # VmHWM is this process's own peak; ru_maxrss would carry the parent's over fork + exec.
    status = Path("/proc/self/status")
    if status.exists():
        hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        if hwm:
            print(int(hwm[0].split()[1]) / 1024)
            return
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mb(variant: str, argv: list[str]) -> float | None:
    cmd = [sys.executable, "-m", "benchmarks.decode", *argv, "--rss-child", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(f"peak RSS for {variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report


def table(results: dict[str, Result]) -> list[list[str]]:
    hf = results.get("hf")
    rows = []
    for name, r in results.items():
        tok_s, prefill = r.median("tok_s"), r.median("prefill_ms")
        rows.append(
            [
                LABELS[name],
                f"{tok_s:.1f}",
                f"{1000 / tok_s:.2f}",
                f"{r.median('cpu_ms'):.2f}",
                f"{r.median('ttft_ms'):.1f}",
                f"{prefill:.0f}",
                f"{r.bytes_per_token / 1e6:.0f}",
                f"{r.bytes_per_token * tok_s / 1e9:.1f}",
                "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
                "-" if hf is None else f"{tok_s / hf.median('tok_s'):.2f}",
                "-" if hf is None else f"{hf.median('cpu_ms') / r.median('cpu_ms'):.2f}",
                "-" if hf is None else f"{prefill / hf.median('prefill_ms'):.2f}",
                "-" if r.rel_logit_err is None else f"{r.rel_logit_err:.1e}",
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(COLUMNS), sep, *(line(r) for r in rows)])


def plot(results: dict[str, Result], bandwidth_gbs: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    tok_s = [results[n].median("tok_s") for n in names]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(range(len(names)), tok_s, color=["#888" if n in ("hf", "plain") else "#2a7" for n in names])
    for i, n in enumerate(names):
        ceiling = bandwidth_gbs * 1e9 / results[n].bytes_per_token
        ax.hlines(
            ceiling,
            i - 0.4,
            i + 0.4,
            colors="r",
            linestyles="--",
            label="bandwidth ceiling" if i == 0 else None,
        )
        if n in LLAMA_CPP_RATIO and "hf" in results:
            ref = LLAMA_CPP_RATIO[n] * results["hf"].median("tok_s")
            ax.plot(i, ref, "kD", label="llama.cpp (issue's ratio × this HF)" if n == "fp32" else None)
        ax.text(
            bars[i].get_x() + bars[i].get_width() / 2, tok_s[i], f"{tok_s[i]:.0f}", ha="center", va="bottom"
        )
    ax.set_xticks(range(len(names)), [LABELS[n].replace(", ", "\n") for n in names])
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI smoke run: 2 layers, few tokens, one round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median is reported)")
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-tokens", type=int, default=1000)
    p.add_argument("--layers", type=int, default=12, help="blocks (124M has 12)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--weights", default=None, help="a converted .safetensors checkpoint instead of random")
    p.add_argument("--plot", default="docs/decode_bench.png", help="PNG path ('' for none)")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    p.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt_tokens, args.new_tokens = 1, 8, 6
        args.prefill_tokens, args.layers, args.no_rss = 64, 2, True
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.rounds < 1 or args.layers < 1:
        p.error("need --new-tokens >= 2, --prompt-tokens >= 1, --rounds >= 1, --layers >= 1")
    if args.prompt_tokens + args.new_tokens > 1024 or args.prefill_tokens > 1024:
        p.error("prompt + new tokens and the prefill prompt must fit GPT-2's 1024 positions")
    args.variant_list = variants
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.rss_child:
        _rss_child(args.rss_child, args)
        return {}
    torch.set_num_threads(args.threads)
    config = GPT2Config(n_layer=args.layers)
    model = make_model(config, args.weights)
    torch.manual_seed(1)
    prompt = torch.randint(0, config.n_vocab, (1, args.prompt_tokens))
    long_prompt = torch.randint(0, config.n_vocab, (1, args.prefill_tokens))
    fidelity_idx = torch.randint(0, config.n_vocab, (1, 64))
    mean_context = args.prompt_tokens + args.new_tokens // 2

    runners: dict[str, Callable] = {}
    results: dict[str, Result] = {}
    for v in args.variant_list:
        results[v] = r = Result(v)
        if v == "hf":
            hf = hf_from_ours(model)
            runners[v] = (partial(greedy_hf, hf), partial(prefill_hf, hf))
            r.bytes_per_token = plain_bytes_per_token(model, mean_context)
            continue
        if v in ("bf16", "int8") and not bf16_supported():
            print(f"note: {v} falls back to fp32 on this CPU (no native bf16)", file=sys.stderr)
        runner = model if v == "plain" else FastGPT2(model, v)
        runners[v] = (partial(greedy_ours, runner), partial(prefill_ours, runner))
        if v == "plain":
            r.bytes_per_token = plain_bytes_per_token(model, mean_context)
        else:
            r.bytes_per_token = runner.weight_bytes_per_token() + runner.kv_bytes_per_token(mean_context)
        r.rel_logit_err = 0.0 if v == "plain" else relative_logit_error(runner, model, fidelity_idx)

    for _, (gen, pre) in runners.items():  # warm-up: first calls pay for lazy init and page faults
        gen(prompt[:, :4], 2)
        pre(long_prompt[:, :16])
    bandwidth = []
    names = list(runners)
    for rnd in range(args.rounds):
        bandwidth.append(read_bandwidth_gbs())
        order = names[rnd % len(names) :] + names[: rnd % len(names)]  # rotate: no variant always first
        for v in order:
            gen, pre = runners[v]
            ttft, tok_s, cpu_ms, tokens = gen(prompt, args.new_tokens)
            r = results[v]
            r.cpu_ms.append(cpu_ms)
            r.ttft_ms.append(ttft * 1000)
            r.tok_s.append(tok_s)
            r.tokens = tokens
            r.prefill_ms.append(pre(long_prompt) * 1000)
        print(
            f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{v} {results[v].tok_s[-1]:.1f}" for v in order),
            file=sys.stderr,
        )

    if not args.no_rss:
        child_argv = [a for a in argv if a != "--quick"]
        for v in names:
            results[v].peak_rss_mb = peak_rss_mb(v, child_argv)

    bw = max(bandwidth)
    rows = table(results)
    print(
        f"\nbatch 1, {args.threads} threads, greedy, {config.n_layer}-layer 124M shapes,"
        f" prompt {args.prompt_tokens} + {args.new_tokens} new tokens, prefill {args.prefill_tokens} tokens,"
        f" median of {args.rounds}"
        f" interleaved rounds; torch {torch.__version__}, bf16 native: {bf16_supported()},"
        f" native decode engine: {native_status()}, read bandwidth {bw:.1f} GB/s\n"
    )
    print(format_table(rows))
    same = {v: results[v].tokens == results["fp32"].tokens for v in results if "fp32" in results}
    if same:
        print(
            "\ngreedy tokens equal to fast fp32: "
            + ", ".join(f"{v} {'yes' if s else 'no'}" for v, s in same.items())
        )
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        title = f"GPT-2 124M shapes ({config.n_layer} layers), batch-1 decode, {args.threads} threads, CPU"
        plot(results, bw, Path(args.plot), title)
        print(f"plot: {args.plot}")
    summary = {
        "columns": list(COLUMNS),
        "rows": rows,
        "bandwidth_gbs": bw,
        "results": {v: asdict(r) for v, r in results.items()},
        "args": {k: v for k, v in vars(args).items() if k != "variant_list"},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
