"""Results files, and the tables of README.md and docs/benchmarks.md rendered from them.

    python -m benchmarks.results --render     # rewrite every table between results markers
    python -m benchmarks.results --check      # exit 1 if a table differs from what its file gives

A benchmark run with `--save` writes its record to `benchmarks/results/NAME.json`: the numbers, and the
facts of the run (date, commit, CPU model and flags, measured memory bandwidth, versions, the exact
command; `benchmarks.common.environment`). A document holds a rendered table as

    <!-- results:decode -->
    (the table, then one line saying where it came from)
    <!-- /results -->

and `--render` replaces what stands between the markers with what the file gives, so a published number
cannot drift from its measurement and re-running the benchmark updates it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "docs/benchmarks.md", "docs/engine.md")
SAVE_HELP = "write the results to benchmarks/results/<benchmark>.json (or to FILE)"
BLOCK = re.compile(r"(<!-- results:([\w-]+) -->\n)(.*?)(<!-- /results -->)", re.S)


def save(record: dict, path: str | Path = "") -> Path:
    """Write `record` as JSON to `path`, by default the benchmark's own file in benchmarks/results/."""
    path = Path(path) if path else RESULTS / f"{record['benchmark']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


def load(name: str, directory: Path = RESULTS) -> dict:
    path = directory / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"no results file {path}: run the benchmark with --save first")
    return json.loads(path.read_text())


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def source_note(record: dict, what: str) -> str:
    """The line under a table: what was measured, when, at which commit, on what, with which command."""
    env = record["environment"]
    llama = f", llama-cpp-python {env['llama_cpp']}" if env.get("llama_cpp") else ""
    return (
        f"<sub>{what}. Measured {env['date']} at commit {env['commit']} on {env['cpu']}"
        f" ({' '.join(env['flags']) or 'no AVX2/AVX-512'}; {env['cores']} cores, {env['threads']} threads,"
        f" read bandwidth {env['bandwidth_gbs']} GB/s), torch {env['torch']}{llama}:"
        f" `{env['command']}`</sub>"
    )


