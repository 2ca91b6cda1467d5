"""`python -m benchmarks.serving --inspect`: what looking inside a token costs (`gpt2.trace`, `/inspect`,
the app's Inside view), on this machine only.

    python -m benchmarks.serving --inspect                  # 124M shapes, random weights, 3 rounds
    python -m benchmarks.serving --inspect --save           # ... and write benchmarks/results/inspect.json

Four measurements, each a median of `--rounds` interleaved rounds (a ratio: the median of the rounds' own):
- in this process: a trace (the last token) of 256 and of 1024 tokens, against one plain forward pass
  (`GPT2.forward`) over the same tokens, and against the engine's prefill of them (what a request's
  prompt costs);
- the overview (`gpt2.lens_grid`) of 128 tokens, against a forward pass over them;
- through the app, in Chromium: the time from a tap on a token of a 256-token text to the Inside view
  drawn (the trace, its JSON sent to the page, the pictures built and painted);
- over HTTP, from a client process: `--streams` /generate streams alone, with `--streams` /inspect calls
  (256 tokens) arriving at the same instant, with one, and with one more stream instead: how much traces
  slow the streams, next to one more request.
The app runs in its own process (`common.running_app`) on random weights of `--size`'s shapes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common, load, results
from gpt2 import lens_grid, trace

LENGTHS = (256, 1024)  # tokens in a trace
GRID_TOKENS = 128  # tokens in the overview
CLICK_TOKENS = 256  # tokens of the text tapped in the browser
TARGETS = {"trace_vs_forward": 1.3}
TEXT = "The lighthouse keeper had not spoken to anyone in three years, until the storm came. "


def token_ids(tokenizer, n: int) -> list[int]:
    """`n` token ids of English text (speed does not depend on which)."""
    ids = tokenizer.encode(TEXT * (n // 10 + 1))[:n]
    assert len(ids) == n
    return ids


def median_s(times: list[float]) -> float:
    return round(statistics.median(times), 4)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def forward(model, ids: list[int]) -> None:
    with torch.no_grad():
        model(torch.tensor([ids]))


def prefill(model, ids: list[int]) -> None:
    """A request's prompt: `GPT2.step` over the tokens into a fresh cache (the engine where it runs)."""
    n = len(ids)
    with torch.no_grad():
        model.step(
            torch.tensor(ids), torch.arange(n), torch.zeros(n, dtype=torch.long), model.new_cache(1, n), n - 1
        )


def ratio(a: list[float], b: list[float]) -> float:
    """The median of the rounds' own ratios: a round's two runs are next to each other in time, so the
    machine's load drifting between rounds (it is shared) moves both."""
    return round(statistics.median(x / y for x, y in zip(a, b)), 3)


def measure_library(model, tokenizer, rounds: int) -> dict:
    """The trace and the overview against a forward pass (and the engine's prefill), interleaved."""
    n_ctx = model.config.n_ctx
    out = {}
    for n in [t for t in LENGTHS if t <= n_ctx]:
        ids = token_ids(tokenizer, n)
        runs = {"forward": forward, "trace": lambda m, i: trace(m, i, -1), "prefill": prefill}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():  # warm-up
            fn(model, ids)
        for r in range(rounds):
            for name, fn in runs.items() if r % 2 == 0 else reversed(runs.items()):
                times[name].append(timed(fn, model, ids))
        med = {k: median_s(v) for k, v in times.items()}
        out[str(n)] = {
            **{f"{k}_s": v for k, v in med.items()},
            "trace_vs_forward": ratio(times["trace"], times["forward"]),
        }
        print(f"trace of {n} tokens: {med['trace']:.3f} s, forward {med['forward']:.3f} s", file=sys.stderr)
    ids = token_ids(tokenizer, GRID_TOKENS)
    grid, fwd = [], []
    for _ in range(rounds):
        grid.append(timed(lens_grid, model, ids, GRID_TOKENS))
        fwd.append(timed(forward, model, ids))
    overview = {"tokens": GRID_TOKENS, "overview_s": median_s(grid), "forward_s": median_s(fwd)}
    overview["overview_vs_forward"] = ratio(grid, fwd)
    return {"trace": out, "overview": overview}


# ---------------------------------------------------------------------------------------- through the app

TOKENS = "#tokens .tokens > .tok"
# Tap token p and resolve with the milliseconds until the Inside view shows it, painted.
TAP = """p => new Promise((resolve) => {
    const view = document.querySelector('#inside');
    const drawn = () => view.querySelector('.inside-head')?.textContent.startsWith(`Inside token ${p},`);
    const start = performance.now();
    const seen = new MutationObserver(() => {
        if (!drawn()) return;
        seen.disconnect();
        requestAnimationFrame(() => resolve(performance.now() - start));
    });
    seen.observe(view, {subtree: true, childList: true, characterData: true});
    document.querySelectorAll('#tokens .tokens > .tok')[p].click();
})"""


