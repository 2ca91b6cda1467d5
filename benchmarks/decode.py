"""Batch-1 CPU decoding: our GPT-2 (the PyTorch path and the fast one, in every precision) against Hugging
Face transformers and llama.cpp (f32/f16/q8_0/q4_0/q4_K_M GGUFs of the same weights).

    python -m benchmarks.decode                     # 124M shapes, prompt 20 + 128 new tokens, 5 rounds
    python -m benchmarks.decode --rounds 2 --save   # ... and write benchmarks/results/decode.json
    python -m benchmarks.decode --quick             # 2 layers, a few tokens: the CI smoke run
    python -m benchmarks.decode --sizes 124M,1558M  # ours per size and precision, each in a fresh process
    python -m benchmarks.decode --steps             # ours and llama.cpp taking turns, one step each
    python -m benchmarks.decode --ab OLD.c NEW.c    # two versions of the engine's source, side by side

Every variant runs once per round, in an order rotated each round, so all share the machine's noise;
the tables report medians over rounds, ratios to HF and each of our precisions against its llama.cpp
peer (`benchmarks.common.PAIRS`). Weights are random (speed does not depend on their values) unless
`--weights` names a converted checkpoint; every engine gets the same weights. Without llama-cpp-python
and gguf (`benchmarks/requirements.txt`) llama.cpp's rows are skipped with a printed note.
docs/benchmarks.md explains the columns.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import ab, common, llamacpp, race, results, sizes, steps
from benchmarks.common import LLAMA_PREFIX
from gpt2 import SIZES, GPT2Config

MODULE = "benchmarks.decode"


def model_config(args: argparse.Namespace) -> GPT2Config:
    config = GPT2Config.from_name(args.size)
    return replace(config, n_layer=args.layers) if args.layers else config


def parse_args(argv: list[str]) -> argparse.Namespace:
    known = common.variants()
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--sizes", default="", help=f"ours per size instead, from {', '.join(SIZES)}")
    modes.add_argument("--steps", type=int, nargs="?", const=150, help="turns of one step each (default 150)")
    modes.add_argument("--ab", nargs=2, type=Path, metavar=("OLD.c", "NEW.c"), help="two engine sources")
    p.add_argument("--quick", action="store_true", help="CI smoke run: 2 layers, few tokens, one round")
    p.add_argument("--size", default="124M", choices=list(SIZES), help="the shapes to race (default 124M)")
    p.add_argument("--layers", type=int, default=None, help="fewer blocks than the size's (a smoke run)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-tokens", default="512,1000", help="comma-separated long-prompt lengths")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {', '.join(known)}")
    p.add_argument("--weights", default=None, help="a converted .safetensors checkpoint instead of random")
    p.add_argument("--bpe-dir", default=None, help="GPT-2's encoder.json + vocab.bpe for the GGUF vocabulary")
    p.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS processes")
    p.add_argument("--save", nargs="?", const="", default=None, metavar="FILE", help=results.SAVE_HELP)
    sizes.add_arguments(p)
    steps.add_arguments(p)
    ab.add_arguments(p)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--artifacts", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt_tokens, args.new_tokens = 1, 8, 6
        args.prefill_tokens, args.no_rss, args.layers = "64", True, args.layers or 2
    try:
        args.prefill_lengths = sorted({int(n) for n in args.prefill_tokens.split(",") if n.strip()})
    except ValueError:
        p.error(f"--prefill-tokens must be comma-separated integers, got {args.prefill_tokens!r}")
    if min(args.new_tokens - 1, args.prompt_tokens, args.rounds, args.layers or 1, args.threads) < 1:
        p.error("need --new-tokens >= 2, --prompt-tokens >= 1, --rounds >= 1, --layers >= 1, --threads >= 1")
    if not args.prefill_lengths or min(args.prefill_lengths) < 17:
        p.error("--prefill-tokens: each length must be at least 17 (the warm-up runs 16-token prompts)")
    if args.prompt_tokens + args.new_tokens > 1024 or max(args.prefill_lengths) > 1024:
        p.error("prompt + new tokens and the prefill prompts must fit GPT-2's 1024 positions")
    pick_variants(p, args, known)
    args.config = model_config(args)
    for mode in (sizes, steps, ab):
        mode.check_arguments(p, args)
    args.argv = argv  # what a child process is started with
    return args


def pick_variants(p: argparse.ArgumentParser, args: argparse.Namespace, known: list[str]) -> None:
    """`args.variant_list` from --variants (default: all), llama.cpp's dropped with a note if missing."""
    chosen = [v for v in (args.variants or ",".join(known)).split(",") if v]
    bad = [v for v in chosen if v not in known]
    if bad or not chosen:
        p.error(f"unknown variants {bad}; choose from {', '.join(known)}")
    args.llama_note = ""
    reason = llamacpp.unavailable_reason()
    if reason and any(v.startswith(LLAMA_PREFIX) for v in chosen):
        if args.variants is not None:
            p.error(f"llama.cpp variants asked for, but {reason}")
        chosen = [v for v in chosen if not v.startswith(LLAMA_PREFIX)]
        args.llama_note = f"llama.cpp rows skipped: {reason}"
    args.variant_list = sorted(set(chosen), key=known.index)  # the tables' order, each once


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        return {"rss": race.rss_child, "sizes": sizes.child}[args.child[0]](args, *args.child[1:]) or {}
    if args.ab:
        return ab.run(args)
    env = common.environment(MODULE, argv, args.threads)
    print(common.describe_environment(env))
    if args.llama_note:
        print(f"note: {args.llama_note}")
    if args.steps is not None:
        return steps.run(args, env)
    if args.sizes:
        rec = sizes.run(args, env)
    else:
        with tempfile.TemporaryDirectory(prefix="gpt2-bench-") as artifacts:
            args.artifacts = artifacts
            rec = race.run(args, env)
        race.print_race(rec)
    if args.save is not None:
        print(f"saved {results.save(rec, args.save)}")
    return rec


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
