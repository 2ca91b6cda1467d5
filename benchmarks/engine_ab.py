"""Two versions of the engine's source, timed against each other in one process, calls alternating.

    python -m benchmarks.engine_ab OLD.c gpt2/engine/csrc/decode.c --precisions fp32,bf16 --rows 1,8

Both files are compiled with the flags `gpt2.engine.build` uses (so `GPT2_NATIVE_MARCH` applies) and loaded
side by side; one model (random 124M-shaped weights by default) runs a decode step at context 20 for each row
count, alternating between the two libraries call by call (the order flips every round). On a shared
machine the speed drifts by 10-30 % within minutes; alternating makes both builds see the same drift, so
their ratio means something where two separate runs would not. Each line also says whether the two
builds' logits are the same bits (a kernel change meant to be exact should say True).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from gpt2 import GPT2
from gpt2.config import GPT2Config
from gpt2.engine import abi, build, prepare


def load(source: Path, folder: Path, tag: str) -> ctypes.CDLL:
    out = folder / f"engine-{tag}.so"
    compiler = os.environ.get("CC") or shutil.which("cc") or "gcc"  # as gpt2.engine.build builds it
    subprocess.run([compiler, *build.flags(), "-o", str(out), str(source)], check=True)
    lib = ctypes.CDLL(str(out))
    abi.declare(lib)
    abi.check_library(lib)
    return lib


def compare(model: GPT2, libs: list[ctypes.CDLL], rows: int, reps: int) -> tuple[list, list, bool]:
    """Median and least seconds per step for each library, and whether their logits were identical."""
    engine = model.runtime.engine.native
    cache = model.new_cache(max(rows, 1), 64)
    for s in range(rows):  # a 20-token context in every slot
        prompt = torch.randint(0, model.config.n_vocab, (20,))
        model.step(prompt, torch.arange(20), torch.full((20,), s), cache, logits_from=19)
    tokens = torch.randint(0, model.config.n_vocab, (rows,))
    positions, slots = torch.full((rows,), 20), torch.arange(rows)
    times: list[list[float]] = [[], []]
    logits: list[torch.Tensor | None] = [None, None]
    for r in range(reps + 2):  # the first two rounds warm up
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            engine._lib = libs[i]
            t = time.perf_counter()
            logits[i] = model.step(tokens, positions, slots, cache)
            if r >= 2:
                times[i].append(time.perf_counter() - t)
    medians = [sorted(t)[len(t) // 2] for t in times]
    return medians, [min(t) for t in times], bool(torch.equal(logits[0], logits[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path, help="the first decode.c (A)")
    p.add_argument("b", type=Path, help="the second decode.c (B)")
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--rows", default="1,8", help="rows per step (decode batch sizes)")
    p.add_argument("--reps", type=int, default=30, help="timed steps per build and row count")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not build.available("fp32"):
        raise SystemExit(f"the native engine is unavailable: {build.unavailable_reason()}")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        libs = [load(args.a, Path(folder), "a"), load(args.b, Path(folder), "b")]
        for precision in args.precisions.split(","):
            model = prepare(GPT2(GPT2Config(n_layer=args.layers)).eval(), precision, engine=True)
            for rows in (int(r) for r in args.rows.split(",")):
                med, low, same = compare(model, libs, rows, args.reps)
                print(
                    f"{precision} rows={rows}: A {med[0] * 1e3:.2f} ms (min {low[0] * 1e3:.2f}) | "
                    f"B {med[1] * 1e3:.2f} ms (min {low[1] * 1e3:.2f}) | B/A {med[1] / med[0]:.3f} | "
                    f"same bits {same}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
