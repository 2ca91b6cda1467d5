"""Batch-1 CPU decoding: our GPT-2 (plain and fast paths, fp32/bf16/int8) against Hugging Face
transformers and llama.cpp (f32/f16/q8_0 GGUFs of the same weights).

    python -m benchmarks.decode                 # full run: 124M shapes, 20-token prompt + 128 new tokens
    python -m benchmarks.decode --quick         # a few tokens, 2 layers: the CI smoke run
    python -m benchmarks.decode --sizes 124M,355M,774M,1558M   # ours per size: tok/s, peak RSS, load time

Every variant runs once per round, in an order rotated each round, so all of them share the same noise;
the tables report medians over rounds, the ratios to HF, and each of our precisions against its
llama.cpp peer. Weights are random (speed does not depend on their values) unless `--weights` names a
converted checkpoint; HF, ours and llama.cpp all get the same weights. llama.cpp needs the packages in
`benchmarks/requirements.txt`; without them its rows are skipped with a printed note.

Columns: decode tok/s and ms/token (tokens after the first), time to first token (prefill of the prompt
plus the first argmax), prefill time of each long prompt, bytes read per token (weights actually touched +
KV cache at the mean context), achieved GB/s (bytes × tok/s), peak RSS of a process that runs only that
variant, and the relative logit error against the fp32 reference path. docs/benchmarks.md has more.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from benchmarks import llamacpp
from gpt2 import GPT2, GPT2Config, load_model, save_model
from gpt2.engine import build, describe
from gpt2.engine.precision import weight_bytes_per_token

OURS = ("fp32", "bf16", "int8")
# Each of our precisions races the llama.cpp type closest to it in bytes per weight.
PAIRS = {"fp32": "llama-f32", "bf16": "llama-f16", "int8": "llama-q8_0"}
LLAMA = tuple(PAIRS.values())
VARIANTS = ("hf", "plain", *OURS, *LLAMA)
LABELS = {
    "hf": "HF transformers fp32",
    "plain": "ours, plain fp32",
    "fp32": "ours, fast fp32",
    "bf16": "ours, fast bf16",
    "int8": "ours, fast int8",
    "llama-f32": "llama.cpp f32",
    "llama-f16": "llama.cpp f16",
    "llama-q8_0": "llama.cpp q8_0",
}
# llama.cpp on this project's machines, from the issue, as multiples of HF's fp32 tok/s measured there:
# drawn in the plot only when llama.cpp itself was not measured.
LLAMA_CPP_RATIO = {"fp32": 110 / 35, "bf16": 180 / 35, "int8": 240 / 35}
ROOT = Path(__file__).resolve().parents[1]


def columns(prefill_lengths: list[int]) -> list[str]:
    """The main table's header: one prefill column per long-prompt length."""
    return [
        "variant",
        "tok/s",
        "ms/tok",
        "CPU ms/tok",
        "TTFT ms",
        *(f"prefill {n} ms" for n in prefill_lengths),
        "MB/tok",
        "GB/s",
        "peak RSS MB",
        "x HF tok/s",
        "x HF CPU",
        "prefill / HF",
        "rel logit err",
    ]


def pair_columns(prefill_lengths: list[int]) -> list[str]:
    """The ours-vs-llama.cpp table's header; every ratio is ours / llama.cpp of the quantity beside it."""
    cols = ["ours vs llama.cpp", "tok/s ours", "tok/s llama", "tok/s ours/llama"]
    for n in prefill_lengths:
        cols += [f"prefill {n} ms ours", f"prefill {n} ms llama", f"prefill {n} ours/llama"]
    return cols


@dataclass
class Result:
    variant: str
    tok_s: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    prefill_ms: dict[int, list[float]] = field(default_factory=dict)
    cpu_ms: list[float] = field(default_factory=list)
    bytes_per_token: int = 0
    peak_rss_mb: float | None = None
    rel_logit_err: float | None = None
    tokens: list[int] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")

    def median_prefill(self, n: int) -> float:
        values = self.prefill_ms.get(n)
        return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------- models


def make_model(config: GPT2Config, weights: str | None, seed: int = 0) -> GPT2:
    if weights:
        return load_model(weights).eval()
    torch.manual_seed(seed)
    return GPT2(config).eval()  # GPT-2's own initialisation: random, realistically scaled


