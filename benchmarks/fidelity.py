"""How far each narrow precision moves the logits, ours and llama.cpp's, each against its own fp32.

    python -m benchmarks.fidelity --seeds 5 --save    # writes benchmarks/results/fidelity.json

Per seed: random weights at the size's shapes (`common.random_weights`), a random 8-token prompt, then 64
greedy tokens of our fp32 model. Every system is fed exactly this sequence (teacher forcing: a prefill of
the prompt, then one step per token, as generation runs) and its logits after each token are kept. A
system's error is against its own fp32 along the same tokens: ours against ours fp32, llama.cpp's against
llama.cpp f32 (whose f16 KV cache alone sets it ~1e-3 apart from ours, the row "llama.cpp f32 vs ours
fp32"). Reported: ||Δ|| / ||fp32|| over all those logits, max |Δ| / max |fp32|, and how often the top token
agrees. `common.PAIRS` says which llama.cpp type each of our precisions is held against.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import common, llamacpp, results
from benchmarks.common import ours_stepper
from gpt2 import PRECISIONS, SIZES, GPT2Config

MODULE = "benchmarks.fidelity"
PROMPT_TOKENS, NEW_TOKENS = 8, 64
LLAMA_TYPES = ("f16", "q8_0", "q4_0", "q4_K_M")
CROSS = "llama.cpp f32 vs ours fp32"


def teacher_forced(step, ids: list[int]) -> torch.Tensor:
    """The logits `(positions, n_vocab)` after the prompt and after each following token but the last."""
    with torch.inference_mode():
        out = [step(ids[:PROMPT_TOKENS])] + [step([t]) for t in ids[PROMPT_TOKENS:-1]]
    return torch.stack([o.float().reshape(-1) for o in out])


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    d = got - ref
    return {
        "norm": (d.norm() / ref.norm()).item(),
        "max": (d.abs().max() / ref.abs().max()).item(),
        "top_agrees": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
    }


def one_seed(config: GPT2Config, seed: int, threads: int, llama: bool) -> dict[str, dict[str, float]]:
    """Every system's errors on one seed's weights and tokens."""
    with tempfile.TemporaryDirectory(prefix="gpt2-fidelity-") as tmp:
        path = common.random_weights(Path(tmp) / "model.safetensors", config, seed)
        fp32 = common.build_ours(path, "fp32")
        n = PROMPT_TOKENS + NEW_TOKENS
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, config.n_vocab, (PROMPT_TOKENS,), generator=gen).tolist()
        step = ours_stepper(fp32, n)
        with torch.inference_mode():
            logits = step(ids)
            while len(ids) < n:
                ids.append(int(logits.argmax()))
                logits = step(ids[-1:])
        ours_ref = teacher_forced(ours_stepper(fp32, n), ids)
        rows = {}
        for p in PRECISIONS[1:]:
            runner = common.build_ours(path, p)
            rows[f"ours {p}"] = errors(teacher_forced(ours_stepper(runner, n), ids), ours_ref)
        if llama:
            bpe = llamacpp.default_bpe_dir()

            def llama_logits(gguf_type: str) -> torch.Tensor:
                gguf = llamacpp.gguf_for(fp32, Path(tmp), gguf_type, bpe)
                return teacher_forced(llamacpp.llama_stepper(llamacpp.load_llama(gguf, threads, n), n), ids)

            llama_ref = llama_logits("f32")
            for t in LLAMA_TYPES:
                rows[f"llama.cpp {t}"] = errors(llama_logits(t), llama_ref)
            rows[CROSS] = errors(llama_ref, ours_ref)
    return rows


def summary(seeds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per system: the mean of each error over the seeds, and the range of the norm error."""
    out = {}
    for system in seeds[0]:
        norms = [s[system]["norm"] for s in seeds]
        out[system] = {
            "norm": statistics.mean(norms),
            "norm_min": min(norms),
            "norm_max": max(norms),
            "max": statistics.mean(s[system]["max"] for s in seeds),
            "top_agrees": statistics.mean(s[system]["top_agrees"] for s in seeds),
        }
    for ours, peer in common.PAIRS:  # how many seeds ours is at or under its peer's error
        a, b = f"ours {ours}", f"llama.cpp {peer}"
        if a in out and b in out and ours != "bf16":
            out[a].setdefault("at_or_under", {})[peer] = sum(s[a]["norm"] <= s[b]["norm"] for s in seeds)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="weights and prompts to average over (default 5)")
    p.add_argument("--size", default="124M", choices=list(SIZES), help="the shapes (default 124M)")
    p.add_argument("--layers", type=int, default=None, help="fewer blocks than the size's (a smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", nargs="?", const="", default=None, metavar="FILE", help=results.SAVE_HELP)
    args = p.parse_args(argv)
    if args.seeds < 1 or args.threads < 1 or (args.layers is not None and args.layers < 1):
        p.error("--seeds, --threads and --layers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args, env = common.start(MODULE, argv, parse_args)
    reason = llamacpp.unavailable_reason()
    if reason:
        print(f"note: llama.cpp rows skipped: {reason}")
    config = GPT2Config.from_name(args.size)
    if args.layers:
        config = replace(config, n_layer=args.layers)
    seeds = []
    for seed in range(args.seeds):
        seeds.append(one_seed(config, seed, args.threads, reason is None))
        line = ", ".join(f"{k} {v['norm']:.2e}" for k, v in seeds[-1].items())
        print(f"seed {seed}: {line}", file=sys.stderr)
    settings = {"shapes": args.size, "layers": config.n_layer, "seeds": args.seeds}
    settings |= {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS}
    rec = {"benchmark": "fidelity", "environment": env, "settings": settings}
    rec |= {"summary": summary(seeds), "seeds": seeds}
    print(results.render_fidelity(rec))
    if args.save is not None:
        print(f"saved {results.save(rec, args.save)}")
    return rec


if __name__ == "__main__":
    main()
