"""`python -m benchmarks.decode --ab OLD.c NEW.c`: two versions of the engine's source, side by side.

Both files are compiled with the flags `gpt2.engine.build` uses (so `GPT2_NATIVE_MARCH` applies) and
loaded into one process; one model (random weights at `--size`'s shapes) runs a decode step at context
20 for each row count of `--rows`, alternating between the two libraries call by call (the order flips
every round). On a shared machine the speed drifts by 10-30 % within minutes; alternating makes both
builds see the same drift, so their ratio means something where two separate runs would not. Each line
also says whether the two builds' logits are the same bits (a change meant to be exact says True).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from gpt2 import GPT2, PRECISIONS, prepare
from gpt2.engine import abi, build


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--ab")
    g.add_argument(
        "--rows", default=None, help="comma-separated rows per step, decode batch sizes (default 1,8)"
    )
    g.add_argument("--reps", type=int, default=None, help="timed steps per build and row count (default 30)")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.ab:
        if args.rows is not None or args.reps is not None:
            p.error("--rows and --reps go with --ab")
        return
    missing = [str(f) for f in args.ab if not f.is_file()]
    if missing:
        p.error(f"--ab: no such file {', '.join(missing)}")
    try:
        args.row_counts = [int(r) for r in (args.rows or "1,8").split(",")]
    except ValueError:
        p.error(f"--rows must be comma-separated integers, got {args.rows!r}")
    args.reps = 30 if args.reps is None else args.reps
    if min(args.row_counts) < 1 or max(args.row_counts) > 64 or args.reps < 1:
        p.error("--rows each 1..64, --reps >= 1")
    if args.variants is not None and any(v not in PRECISIONS for v in args.variant_list):
        p.error(f"--ab takes our precisions as --variants: {', '.join(PRECISIONS)}")
    args.precisions = [v for v in args.variant_list if v in PRECISIONS]


def compile_library(source: Path, folder: Path, tag: str) -> ctypes.CDLL:
    out = folder / f"engine-{tag}.so"
    compiler = os.environ.get("CC") or shutil.which("cc") or "gcc"  # as gpt2.engine.build builds it
    subprocess.run([compiler, *build.flags(), "-o", str(out), str(source)], check=True)
    lib = ctypes.CDLL(str(out))
    abi.declare(lib)
    abi.check_library(lib)
    return lib


def compare(model: GPT2, libs: list[ctypes.CDLL], rows: int, reps: int) -> tuple[list, list, bool]:
    """Median and least seconds per step for each library, and whether their logits were identical."""
    native = model.runtime.engine.native
    cache = model.new_cache(rows, 64)
    for s in range(rows):  # a 20-token context in every slot
        prompt = torch.randint(0, model.config.n_vocab, (20,))
        model.step(prompt, torch.arange(20), torch.full((20,), s), cache, logits_from=19)
    tokens = torch.randint(0, model.config.n_vocab, (rows,))
    positions, slots = torch.full((rows,), 20), torch.arange(rows)
    times: list[list[float]] = [[], []]
    logits: list[torch.Tensor | None] = [None, None]
    for r in range(reps + 2):  # the first two rounds warm up
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            native._lib = libs[i]
            t = time.perf_counter()
            logits[i] = model.step(tokens, positions, slots, cache)
            if r >= 2:
                times[i].append(time.perf_counter() - t)
    medians = [statistics.median(t) for t in times]
    return medians, [min(t) for t in times], bool(torch.equal(logits[0], logits[1]))


def run(args: argparse.Namespace) -> dict:
    if not build.available("fp32"):
        raise SystemExit(f"the native engine is unavailable: {build.unavailable_reason()}")
    torch.manual_seed(0)
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        libs = [compile_library(source, Path(folder), tag) for source, tag in zip(args.ab, "ab")]
        for precision in args.precisions:
            model = prepare(GPT2(args.config).eval(), precision, engine=True)
            for rows in args.row_counts:
                med, low, same = compare(model, libs, rows, args.reps)
                out[f"{precision} rows={rows}"] = med[1] / med[0]
                print(
                    f"{precision} rows={rows}: A {med[0] * 1e3:.2f} ms (min {low[0] * 1e3:.2f}) | "
                    f"B {med[1] * 1e3:.2f} ms (min {low[1] * 1e3:.2f}) | B/A {med[1] / med[0]:.3f} | "
                    f"same bits {same}",
                    flush=True,
                )
    return out
