"""The decode race (`python -m benchmarks.decode` without a mode): every variant on the same weights,
round after round in a rotating order.

Variants: "hf" (transformers' `generate`, fp32), "plain" (ours on PyTorch's path, fp32), each of our
precisions (the fast path: `gpt2.load_model(..., precision=)`, the native engine where it runs), and each
llama.cpp type ("llama-f32", ...). A round times, per variant, greedy decoding of the prompt
(`common.greedy`: time to first token, decode tok/s, CPU ms/token) and a prefill of each long prompt.
Before the rounds, each variant's logits are compared with the plain fp32 model's; after them, unless
`--no-rss`, each variant runs alone in a fresh process (`--child rss`) for its peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from benchmarks import common, llamacpp, results
from benchmarks.common import LLAMA_PREFIX, greedy, ours_stepper
from gpt2 import PRECISIONS, GPT2Config, load_model, read_metadata
from gpt2.engine import describe
from gpt2.engine.precision import weight_bytes_per_token


def label(variant: str) -> str:
    if variant.startswith(LLAMA_PREFIX):
        return "llama.cpp " + variant.removeprefix(LLAMA_PREFIX)
    return {"hf": "HF transformers fp32", "plain": "ours, PyTorch path fp32"}.get(variant, f"ours {variant}")


@dataclass
class Timings:
    """One variant's measurements, a value per round."""

    tok_s: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    prefill_ms: dict[int, list[float]] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- timing


def prefill_time(new_stepper, prompt: list[int]) -> float:
    """Seconds to run `prompt` into a fresh cache up to the last position's logits."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        new_stepper(len(prompt))(prompt)
        return time.perf_counter() - t0


def greedy_hf(hf, prompt: list[int], n_new: int) -> tuple[float, float, float, list[int]]:
    """`common.greedy` through `hf.generate`; a streamer stamps the time each new token comes out."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []

        def put(self, value: torch.Tensor) -> None:
            self.times.append((time.perf_counter(), time.process_time()))

        def end(self) -> None:
            pass

    stamps, ids = Stamps(), torch.tensor([prompt])
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=0,
            streamer=stamps,
        )
    (first, cpu_first), (last, cpu_last) = stamps.times[1], stamps.times[-1]  # put() #0 is the prompt
    tokens = out[0, len(prompt) :].tolist()
    return first - t0, (n_new - 1) / (last - first), (cpu_last - cpu_first) * 1000 / (n_new - 1), tokens