def markdown(header: list[str], rows: list[list[str]], pad: bool = False) -> str:
    """A Markdown table; `pad` lines the columns up for a terminal."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if pad else 0 for i, c in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) if pad else "---" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def render_decode(record: dict) -> str:
    s = record["settings"]
    longest = str(max(s["prefill_tokens"]))
    rows_by_name = {r["variant"]: r for r in record["variants"]}
    rows = []
    for r in record["variants"]:
        peer = rows_by_name.get(r["peer"] or "")
        vs = f" vs {peer['label'].removeprefix('llama.cpp ')}" if peer else ""
        err = r["rel_logit_err"]
        rows.append(
            [
                r["label"],
                f"{r['tok_s']:.1f}",
                f"**{ratio(r['tok_s'], peer['tok_s'])}**{vs}" if peer else "",
                f"{r['prefill_ms'][longest]:.0f}",
                f"**{ratio(r['prefill_ms'][longest], peer['prefill_ms'][longest])}**{vs}" if peer else "",
                f"{r['mb_per_token']:.0f}",
                "–" if err is None else "exact" if err == 0 else f"{err:.1e}",
            ]
        )
    header = ["", "decode tok/s", "ours / llama.cpp", f"{longest}-token prompt ms", "ours / llama.cpp"]
    header += ["MB read per token", "logit error vs fp32"]
    what = (
        f"Batch 1, greedy, {s['shapes']} shapes ({s['layers']} layers, {s['weights']} weights), prompt"
        f" {s['prompt_tokens']} + {s['new_tokens']} new tokens, median of {s['rounds']} interleaved rounds"
    )
    return markdown(header, rows) + "\n\n" + source_note(record, what)


def render_serving(record: dict) -> str:
    r, t, s = record["results"], record["targets"], record["settings"]
    one, many = r["one_stream_tok_s"], r["streams_tok_s"]
    first, overhead = r["ttft_http_ms"], r["ttft_http_ms"] - r["ttft_in_process_ms"]
    rows = [
        ["`gpt2.generate` in-process (prefill included)", f"{r['in_process_tok_s']:.1f} tok/s", "–"],
        [
            "one HTTP stream",
            f"{one:.1f} tok/s = **{ratio(one, r['in_process_tok_s'])} ×** in-process",
            f"≥ {t['one_stream']} ×",
        ],
        [
            f"{r['streams']} simultaneous HTTP streams, aggregate",
            f"{many:.1f} tok/s = **{ratio(many, one)} ×** one stream",
            f"≥ {t['streams']} ×" if r["streams"] == t["target_streams"] else "–",
        ],
        [
            "time to first token, app overhead",
            f"{first:.0f} − {r['ttft_in_process_ms']:.0f} = **{overhead:.0f} ms**",
            f"≤ {t['overhead_ms']} ms",
        ],
    ]
    m = r.get("samples")
    if m:
        wall, ttft = ratio(m["many_s"], m["one_s"]), ratio(m["many_ttft_ms"], m["one_ttft_ms"])
        rows += [
            [
                f"{m['n']} samples × {m['tokens']} tokens (`/generate_samples`) vs 1 (`/generate`)",
                f"{m['many_s']:.2f} s vs {m['one_s']:.2f} s = **{wall} ×**",
                f"≤ {t['samples_wall']} ×",
            ],
            [
                f"first token, {m['n']} samples vs 1",
                f"{m['many_ttft_ms']:.0f} vs {m['one_ttft_ms']:.0f} ms = **{ttft} ×**",
                f"≤ {t['samples_ttft']} ×",
            ],
        ]
    equal = f"{r['texts_equal']}/{r['texts_checked']}"
    rows.append(["texts equal to `gpt2.generate`'s with the same seed", equal, "all"])
    what = (
        f"{s['model']}, {s['precision']}, {s['new_tokens']} new tokens, {s['sampling']},"
        f" median of {s['rounds']} interleaved rounds; clients in another process"
    )
    return markdown(["through the HTTP API", "measured", "target"], rows) + "\n\n" + source_note(record, what)


def render_sizes(record: dict) -> str:
    rows = []
    for r in record["sizes"]:
        if r.get("error"):
            rows.append([r["size"], r["precision"], f"failed: {r['error'][:60]}", *[""] * 7])
            continue
        streams = r["streams"]
        rows.append(
            [
                r["size"],
                r["precision"],
                r["runs_as"],
                f"{r['load_s']:.1f}",
                f"{r['load_peak_rss_mb']:.0f}",
                f"{r['rss_anon_mb']:.0f} + {r['rss_file_mb']:.0f}",
                f"{r['tok_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{streams['tok_s']:.1f}",
                "–" if streams["peak_rss_mb"] is None else f"{streams['peak_rss_mb']:.0f}",  # no reset here
            ]
        )
    s = record["settings"]
    header = [
        "size",
        "precision",
        "runs as",
        "load s",
        "peak RSS loading MB",
        "RSS after load MB (anon + file)",
    ]
    header += [
        "tok/s",
        "peak RSS MB",
        f"{s['streams']} streams: tok/s",
        f"{s['streams']} streams: peak RSS MB",
    ]
    what = (
        f"Random weights, one fresh process per size and precision; batch 1: prompt {s['prompt_tokens']} +"
        f" {s['new_tokens']} new tokens, median of {s['rounds']}; {s['streams']} streams: one"
        f" `BatchScheduler`, {s['streams']} requests of {s['stream_tokens']} new tokens"
    )
    return markdown(header, rows) + "\n\n" + source_note(record, what) + f"\n\n{record['verdict']}"


def render_fidelity(record: dict) -> str:
    s, rows = record["settings"], []
    for system, e in record["summary"].items():
        under = e.get("at_or_under", {})
        vs = ", ".join(f"{n}/{s['seeds']} seeds vs llama.cpp {peer}" for peer, n in under.items())
        rows.append(
            [
                system,
                f"{e['norm']:.2e} ({e['norm_min']:.2e}–{e['norm_max']:.2e})",
                f"{e['max']:.2e}",
                f"{e['top_agrees']:.3f}",
                vs or "–",
            ]
        )
    header = ["", "‖Δ‖ / ‖fp32‖: mean (range)", r"max \|Δ\| / max \|fp32\|", "same top token"]
    header.append("ours at or under")
    what = (
        f"Logits against each system's own fp32 along the same tokens, {s['shapes']} shapes ({s['layers']}"
        f" layers), random weights, {s['seeds']} seeds, prompt {s['prompt_tokens']} + {s['new_tokens']}"
        " greedy tokens of our fp32"
    )
    return markdown(header, rows) + "\n\n" + source_note(record, what)


def _contention_rows(c: dict) -> list[list[str]]:
    s, alone = c["streams"], c["alone"]
    beside = f"(median of {alone['runs']} runs, each beside one below)"
    rows = [
        [f"{s} streams × {c['new_tokens']} tokens alone", f"done in {alone['streams_done_s']:.1f} s {beside}"]
    ]
    cases = [
        ("with_traces", f"{s} streams + {s} traces ({c['trace_tokens']} tokens) arriving at once"),
        ("with_one_trace", f"{s} streams + 1 trace arriving at once"),
        ("one_more_stream", f"{s} streams + 1 more stream arriving at once"),
    ]
    for key, label in cases:
        m = c[key]
        done = f"done in {m['streams_done_s']:.1f} s: **{m['vs_alone']:.2f} ×** the streams alone beside it"
        if "trace_s" in m:
            done += f"; the traces took {m['trace_s']:.1f} s (at most {m['trace_max_s']:.1f})"
        rows.append([label, done])
    return [[*row, "–"] for row in rows]


def render_inspect(record: dict) -> str:
    r, t, s = record["results"], record["targets"], record["settings"]
    rows = []
    for n, m in r["trace"].items():
        rows.append(
            [
                f"a trace of {n} tokens (`gpt2.trace`) vs one forward pass",
                f"{m['trace_s']:.3f} s vs {m['forward_s']:.3f} s: **{m['trace_vs_forward']:.2f} ×**"
                f" (the engine's prefill: {m['prefill_s']:.3f} s)",
                f"≤ {t['trace_vs_forward']} ×",
            ]
        )
    o = r["overview"]
    rows.append(
        [
            f"the overview of {o['tokens']} tokens (`gpt2.lens_grid`)",
            f"{o['overview_s']:.2f} s: **{o['overview_vs_forward']:.1f} ×** a forward pass over them",
            "–",
        ]
    )
    tap = r["tap"]
    if "skipped" in tap:
        rows.append(["a tap to the Inside view drawn, through the app", f"skipped: {tap['skipped']}", "–"])
    else:
        rows.append(
            [
                f"a tap to the Inside view drawn, through the app, {tap['tokens']} tokens (Chromium)",
                f"**{tap['tap_to_drawn_ms']} ms** (the first tap {tap['first_tap_ms']} ms; the overview drawn"
                f" {tap['overview_drawn_after_first_tap_s']:.1f} s after it)",
                "–",
            ]
        )
    rows += _contention_rows(r["contention"])
    what = (
        f"{s['model']}, {s['precision']}, medians of {s['rounds']} interleaved rounds (of a ratio: of the"
        " rounds' own); HTTP clients in another process"
    )
    return markdown(["looking inside", "measured", "target"], rows) + "\n\n" + source_note(record, what)


FIRST_VISIT_KINDS = {"cold": "engine cache empty", "warm": "engine cache warm"}


def render_first_visit(record: dict) -> str:
    r, s = record["results"], record["settings"]
    rows = [
        [label, f"{r[kind]['page_s']:.1f} s", f"**{r[kind]['first_token_s']:.1f} s**"]
        for kind, label in FIRST_VISIT_KINDS.items()
    ]
    what = (
        f"`python app.py` with no arguments, {s['model']}, from {s['hub']}; the first"
        f" /generate call ({s['new_tokens']} new tokens) as soon as the page answers; median of {s['rounds']}"
        " rounds, the two starts of a round back to back"
    )
    header = ["first visit", "page answers after", "first streamed token after"]
    return markdown(header, rows) + "\n\n" + source_note(record, what)


RENDERERS = {
    "decode": render_decode,
    "serving": render_serving,
    "sizes": render_sizes,
    "fidelity": render_fidelity,
    "inspect": render_inspect,
    "first_visit": render_first_visit,
}


def render(name: str, record: dict) -> str:
    """The table of results file `name`; "decode-1558M" is rendered like "decode"."""
    return RENDERERS[name.split("-")[0]](record)


def not_measured(name: str) -> str:
    """What a block says before its benchmark's first saved run on the machine its tables come from."""
    return (
        f"Not measured yet: the benchmark's `--save` writes `benchmarks/results/{name}.json`, then"
        " `python -m benchmarks.results --render` puts its table here."
    )


def render_document(text: str, directory: Path = RESULTS) -> str:
    """`text` with every results block replaced by the table its results file gives (or, with no file
    yet, a line saying so)."""

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name.split("-")[0] not in RENDERERS:
            raise SystemExit(f"unknown results block {name!r}; known: {', '.join(RENDERERS)}")
        found = (directory / f"{name}.json").is_file()
        table = render(name, load(name, directory)) if found else not_measured(name)
        return f"{m.group(1)}{table}\n{m.group(4)}"

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.results", description=__doc__.split("\n\n")[0])
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--render", action="store_true", help=f"rewrite the tables in {', '.join(DOCUMENTS)}")
    action.add_argument("--check", action="store_true", help="exit 1 if a rendered table is out of date")
    args = p.parse_args(argv)
    stale = []
    for name in DOCUMENTS:
        path = ROOT / name
        text = path.read_text()
        new = render_document(text)
        if new != text:
            stale.append(name)
            if args.render:
                path.write_text(new)
    verb = "rewrote" if args.render else "out of date:"
    print(f"{verb} {', '.join(stale)}" if stale else "every table matches its results file")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
