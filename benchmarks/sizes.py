"""Our model at GPT-2's four sizes: decode tok/s, peak RSS and load time, per precision.

    python -m benchmarks.decode --sizes 124M,355M,774M,1558M [--rounds 3] [--new-tokens 32]

Weights are random at each size's real shapes, saved once per size as a `.safetensors` file; then each
precision runs in a fresh process, so its peak RSS is that model's alone and its load time is a cold
build from the file (`decode.build_ours`: `gpt2.load_model`, then packing). The file is deleted before
the next size, and the parent holds no model while the children run (1558M fp32 is 6.2 GB).
The last line says which size and precision a 2-vCPU / 16 GB Space can serve at >= 15 tok/s.
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
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.decode import OURS, ROOT, build_ours, format_table, greedy, ours_stepper, peak_rss_self_mb
from gpt2 import GPT2, SIZES, GPT2Config, save_model

# The Space the verdict is for: 2 vCPUs, 16 GB; the app, Python and the OS need some of that memory.
SPACE_MEMORY_MB = 16 * 1024
APP_HEADROOM_MB = 2 * 1024
TARGET_TOK_S = 15.0
COLUMNS = ("size", "params M", "precision", "runs as", "load s", "tok/s", "ms/tok", "peak RSS MB")


def _child_main(argv: list[str]) -> None:
    """In a fresh process: build from the file, decode greedily `rounds` times, print a JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("precision", choices=OURS)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--prompt-tokens", type=int, required=True)
    p.add_argument("--new-tokens", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    runner = build_ours(a.path, a.precision)
    load_s = time.perf_counter() - t0
    gc.collect()  # the fp32 stepping stone is garbage once packed
    torch.manual_seed(1)
    prompt = torch.randint(0, runner.config.n_vocab, (1, a.prompt_tokens))
    new_stepper = partial(ours_stepper, runner)
    greedy(new_stepper, prompt[:, :4], 2)  # warm-up: lazy init, first touch of every page
    tok_s = statistics.median(greedy(new_stepper, prompt, a.new_tokens)[1] for _ in range(a.rounds))
    result = {
        "load_s": load_s,
        "tok_s": tok_s,
        "runs_as": runner.runtime.precision
        if runner.runtime.engine is not None
        else f"{runner.runtime.precision} (PyTorch)",
        "peak_rss_mb": peak_rss_self_mb(),
    }
    print(json.dumps(result))


@dataclasses.dataclass
class SizeResult:
    size: str
    params_m: float
    precision: str
    runs_as: str = "-"
    load_s: float = float("nan")
    tok_s: float = float("nan")
    peak_rss_mb: float = float("nan")
    error: str = ""


def run_child(path: Path, precision: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.sizes",
        str(path),
        precision,
        f"--threads={args.threads}",
        f"--prompt-tokens={args.prompt_tokens}",
        f"--new-tokens={args.new_tokens}",
        f"--rounds={args.rounds}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-1500:] or f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(results: list[SizeResult]) -> str:
    """The largest size (then the fastest precision) meeting the Space's speed and memory bounds."""
    budget = SPACE_MEMORY_MB - APP_HEADROOM_MB
    ok = [r for r in results if not r.error and r.tok_s >= TARGET_TOK_S and r.peak_rss_mb <= budget]
    bounds = f">= {TARGET_TOK_S:.0f} tok/s and peak RSS <= {budget / 1024:.0f} GB"
    if not ok:
        return f"verdict: no size/precision measured here reaches {bounds} on 2 vCPUs / 16 GB"
    best = max(ok, key=lambda r: (r.params_m, r.tok_s))
    note = f" (runs as {best.runs_as} on this CPU)" if best.runs_as != best.precision else ""
    return (
        f"verdict: a 2-vCPU / 16 GB Space can serve up to {best.size} {best.precision}{note} at"
        f" {best.tok_s:.1f} tok/s, {best.peak_rss_mb / 1024:.1f} GB peak RSS ({bounds}, 2 threads here)"
    )


def run_sizes(args: argparse.Namespace) -> dict:
    """The sizes table for `args.sizes` (names from `gpt2.SIZES`) in our precisions of `args.variant_list`."""
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")
    precisions = [v for v in args.variant_list if v in OURS]
    if not precisions:
        raise SystemExit(f"--sizes times our precisions only: give --variants from {', '.join(OURS)}")
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="gpt2-sizes-") as tmp:
        for size in sizes:
            config = GPT2Config.from_name(size)
            if args.layers:  # a smoke run: the size's widths, fewer blocks
                config = dataclasses.replace(config, n_layer=args.layers)
            path = Path(tmp) / f"gpt2-{size}.safetensors"
            torch.manual_seed(0)
            model = GPT2(config)
            save_model(model, path, name=size)
            params_m = config.num_parameters() / 1e6
            del model
            gc.collect()
            for precision in precisions:
                r = SizeResult(size, params_m, precision)
                try:
                    got = run_child(path, precision, args)
                    r.runs_as, r.load_s, r.tok_s, r.peak_rss_mb = (
                        got["runs_as"],
                        got["load_s"],
                        got["tok_s"],
                        got["peak_rss_mb"],
                    )
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
                    r.error = str(exc)
                    print(f"{size} {precision} failed: {exc}", file=sys.stderr)
                results.append(r)
                print(f"{size} {precision}: {r.tok_s:.1f} tok/s, {r.peak_rss_mb:.0f} MB", file=sys.stderr)
            path.unlink()
    rows = [
        [
            r.size,
            f"{r.params_m:.0f}",
            r.precision,
            r.runs_as,
            f"{r.load_s:.2f}",
            f"{r.tok_s:.1f}",
            f"{1000 / r.tok_s:.1f}" if r.tok_s > 0 else "-",
            f"{r.peak_rss_mb:.0f}",
        ]
        for r in results
    ]
    layers = f", {args.layers} layers each" if args.layers else ""
    print(
        f"\nsizes: batch 1, {args.threads} threads, greedy, prompt {args.prompt_tokens} + {args.new_tokens}"
        f" new tokens, median of {args.rounds} runs in one fresh process per size/precision{layers}\n"
    )
    print(format_table(list(COLUMNS), rows))
    line = verdict(results)
    print(f"\n{line}")
    summary = {"columns": list(COLUMNS), "rows": rows, "verdict": line}
    summary["results"] = [dataclasses.asdict(r) for r in results]
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    _child_main(sys.argv[1:])