def prefill_hf(hf, prompt: list[int]) -> float:
    # What generate's first step does: all positions through the blocks, the head for the last one.
    with torch.inference_mode():
        t0 = time.perf_counter()
        hf(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0


def relative_logit_error(new_stepper, reference, ids: list[int]) -> float:
    """max |logits − fp32 logits| / max |fp32 logits| over the positions after the first 8, the logits
    taken as generation takes them: a prefill of 8 tokens, then one step per token."""
    with torch.inference_mode():
        want = reference(torch.tensor([ids]))[0, 7:-1]
        step = new_stepper(len(ids))
        got = [step(ids[:8])] + [step([t]) for t in ids[8:-1]]
    return ((torch.stack(got).float() - want).abs().max() / want.abs().max()).item()


def plain_bytes_per_token(config: GPT2Config, context: int) -> int:
    """fp32 bytes a decode step reads on the PyTorch/HF path: every parameter but the unused position
    rows (the tied head reads all of `wte`), plus the KV cache."""
    n = config.num_parameters() - (config.n_ctx - 1) * config.n_embd
    return 4 * n + 2 * config.n_layer * context * config.n_embd * 4


# ---------------------------------------------------------------------------------------------- variants


def weights_path(args: argparse.Namespace) -> Path:
    return Path(args.weights) if args.weights else Path(args.artifacts) / "model.safetensors"


def gguf_path(args: argparse.Namespace, variant: str) -> Path:
    return Path(args.artifacts) / f"model-{variant.removeprefix(LLAMA_PREFIX)}.gguf"


def mean_context(args: argparse.Namespace) -> int:
    return args.prompt_tokens + args.new_tokens // 2  # the mean context of a decode step


def new_stepper(args: argparse.Namespace, variant: str, model, c: GPT2Config):
    """(a function of max_len giving a fresh `step(tokens) -> logits`, bytes one decode step reads) for
    an ours or llama.cpp variant of the model with config `c`; `model`: the plain one, for "plain"."""
    context = mean_context(args)
    if variant.startswith(LLAMA_PREFIX):
        gguf = gguf_path(args, variant)
        n_bytes = llamacpp.gguf_weight_bytes_per_token(gguf) + llamacpp.kv_bytes_per_token(
            c.n_layer, c.n_embd, context
        )
        return partial(llamacpp.llama_stepper, llamacpp.load_llama(gguf, args.threads, c.n_ctx)), n_bytes
    if variant == "plain":
        return partial(ours_stepper, model), plain_bytes_per_token(c, context)
    runner = common.build_ours(weights_path(args), variant)
    if runner.runtime.engine is None:
        print(f"note: ours {variant} runs as {describe(runner)}", file=sys.stderr)
    kv = 2 * c.n_layer * context * c.n_embd * 4  # fp32 keys and values
    return partial(ours_stepper, runner), weight_bytes_per_token(runner) + kv


def rss_child(args: argparse.Namespace, variant: str) -> None:
    """In a fresh process: build one variant from the files the parent wrote, decode a few tokens, print
    the process's peak RSS (MB): what serving that variant alone costs."""
    prompt = torch.randint(0, 50257, (args.prompt_tokens,)).tolist()
    n_new = min(args.new_tokens, 8)
    if variant == "hf":
        greedy_hf(common.hf_from_ours(load_model(weights_path(args), engine=False)), prompt, n_new)
    else:
        model = load_model(weights_path(args), engine=False) if variant == "plain" else None
        config = read_metadata(weights_path(args))["config"]
        greedy(new_stepper(args, variant, model, config)[0], prompt, n_new)
    print(common.rss_mb()["peak"])


def peak_rss_mb(args: argparse.Namespace, variant: str) -> float | None:
    child = ["--artifacts", args.artifacts, "--child", "rss", variant]
    cmd = [sys.executable, "-m", "benchmarks.decode", *args.argv, *child]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=common.ROOT)
    if proc.returncode != 0:
        print(f"peak RSS of {variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(proc.stdout.split()[-1])


# ---------------------------------------------------------------------------------------------- the race


def run(args: argparse.Namespace, env: dict) -> dict:
    """Every variant, round after round in a rotating order; returns the results record."""
    path = Path(args.weights) if args.weights else common.random_weights(weights_path(args), args.config)
    model = load_model(path, engine=False)  # the PyTorch path, and the reference for the logit error
    config = model.config
    bpe_dir = Path(args.bpe_dir) if args.bpe_dir else llamacpp.default_bpe_dir()
    for v in args.variant_list:
        if v.startswith(LLAMA_PREFIX):
            llamacpp.gguf_for(model, Path(args.artifacts), v.removeprefix(LLAMA_PREFIX), bpe_dir)
    torch.manual_seed(1)
    prompt = torch.randint(0, config.n_vocab, (args.prompt_tokens,)).tolist()
    long_prompts = {n: torch.randint(0, config.n_vocab, (n,)).tolist() for n in args.prefill_lengths}
    fidelity_ids = torch.randint(0, config.n_vocab, (64,)).tolist()
    runners, info = {}, {}
    for v in args.variant_list:
        if v == "hf":
            hf = common.hf_from_ours(model)
            runners[v] = (partial(greedy_hf, hf), partial(prefill_hf, hf))
            info[v] = {"bytes": plain_bytes_per_token(config, mean_context(args)), "err": None}
            continue
        stepper, n_bytes = new_stepper(args, v, model, config)
        runners[v] = (partial(greedy, stepper), partial(prefill_time, stepper))
        err = 0.0 if v == "plain" else relative_logit_error(stepper, model, fidelity_ids)
        info[v] = {"bytes": n_bytes, "err": err}
    for gen, pre in runners.values():  # warm-up: first calls pay for lazy init and page faults
        gen(prompt[:4], 2)
        pre(long_prompts[args.prefill_lengths[0]][:16])
    timings = {v: Timings() for v in runners}
    names = list(runners)
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]  # no variant always first
        for v in order:
            gen, pre = runners[v]
            ttft, tok_s, cpu_ms, timings[v].tokens = gen(prompt, args.new_tokens)
            timings[v].tok_s.append(tok_s)
            timings[v].ttft_ms.append(ttft * 1000)
            timings[v].cpu_ms.append(cpu_ms)
            for n, long_prompt in long_prompts.items():
                timings[v].prefill_ms.setdefault(n, []).append(pre(long_prompt) * 1000)
        line = ", ".join(f"{v} {timings[v].tok_s[-1]:.1f}" for v in order)
        print(f"round {rnd + 1}/{args.rounds} tok/s: {line}", file=sys.stderr)
    del runners, model
    gc.collect()
    rss = {v: None if args.no_rss else peak_rss_mb(args, v) for v in names}
    return record(args, env, config, timings, info, rss)


