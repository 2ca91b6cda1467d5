"""What users get through the app's HTTP API, next to what the library does in-process.

    python -m benchmarks.serving                         # 124M shapes, random weights, 3 rounds
    python -m benchmarks.serving --rounds 2 --save       # ... and write benchmarks/results/serving.json
    python -m benchmarks.serving --load                  # load test: 16 clients x 5 requests
    python -m benchmarks.serving --load --flood 64       # 64 clients arriving at the same instant
    python -m benchmarks.serving --inspect --save        # looking inside: traces, taps, streams with traces

It writes random weights of `--size`'s shapes to a temporary folder (or serves `--weights`), starts
`app.py` on 127.0.0.1 in its own process, and drives it from a separate client process of plain HTTP
event-stream readers (`common.call_api`), as remote programs would. Round by round, interleaved:
`gpt2.generate` in this process (same weights, prompt and settings), one HTTP stream, and `--streams`
simultaneous HTTP streams; then `--samples` samples of one prompt through /generate_samples against one
through /generate. Prints tok/s (prefill included; per stream and aggregate), time to first token, the
ratios the targets are stated in, and whether every HTTP text equals the in-process text for its seed.
`--load` runs the load test instead (`benchmarks.load`), `--inspect` what looking inside a token costs
(`benchmarks.inside`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common, inside, load, results
from gpt2 import PRECISIONS, SIZES, generate

MODULE = "benchmarks.serving"
PROMPT = "The lighthouse keeper had not spoken to anyone in three years, until"
SETTINGS = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.0)
# What the serving path must deliver, as multiples of the library alone (or of one stream).
# The streams target holds for 8 streams (the app's default batch).
TARGETS = {"one_stream": 0.9, "streams": 4, "target_streams": 8, "overhead_ms": 100}
TARGETS.update(samples_wall=1.6, samples_ttft=1.2)


def api_data(seed: int, new_tokens: int, n: int = 0) -> list:
    """/generate's inputs in order (with n >= 1: /generate_samples', which adds n)."""
    settings = [SETTINGS[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")]
    return [PROMPT, new_tokens, *settings, seed, None, None] + ([n] if n else [])


# ------------------------------------------------------------------ the benchmark


def in_process(model, tokenizer, seed: int, new_tokens: int) -> dict:
    start = time.perf_counter()
    first, pieces = None, []
    for piece in generate(model, tokenizer, PROMPT, max_new_tokens=new_tokens, seed=seed, **SETTINGS):
        first = first or time.perf_counter() - start
        pieces.append(piece)
    return {"seconds": time.perf_counter() - start, "ttft": first, "text": "".join(pieces)}


def measure_streams(clients: common.Clients, model, tokenizer, args: argparse.Namespace) -> dict:
    """In-process, one HTTP stream and N HTTP streams, round by round: medians and text checks."""
    m: dict[str, list[float]] = {k: [] for k in ("inproc", "one", "many", "ttft_in", "ttft_http")}
    equal = checked = 0
    for r in range(args.rounds):
        seed, seeds = 100 + r, [1000 * r + i for i in range(args.streams)]
        ref = in_process(model, tokenizer, seed, args.new_tokens)
        one = clients.call("generate", [api_data(seed, args.new_tokens)])["calls"][0]
        many = clients.call("generate", [api_data(s, args.new_tokens) for s in seeds])
        last = in_process(model, tokenizer, seeds[-1], args.new_tokens)["text"]
        equal += (one.output == ref["text"]) + (many["calls"][-1].output == last)
        checked += 2
        m["inproc"].append(args.new_tokens / ref["seconds"])
        m["one"].append(args.new_tokens / one.seconds)
        m["many"].append(args.streams * args.new_tokens / many["wall"])
        m["ttft_in"].append(ref["ttft"] * 1000)
        m["ttft_http"].append(one.ttft * 1000)
        print(
            f"round {r + 1}: in-process {m['inproc'][-1]:.1f} tok/s · one HTTP stream {m['one'][-1]:.1f} ·"
            f" {args.streams} streams {m['many'][-1]:.1f} aggregate",
            file=sys.stderr,
        )
    med = {k: round(statistics.median(v), 1) for k, v in m.items()}
    return {
        "in_process_tok_s": med["inproc"],
        "one_stream_tok_s": med["one"],
        "streams": args.streams,
        "streams_tok_s": med["many"],
        "ttft_in_process_ms": med["ttft_in"],
        "ttft_http_ms": med["ttft_http"],
        "texts_equal": equal,
        "texts_checked": checked,
        "tok_s_per_round": {k: [round(x, 1) for x in m[k]] for k in ("inproc", "one", "many")},
    }


def measure_samples(clients: common.Clients, model, tokenizer, args: argparse.Namespace) -> tuple[dict, int]:
    """n samples of one prompt through /generate_samples against one through /generate, interleaved:
    medians of wall time and time to first token; and how many rounds' samples equalled in-process."""
    n, tokens = args.samples, args.sample_tokens
    one_s, many_s, one_ttft, many_ttft, equal = [], [], [], [], 0
    for r in range(args.rounds):
        seed = 500 + 10 * r
        a = clients.call("generate", [api_data(seed, tokens)])["calls"][0]
        b = clients.call("generate_samples", [api_data(seed, tokens, n)])["calls"][0]
        one_s.append(a.seconds)
        many_s.append(b.seconds)
        one_ttft.append(a.ttft * 1000)
        many_ttft.append(b.ttft * 1000)
        equal += b.output == [in_process(model, tokenizer, seed + i, tokens)["text"] for i in range(n)]
    med = lambda v: round(statistics.median(v), 2)  # noqa: E731
    samples = {"n": n, "tokens": tokens, "one_s": med(one_s), "many_s": med(many_s)}
    samples.update(one_ttft_ms=med(one_ttft), many_ttft_ms=med(many_ttft))
    return samples, equal


