"""`python -m benchmarks.decode --steps [N]`: ours and llama.cpp taking turns, one decode step each.

The race (`benchmarks.decode`) alternates whole 128-token runs round by round; on a shared machine whose
speed drifts by 10-30 % within minutes, its decode ratios carry that drift. Here each of our precisions
and its llama.cpp peer (`common.PAIRS`, same weights) take N turns (default 150), the order flipping every
turn, so both see the same moments; the context grows by one position a step. Only each turn's last step
is timed, after `--warm` untimed ones (default 2): both systems keep their threads spinning for a while
after a step (llama.cpp's OpenMP threads ~10 ms and more, our engine's 2 ms), and a step that starts
while the other's threads still spin measures the two fighting over the cores, which no user of either
sees. `--small-pages` also times ours with its weights copied back into 4 KB pages (what huge pages
buy). Prints the median ms per step and llama.cpp / ours per pairing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import common, llamacpp
from gpt2 import GPT2, PRECISIONS
from gpt2.engine import attach

PROMPT = [464, 3290, 286, 262, 1578, 2585, 373, 257]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--steps")
    g.add_argument("--warm", type=int, default=None, help="untimed steps before each timed one (default 2)")
    g.add_argument("--small-pages", action="store_true", help="also time ours with 4 KB-page weights")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.steps is None:
        if args.warm is not None or args.small_pages:
            p.error("--warm and --small-pages go with --steps")
        return
    args.warm = 2 if args.warm is None else args.warm
    room = args.config.n_ctx - len(PROMPT)
    if not 0 <= args.warm <= 10 or args.steps < 1 or args.steps * (args.warm + 1) > room:
        p.error(
            f"--warm 0..10, and --steps x (warm + 1) must be 1..{room} (the positions left after the prompt)"
        )
    if args.variants is not None and any(v not in PRECISIONS for v in args.variant_list):
        p.error(f"--steps takes our precisions as --variants: {', '.join(PRECISIONS)}")
    args.precisions = [v for v in args.variant_list if v in PRECISIONS]


def in_small_pages(model: GPT2) -> GPT2:
    """`model` with every tensor copied back into torch's own (4 KB-page) memory, the engine re-bound."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.clone()
    model.runtime.huge_page_bytes = 0
    attach(model, required=model.runtime.engine is not None)
    return model


def turn_taker(step: Callable[[list[int]], object]) -> Callable[[], object]:
    """After the prompt, each call decodes one more token."""
    step(PROMPT)
    return lambda: step(PROMPT[-1:])


def take_turns(systems: dict[str, Callable[[], object]], turns: int, warm: int) -> dict[str, float]:
    """Median ms of each system's timed step, the order flipping every turn."""
    times: dict[str, list[float]] = {name: [] for name in systems}
    with torch.inference_mode():
        for i in range(turns):
            for name, step in list(systems.items())[:: 1 if i % 2 else -1]:
                for _ in range(warm):
                    step()
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def run(args: argparse.Namespace, env: dict) -> dict[str, float]:
    missing = llamacpp.unavailable_reason()
    max_len = args.config.n_ctx
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpt2-steps-") as tmp:
        weights = common.random_weights(Path(tmp) / "model.safetensors", args.config)
        base = common.build_ours(weights, "fp32") if not missing else None
        for precision in args.precisions:
            model = common.build_ours(weights, precision)
            systems = {f"ours {precision}": turn_taker(common.ours_stepper(model, max_len))}
            if args.small_pages:
                small = in_small_pages(common.build_ours(weights, precision))
                systems[f"ours {precision}, 4 KB pages"] = turn_taker(common.ours_stepper(small, max_len))
            peer = common.peer_of(precision)
            if peer and base is not None:
                gguf_type = peer.removeprefix(common.LLAMA_PREFIX)
                gguf = llamacpp.gguf_for(base, Path(tmp), gguf_type, llamacpp.default_bpe_dir())
                llm = llamacpp.load_llama(gguf, args.threads, max_len)
                systems[f"llama.cpp {gguf_type}"] = turn_taker(llamacpp.llama_stepper(llm, max_len))
            got = take_turns(systems, args.steps, args.warm)
            peer_ms = next((ms for name, ms in got.items() if name.startswith("llama.cpp")), None)
            for name, ms in got.items():
                vs = (
                    f" · llama.cpp / this {peer_ms / ms:.3f}"
                    if peer_ms and not name.startswith("llama")
                    else ""
                )
                print(f"{name:28s} {ms:7.2f} ms/step{vs}", flush=True)
            medians.update(got)
    if missing:
        print(f"llama.cpp: skipped, {missing}")
    return medians