def record(args, env: dict, config: GPT2Config, timings: dict, info: dict, rss: dict) -> dict:
    """The results record: settings, and per variant the medians (and every round's tok/s)."""
    med = statistics.median
    fp32_tokens = timings["fp32"].tokens if "fp32" in timings else None
    rows = []
    for v, t in timings.items():
        tok_s = med(t.tok_s)
        rows.append(
            {
                "variant": v,
                "label": label(v),
                "peer": common.peer_of(v) if v in PRECISIONS and common.peer_of(v) in timings else None,
                "tok_s": round(tok_s, 2),
                "cpu_ms_per_token": round(med(t.cpu_ms), 2),
                "ttft_ms": round(med(t.ttft_ms), 1),
                "prefill_ms": {str(n): round(med(ms), 1) for n, ms in t.prefill_ms.items()},
                "mb_per_token": round(info[v]["bytes"] / 1e6, 1),
                "gb_s": round(info[v]["bytes"] * tok_s / 1e9, 1),
                "peak_rss_mb": None if rss[v] is None else round(rss[v]),
                "rel_logit_err": None if info[v]["err"] is None else float(f"{info[v]['err']:.2g}"),
                "same_tokens_as_fp32": None if fp32_tokens is None else t.tokens == fp32_tokens,
                "tok_s_per_round": [round(x, 2) for x in t.tok_s],
            }
        )
    settings = {
        "shapes": args.size,
        "layers": config.n_layer,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "prefill_tokens": args.prefill_lengths,
        "rounds": args.rounds,
        "weights": "random" if not args.weights else Path(args.weights).name,
        "llama_note": args.llama_note,
    }
    name = "decode" if args.size == "124M" else f"decode-{args.size}"  # its results file and README block
    return {"benchmark": name, "environment": env, "settings": settings, "variants": rows}


def print_race(rec: dict) -> None:
    """Every column of the record, one row per variant; ratios are ours / the other of medians."""
    lengths = [str(n) for n in rec["settings"]["prefill_tokens"]]
    longest = lengths[-1]
    by_name = {r["variant"]: r for r in rec["variants"]}
    hf = by_name.get("hf")
    header = ["variant", "tok/s", "ms/tok", "CPU ms/tok", "TTFT ms", *(f"prefill {n} ms" for n in lengths)]
    header += ["MB/tok", "GB/s", "peak RSS MB", "x HF tok/s", f"prefill {longest} / HF"]
    header += ["ours/llama tok/s", f"ours/llama prefill {longest}", "rel logit err"]
    rows = []
    for r in rec["variants"]:
        peer = by_name.get(r["peer"] or "")
        rows.append(
            [
                r["label"],
                f"{r['tok_s']:.1f}",
                f"{1000 / r['tok_s']:.2f}",
                f"{r['cpu_ms_per_token']:.2f}",
                f"{r['ttft_ms']:.1f}",
                *(f"{r['prefill_ms'][n]:.0f}" for n in lengths),
                f"{r['mb_per_token']:.0f}",
                f"{r['gb_s']:.1f}",
                "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']}",
                results.ratio(r["tok_s"], hf and hf["tok_s"]),
                results.ratio(r["prefill_ms"][longest], hf and hf["prefill_ms"][longest]),
                results.ratio(r["tok_s"], peer and peer["tok_s"]),
                results.ratio(r["prefill_ms"][longest], peer and peer["prefill_ms"][longest]),
                "-" if r["rel_logit_err"] is None else f"{r['rel_logit_err']:.1e}",
            ]
        )
    print(f"\n{results.markdown(header, rows, pad=True)}")
    same = [f"{r['variant']} {'yes' if r['same_tokens_as_fp32'] else 'no'}" for r in rec["variants"]]
    if "fp32" in by_name:
        print(f"\ngreedy tokens equal to ours fp32: {', '.join(same)}")