def run_api(args: argparse.Namespace, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpt2-serving-") as tmp:
        weights = common.weights_folder(Path(tmp), args.size, args.weights, args.layers)
        model, tokenizer = load.reference_model(weights, precision=args.precision)
        with common.running_app(weights, {"GPT2_PRECISION": args.precision, **args.env}) as (url, _):
            clients = common.Clients(url)
            try:
                clients.call("generate", [api_data(0, 4)])  # warm-up: the first request starts the scheduler
                measured = measure_streams(clients, model, tokenizer, args)
                if args.samples > 1:
                    measured["samples"], equal = measure_samples(clients, model, tokenizer, args)
                    measured["texts_equal"] += equal
                    measured["texts_checked"] += args.rounds
            finally:
                clients.close()
    model_text = f"{args.size} shapes, random weights" + (f", {args.layers} layers" if args.layers else "")
    settings = {"model": f"weights in {args.weights}" if args.weights else model_text}
    settings.update(precision=args.precision, new_tokens=args.new_tokens)
    settings.update(rounds=args.rounds, prompt=PROMPT, app_env=args.env)
    settings["sampling"] = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in SETTINGS.items())
    record = {"benchmark": "serving", "environment": env, "settings": settings, "results": measured}
    record["targets"] = TARGETS
    print("\n" + results.render_serving(record))
    return record


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="124M", choices=list(SIZES), help="shapes of the random weights")
    p.add_argument("--layers", type=int, default=None, help="fewer blocks than the size's (a smoke run)")
    p.add_argument("--weights", default=None, help="a folder of converted weights instead of random ones")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, default=8, help="simultaneous HTTP streams")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--samples", type=int, default=4, help="n of /generate_samples (0: skip)")
    p.add_argument("--sample-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads in this process")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the app process")
    p.add_argument("--save", nargs="?", const="", default=None, metavar="FILE", help=results.SAVE_HELP)
    p.add_argument("--inspect", action="store_true", help="what looking inside costs (benchmarks.inside)")
    load.add_arguments(p)
    args = p.parse_args(argv)
    if any("=" not in kv for kv in args.env):
        p.error("--env takes KEY=VALUE")
    args.env = dict(kv.split("=", 1) for kv in args.env)
    if min(args.rounds, args.streams, args.new_tokens, args.sample_tokens, args.layers or 1) < 1:
        p.error("need --rounds, --streams, --new-tokens, --sample-tokens and --layers >= 1")
    if not 0 <= args.samples <= 4:
        p.error("--samples 0..4 (0: skip)")
    if args.new_tokens > 1024 or args.sample_tokens > 1024 or args.streams > 64:
        p.error("--new-tokens and --sample-tokens at most 1024, --streams at most 64")
    if args.weights and not Path(args.weights).is_dir():
        p.error(f"--weights: {args.weights} is not a folder")
    load.check_arguments(p, args)
    if args.inspect and args.load:
        p.error("--inspect and --load are two runs: one at a time")
    return args


def main(argv: list[str] | None = None) -> int:
    args, env = common.start(MODULE, argv, parse_args)
    if args.load:
        record, ok = load.run(args, env)
    else:
        record, ok = (inside.run(args, env) if args.inspect else run_api(args, env)), True
    if args.save is not None:
        path = load.save(record, args.save) if args.load else results.save(record, args.save)
        print(f"saved {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