def measure_tap(url: str, tokenizer, rounds: int) -> dict:
    """A page with a text of CLICK_TOKENS tokens (a prompt, then 8 generated); the first tap (after which
    the overview is computed, once per text), then `rounds` taps on the last two tokens in turn."""
    from urllib.parse import urlencode

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        return {"skipped": "needs Chromium and playwright"}
    new = 8
    prompt = tokenizer.decode(token_ids(tokenizer, CLICK_TOKENS - new))
    query = urlencode({"prompt": prompt, "max_new_tokens": new, "seed": 1, "temperature": 0})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(600_000)
            page.goto(f"{url}?{query}")
            page.wait_for_function("p => document.querySelector('#prompt textarea')?.value === p", arg=prompt)
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('finished')")
            n = page.locator(TOKENS).count()
            first_ms = page.evaluate(TAP, n - 1)
            start = time.perf_counter()
            page.wait_for_selector("#overview svg")
            overview_s = first_ms / 1000 + time.perf_counter() - start
            taps = [page.evaluate(TAP, n - 2 + r % 2) for r in range(rounds)]
        finally:
            browser.close()
    return {
        "tokens": n,
        "tap_to_drawn_ms": round(statistics.median(taps)),
        "per_round_ms": [round(t) for t in taps],
        "first_tap_ms": round(first_ms),
        "overview_drawn_after_first_tap_s": round(overview_s, 2),
    }


def measure_contention(clients: common.Clients, tokenizer, args: argparse.Namespace) -> dict:
    """`streams` /generate streams with as many /inspect calls arriving at the same instant, with one, and
    with one more stream instead, each right next to the streams alone (the machine's load drifts: a
    pair shares it). For each: when the streams' tokens were all done (with one more stream: when
    `streams` of them were), its ratio to the streams alone beside it, and how long the traces took."""
    text = tokenizer.decode(token_ids(tokenizer, CLICK_TOKENS))
    s, new = args.streams, args.new_tokens

    def streams(r: int, k: int = s) -> list:
        return [("generate", load.generate_inputs(TEXT[:70], new, 7000 + 100 * r + i)) for i in range(k)]

    def done(calls: list) -> tuple[float, list[float]]:
        answer = clients.call([api for api, _ in calls], [data for _, data in calls])["calls"]
        finished = sorted(c.seconds for (api, _), c in zip(calls, answer) if api == "generate")
        traces = [c.seconds for (api, _), c in zip(calls, answer) if api == "inspect"]
        return finished[s - 1], traces  # when `s` streams had all their tokens

    cases = {
        "with_traces": lambda r: [c for pair in zip(streams(r), [("inspect", [text])] * s) for c in pair],
        "with_one_trace": lambda r: [*streams(r), ("inspect", [text])],
        "one_more_stream": lambda r: streams(r, s + 1),
    }
    seen: dict[str, dict[str, list[float]]] = {k: {"alone": [], "done": [], "trace": []} for k in cases}
    for r in range(args.rounds):
        for name, case in cases.items():
            pair = [("alone", streams(r)), ("done", case(r))]
            for key, calls in pair if r % 2 == 0 else pair[::-1]:
                finished, traces = done(calls)
                seen[name][key].append(finished)
                seen[name]["trace"] += traces
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {v['done'][-1]:.1f} s (alone {v['alone'][-1]:.1f} s)" for k, v in seen.items()),
            file=sys.stderr,
        )
    out = {"streams": s, "new_tokens": new, "trace_tokens": CLICK_TOKENS}
    alone = [t for v in seen.values() for t in v["alone"]]
    out["alone"] = {"streams_done_s": round(statistics.median(alone), 2), "runs": len(alone)}
    for name, v in seen.items():
        out[name] = {"streams_done_s": round(statistics.median(v["done"]), 2)}
        out[name]["vs_alone"] = ratio(v["done"], v["alone"])
        if v["trace"]:
            out[name].update(
                trace_s=round(statistics.median(v["trace"]), 2), trace_max_s=round(max(v["trace"]), 2)
            )
    return out


def run(args: argparse.Namespace, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpt2-inspect-") as tmp:
        weights = common.weights_folder(Path(tmp), args.size, args.weights, args.layers)
        model, tokenizer = load.reference_model(weights, precision=args.precision)
        measured = measure_library(model, tokenizer, args.rounds)
        del model
        with common.running_app(weights, {"GPT2_PRECISION": args.precision, **args.env}) as (url, _):
            clients = common.Clients(url)
            try:
                clients.call("inspect", [[TEXT]])  # warm-up: the model loads on first use
                measured["tap"] = measure_tap(url, tokenizer, args.rounds)
                measured["contention"] = measure_contention(clients, tokenizer, args)
            finally:
                clients.close()
    model_text = f"{args.size} shapes, random weights" + (f", {args.layers} layers" if args.layers else "")
    settings = {"model": f"weights in {args.weights}" if args.weights else model_text}
    settings.update(precision=args.precision, rounds=args.rounds, app_env=args.env)
    record = {"benchmark": "inspect", "environment": env, "settings": settings, "results": measured}
    record["targets"] = TARGETS
    print("\n" + results.render_inspect(record))
    return record