def build_ours(path: str | os.PathLike[str], precision: str):
    """Our fast model in `precision` ("fp32", "bf16", "int8") from a weights file: the one place the
    benchmark builds it (the sizes run times this call as the load time), so a new loader is a change
    here only. The native engine is attached where it runs that precision (the start-up note says if not)."""
    return load_model(path, precision=precision)


def ours_stepper(runner: GPT2, max_len: int) -> Callable[[list[int]], torch.Tensor]:
    """The one place the benchmark drives our model's API: a fresh KV cache for `max_len` positions,
    then `step(tokens)` runs the tokens after what is cached through `GPT2.step` (a prompt, or one token)
    and returns the last position's logits (fp32, `(n_vocab,)`). Call it under `torch.inference_mode()`.
    `benchmarks.llamacpp.llama_stepper` is the same for llama.cpp."""
    cache = runner.new_cache(1, max_len=max_len)
    filled = [0]

    def step(tokens: list[int]) -> torch.Tensor:
        n, start = len(tokens), filled[0]
        positions = torch.arange(start, start + n)
        logits = runner.step(torch.tensor(tokens), positions, torch.zeros(n, dtype=torch.long), cache, n - 1)
        filled[0] = start + n
        return logits[0]

    return step


def hf_from_ours(model: GPT2):
    """transformers' GPT2LMHeadModel holding our weights: the same mapping the parity tests use
    (`tests/reference.py`), with transformers' default (fast) attention for a fair race."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.reference import hf_from_ours as reference_hf

    return reference_hf(model, attn_implementation="sdpa")


def native_status() -> str:
    """Which precisions our variants decode with gpt2/engine/csrc/decode.c (else PyTorch's path)."""
    on = [p for p in OURS if build.available(p)]
    return ", ".join(on) if on else f"off ({build.unavailable_reason()})"


def cpu_summary() -> str:
    """The CPU's model and the SIMD flags that decide which kernels each engine can use."""
    wanted = (
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
    )
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "CPU: unknown (no /proc/cpuinfo)"
    first = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")  # noqa: E731
    flags = set(first("flags").split())
    have = [f for f in wanted if f in flags]
    lack = [f for f in wanted if f not in flags]
    model = first("model name") or "unknown"
    return f"CPU: {model}; flags: {' '.join(have) or '-'} (no {' '.join(lack) or '-'})"


def plain_bytes_per_token(model: GPT2, context: int) -> int:
    """fp32 bytes a decode step reads on the plain/HF path: every parameter except the unused
    embedding rows (the tied head reads all of `wte`), plus the KV cache."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - c.n_ctx * c.n_embd + c.n_embd  # one wpe row
    return 4 * n + 2 * c.n_layer * context * c.n_embd * 4


# ---------------------------------------------------------------------------------------------- timing


def greedy(
    new_stepper: Callable[[int], Callable], prompt: torch.Tensor, n_new: int
) -> tuple[float, float, float, list[int]]:
    """(time to first token s, decode tok/s, CPU ms/token, tokens) of greedy prefill + one-token steps."""
    ids = prompt[0].tolist()
    with torch.inference_mode():
        t0 = time.perf_counter()
        step = new_stepper(len(ids) + n_new)
        token = int(step(ids).argmax())
        t1, c1 = time.perf_counter(), time.process_time()
        tokens = [token]
        for _ in range(n_new - 1):
            token = int(step([token]).argmax())
            tokens.append(token)
        t2, c2 = time.perf_counter(), time.process_time()
    return t1 - t0, (n_new - 1) / (t2 - t1), (c2 - c1) * 1000 / (n_new - 1), tokens


def prefill_time(new_stepper: Callable[[int], Callable], prompt: torch.Tensor) -> float:
    """Seconds to run `prompt` into a fresh cache up to the last position's logits."""
    ids = prompt[0].tolist()
    with torch.inference_mode():
        t0 = time.perf_counter()
        new_stepper(len(ids))(ids)
        return time.perf_counter() - t0


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


def relative_logit_error(new_stepper: Callable[[int], Callable], reference: GPT2, idx: torch.Tensor) -> float:
    """max |logits − fp32 logits| / max |fp32 logits| over the positions of `idx` after its first 8,
    the logits taken as generation takes them: a prefill of the first 8 tokens, then one step per token
    (the path the speed columns time, native engine or llama.cpp included)."""
    ids = idx[0].tolist()
    with torch.inference_mode():
        want = reference(idx)[0, 7:-1]  # (T - 8, V)
        step = new_stepper(len(ids))
        got = [step(ids[:8])] + [step([t]) for t in ids[8:-1]]
    return ((torch.stack(got).float() - want).abs().max() / want.abs().max()).item()


# ---------------------------------------------------------------------------------------------- artifacts


def weights_path(args: argparse.Namespace) -> Path:
    """The weights file every engine is built from: `--weights`, or the random model saved by `main`."""
    return Path(args.weights) if args.weights else Path(args.artifacts) / "model.safetensors"


def gguf_path(args: argparse.Namespace, variant: str) -> Path:
    return Path(args.artifacts) / f"model-{variant.removeprefix('llama-')}.gguf"


def llama_runner(args: argparse.Namespace, variant: str, n_ctx: int):
    return llamacpp.load_llama(gguf_path(args, variant), args.threads, n_ctx)


# ---------------------------------------------------------------------------------------------- peak RSS


def peak_rss_self_mb() -> float:
    """This process's own peak RSS in MB (VmHWM; ru_maxrss would carry the parent's over fork + exec)."""
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        if hwm:
            return int(hwm[0].split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_child(variant: str, args: argparse.Namespace) -> None:
    """Run one variant alone, from the files `main` wrote, and print its peak RSS (MB): what serving
    that variant costs."""
    torch.set_num_threads(args.threads)
    n_ctx = GPT2Config(n_layer=args.layers).n_ctx
    prompt = torch.randint(0, 50257, (1, args.prompt_tokens))
    n_new = min(args.new_tokens, 8)
    if variant == "hf":
        runner = hf_from_ours(load_model(weights_path(args)))
        gc.collect()  # only the HF copy stays
        greedy_hf(runner, prompt, n_new)
    elif variant in LLAMA:
        greedy(partial(llamacpp.llama_stepper, llama_runner(args, variant, n_ctx)), prompt, n_new)
    else:
        runner = (
            load_model(weights_path(args)) if variant == "plain" else build_ours(weights_path(args), variant)
        )
        greedy(partial(ours_stepper, runner), prompt, n_new)
    print(peak_rss_self_mb())


def peak_rss_mb(variant: str, argv: list[str]) -> float | None:
    cmd = [sys.executable, "-m", "benchmarks.decode", *argv, "--rss-child", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0:
        print(f"peak RSS for {variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if b and b == b and a == a else "-"  # NaN != NaN


def table(results: dict[str, Result], prefill_lengths: list[int]) -> list[list[str]]:
    hf = results.get("hf")
    longest = prefill_lengths[-1]
    rows = []
    for name, r in results.items():
        tok_s = r.median("tok_s")
        rows.append(
            [
                LABELS[name],
                f"{tok_s:.1f}",
                f"{1000 / tok_s:.2f}",
                f"{r.median('cpu_ms'):.2f}",
                f"{r.median('ttft_ms'):.1f}",
                *(f"{r.median_prefill(n):.0f}" for n in prefill_lengths),
                f"{r.bytes_per_token / 1e6:.0f}",
                f"{r.bytes_per_token * tok_s / 1e9:.1f}",
                "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
                "-" if hf is None else ratio(tok_s, hf.median("tok_s")),
                "-" if hf is None else ratio(hf.median("cpu_ms"), r.median("cpu_ms")),
                "-" if hf is None else ratio(r.median_prefill(longest), hf.median_prefill(longest)),
                "-" if r.rel_logit_err is None else f"{r.rel_logit_err:.1e}",
            ]
        )
    return rows


def pair_table(results: dict[str, Result], prefill_lengths: list[int]) -> list[list[str]]:
    """One row per precision pairing measured on both sides: medians and ours / llama.cpp."""
    rows = []
    for ours, peer in PAIRS.items():
        if ours not in results or peer not in results:
            continue
        a, b = results[ours], results[peer]
        row = [
            f"{ours} vs {peer.removeprefix('llama-')}",
            f"{a.median('tok_s'):.1f}",
            f"{b.median('tok_s'):.1f}",
            ratio(a.median("tok_s"), b.median("tok_s")),
        ]
        for n in prefill_lengths:
            pa, pb = a.median_prefill(n), b.median_prefill(n)
            row += [f"{pa:.0f}", f"{pb:.0f}", ratio(pa, pb)]
        rows.append(row)
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def plot(results: dict[str, Result], bandwidth_gbs: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    tok_s = [results[n].median("tok_s") for n in names]
    colors = ["#888" if n in ("hf", "plain") else "#37a" if n in LLAMA else "#2a7" for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names)), 4.5))
    bars = ax.bar(range(len(names)), tok_s, color=colors)
    measured_llama = any(n in LLAMA for n in names)
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
        if n in LLAMA_CPP_RATIO and "hf" in results and not measured_llama:
            ref = LLAMA_CPP_RATIO[n] * results["hf"].median("tok_s")
            ax.plot(i, ref, "kD", label="llama.cpp (issue's ratio × this HF)" if n == "fp32" else None)
        ax.text(
            bars[i].get_x() + bars[i].get_width() / 2, tok_s[i], f"{tok_s[i]:.0f}", ha="center", va="bottom"
        )
    ax.set_xticks(range(len(names)), [LABELS[n].replace(", ", "\n").replace(" ", "\n", 1) for n in names])
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
    p.add_argument("--prefill-tokens", default="512,1000", help="comma-separated long-prompt lengths")
    p.add_argument("--layers", type=int, default=None, help="blocks (default: the size's own; 124M has 12)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--weights", default=None, help="a converted .safetensors checkpoint instead of random")
    p.add_argument(
        "--bpe-dir", default=None, help="GPT-2's encoder.json + vocab.bpe, for the GGUF vocabulary"
    )
    p.add_argument("--sizes", default="", help="run the sizes table instead, e.g. 124M,355M,774M,1558M")
    p.add_argument("--plot", default="docs/decode_bench.png", help="PNG path ('' for none)")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    p.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    p.add_argument("--artifacts", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt_tokens, args.new_tokens = 1, 8, 6
        args.prefill_tokens, args.no_rss = "64", True
        args.layers = args.layers or 2
    try:
        args.prefill_lengths = sorted({int(n) for n in args.prefill_tokens.split(",") if n.strip()})
    except ValueError:
        p.error(f"--prefill-tokens must be comma-separated integers, got {args.prefill_tokens!r}")
    explicit = args.variants is not None
    variants = [v for v in (args.variants or ",".join(VARIANTS)).split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    args.llama_note = ""
    reason = llamacpp.unavailable_reason()
    if reason and any(v in LLAMA for v in variants):
        if explicit:
            p.error(f"llama.cpp variants asked for, but {reason}")
        variants = [v for v in variants if v not in LLAMA]
        args.llama_note = f"note: llama.cpp rows skipped: {reason}"
    if not args.quick and args.layers is None and not args.sizes:
        args.layers = 12
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.rounds < 1 or (args.layers or 1) < 1:
        p.error("need --new-tokens >= 2, --prompt-tokens >= 1, --rounds >= 1, --layers >= 1")
    if args.threads < 1:
        p.error("need --threads >= 1")
    if not args.prefill_lengths or min(args.prefill_lengths) < 9:
        p.error("--prefill-tokens: each length must be at least 9 (the warm-up runs 8-token prompts)")
    if args.prompt_tokens + args.new_tokens > 1024 or max(args.prefill_lengths) > 1024:
        p.error("prompt + new tokens and the prefill prompts must fit GPT-2's 1024 positions")
    args.variant_list = variants
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.rss_child:
        _rss_child(args.rss_child, args)
        return {}
    if args.sizes:
        from benchmarks.sizes import run_sizes

        return run_sizes(args)
    if args.llama_note:
        print(args.llama_note)
    with tempfile.TemporaryDirectory(prefix="gpt2-bench-") as artifacts:
        args.artifacts = artifacts
        return run(args, [*(a for a in argv if a != "--quick"), f"--layers={args.layers}"])


def prepare(args: argparse.Namespace, model: GPT2) -> None:
    """Write the weights every engine is built from: our safetensors file (unless `--weights` names
    one) and a GGUF per llama.cpp variant asked for."""
    if not args.weights:
        save_model(model, weights_path(args), name="bench")
    bpe_dir = Path(args.bpe_dir) if args.bpe_dir else llamacpp.default_bpe_dir()
    for v in args.variant_list:
        if v in LLAMA:
            llamacpp.write_gguf(model, gguf_path(args, v), v.removeprefix("llama-"), bpe_dir)


def run(args: argparse.Namespace, child_argv: list[str]) -> dict:
    torch.set_num_threads(args.threads)
    config = GPT2Config(n_layer=args.layers)
    model = make_model(config, args.weights)
    config = model.config
    prepare(args, model)
    torch.manual_seed(1)
    prompt = torch.randint(0, config.n_vocab, (1, args.prompt_tokens))
    long_prompts = {n: torch.randint(0, config.n_vocab, (1, n)) for n in args.prefill_lengths}
    fidelity_idx = torch.randint(0, config.n_vocab, (1, 64))
    mean_context = args.prompt_tokens + args.new_tokens // 2

    runners: dict[str, tuple[Callable, Callable]] = {}
    results: dict[str, Result] = {}
    for v in args.variant_list:
        results[v] = r = Result(v)
        if v == "hf":
            hf = hf_from_ours(model)
            runners[v] = (partial(greedy_hf, hf), partial(prefill_hf, hf))
            r.bytes_per_token = plain_bytes_per_token(model, mean_context)
            continue
        if v in LLAMA:
            new_stepper = partial(llamacpp.llama_stepper, llama_runner(args, v, config.n_ctx))
            r.bytes_per_token = llamacpp.gguf_weight_bytes_per_token(gguf_path(args, v))
            r.bytes_per_token += llamacpp.kv_bytes_per_token(config.n_layer, config.n_embd, mean_context)
        elif v == "plain":
            new_stepper = partial(ours_stepper, model)
            r.bytes_per_token = plain_bytes_per_token(model, mean_context)
        else:
            runner = build_ours(weights_path(args), v)
            if runner.runtime.engine is None:
                print(f"note: ours {v} runs as {describe(runner)}", file=sys.stderr)
            new_stepper = partial(ours_stepper, runner)
            kv_bytes = 2 * config.n_layer * mean_context * config.n_embd * 4  # fp32 keys and values read
            r.bytes_per_token = weight_bytes_per_token(runner) + kv_bytes
        runners[v] = (partial(greedy, new_stepper), partial(prefill_time, new_stepper))
        r.rel_logit_err = 0.0 if v == "plain" else relative_logit_error(new_stepper, model, fidelity_idx)

    for gen, pre in runners.values():  # warm-up: first calls pay for lazy init and page faults
        gen(prompt[:, :4], 2)
        pre(long_prompts[args.prefill_lengths[0]][:, :16])
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
            for n, long_prompt in long_prompts.items():
                r.prefill_ms.setdefault(n, []).append(pre(long_prompt) * 1000)
        print(
            f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{v} {results[v].tok_s[-1]:.1f}" for v in order),
            file=sys.stderr,
        )

    del runners, model
    gc.collect()
    if not args.no_rss:
        for v in names:
            results[v].peak_rss_mb = peak_rss_mb(v, [*child_argv, f"--artifacts={args.artifacts}"])
    return report(args, config, results, max(bandwidth))


def report(args: argparse.Namespace, config: GPT2Config, results: dict[str, Result], bw: float) -> dict:
    lengths = args.prefill_lengths
    rows = table(results, lengths)
    pairs = pair_table(results, lengths)
    print(
        f"\nbatch 1, {args.threads} threads, greedy, {config.n_layer}-layer 124M shapes,"
        f" prompt {args.prompt_tokens} + {args.new_tokens} new tokens, prefill {'/'.join(map(str, lengths))}"
        f" tokens, median of {args.rounds} interleaved rounds; torch {torch.__version__},"
        f" native decode engine: {native_status()},"
        f" read bandwidth {bw:.1f} GB/s\n{cpu_summary()}"
    )
    if any(v in LLAMA for v in results):
        print(f"llama.cpp system info: {llamacpp.system_info()}")
    elif args.llama_note:
        print(args.llama_note)
    print()
    print(format_table(columns(lengths), rows))
    if pairs:
        print("\nours / llama.cpp (tok/s ratio > 1: ours faster; prefill ms ratio < 1: ours faster)\n")
        print(format_table(pair_columns(lengths), pairs))
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
        "columns": columns(lengths),
        "rows": rows,
        "pair_columns": pair_columns(lengths),
        "pairs": pairs,
        "bandwidth_gbs": bw,
        "llama_note": args.llama_note,
        "results": {v: asdict(r) for v, r in results.items()},
        "args": {k: v for k, v in vars(args).items() if k not in ("variant_list", "artifacts")},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
