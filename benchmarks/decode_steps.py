"""One decode step at a time, ours and llama.cpp alternating in one process: decode ratios without drift.

    python -m benchmarks.decode_steps                   # fp32/bf16/int8 vs llama.cpp f32/f16/q8_0
    python -m benchmarks.decode_steps --small-pages     # plus ours with its weights left in 4 KB pages

`benchmarks.decode` alternates whole 128-token runs round by round; on a shared machine whose speed drifts by
10-30 % within minutes its decode ratios carry that drift. Here the systems take turns of a few decode
steps (context from ~20 to ~470 positions, 124M shapes, random weights), the order flipping every turn,
so every system sees the same moments. Only each turn's last step is timed (`--warm` untimed ones before
it): both systems keep their threads spinning for a while after a step (llama.cpp's OpenMP threads
~10 ms and more, the engine's 2 ms), and a step that starts while the other's threads still spin measures
the two fighting over the cores, which no user of either sees (nor the idle cores a pause would leave).
With one untimed step ours read bf16 0.80 and int8 0.99 of llama.cpp's speed; with two, 1.03-1.11 and
1.49-1.56, near what whole runs give (`benchmarks.decode`).
Prints the median ms per step and ours / llama.cpp per pairing, and the CPU's flags. Without
llama-cpp-python (benchmarks/requirements.txt) it times ours only and says why.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import llamacpp
from benchmarks.decode import cpu_summary, ours_stepper
from gpt2 import GPT2, GPT2Config, load_model, save_model
from gpt2.engine import attach

PEERS = {"fp32": "f32", "bf16": "f16", "int8": "q8_0"}
PROMPT = [464, 3290, 286, 262, 1578, 2585, 373, 257]


def in_small_pages(model: GPT2) -> GPT2:
    """`model` with every tensor copied back into torch's own (4 KB-page) memory, the engine re-bound."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.clone()
    model.runtime.huge_page_bytes = 0
    attach(model, required=model.runtime.engine is not None)
    return model


def ours(model: GPT2) -> Callable[[], object]:
    step = ours_stepper(model, 1024)  # each step adds a position: at most 1000 steps in all
    step(PROMPT)
    return lambda: step(PROMPT[-1:])


def theirs(path: Path, threads: int) -> Callable[[], object]:
    step = llamacpp.llama_stepper(llamacpp.load_llama(path, threads, 1024), 1024)
    step(PROMPT)
    return lambda: step(PROMPT[-1:])


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--small-pages", action="store_true", help="also time ours with 4 KB-page weights")
    p.add_argument("--warm", type=int, default=2, help="untimed steps before each timed one")
    args = p.parse_args(argv)
    precisions = [x for x in args.precisions.split(",") if x]
    if (
        not precisions
        or set(precisions) - set(PEERS)
        or not 0 <= args.warm <= 10
        or not 1 <= args.steps * (args.warm + 1) <= 1000
        or args.layers < 1
    ):
        p.error(
            f"--precisions from {', '.join(PEERS)}; --warm 0..10; --steps x (warm + 1) 1..1000; --layers 1+"
        )
    torch.set_num_threads(args.threads)
    missing = llamacpp.unavailable_reason()
    print(cpu_summary())
    if missing:
        print(f"llama.cpp: skipped, {missing}")
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpt2-steps-") as tmp:
        torch.manual_seed(0)
        base = GPT2(GPT2Config(n_layer=args.layers)).eval()
        weights = Path(tmp) / "model.safetensors"
        save_model(base, weights, name="steps")
        for precision in precisions:
            systems = {f"ours {precision}": ours(load_model(weights, precision=precision))}
            if args.small_pages:
                systems[f"ours {precision}, 4 KB pages"] = ours(
                    in_small_pages(load_model(weights, precision=precision))
                )
            peer = f"llama.cpp {PEERS[precision]}"
            if not missing:
                gguf = Path(tmp) / f"model-{PEERS[precision]}.gguf"
                llamacpp.write_gguf(base, gguf, PEERS[precision], llamacpp.default_bpe_dir())
                systems[peer] = theirs(gguf, args.threads)
            times: dict[str, list[float]] = {name: [] for name in systems}
            with torch.inference_mode():
                for i in range(args.steps):
                    for name, step in list(systems.items())[:: 1 if i % 2 else -1]:
                        for _ in range(args.warm):
                            step()
                        start = time.perf_counter()
                        step()
                        times[name].append(time.perf_counter() - start)
            medians.update({name: statistics.median(values) * 1000 for name, values in times.items()})
            for name in times:
                ratio = f" · {peer} / this {medians[peer] / medians[name]:.3f}" if peer in medians else ""
                print(f"{name:28s} {medians[name]:7.2f} ms/step{ratio}", flush=True)
    return medians


if __name__ == "__main__":
    main()
