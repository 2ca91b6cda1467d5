"""HTML for the app's live views: the status line, tokens coloured by probability with their details,
and the summary. Pure functions of a `gpt2.serving.Progress`, so they are easy to test."""

from __future__ import annotations

import html
import math
from pathlib import Path

from gpt2.decoding.probs import Alternative, PromptProbs, TokenProbs, continuation_summary
from gpt2.serving import Loading, Progress

CSS = (Path(__file__).with_name("style.css")).read_text()
INSIDE_CSS = (Path(__file__).with_name("inside.css")).read_text()  # the Inside view and the overview


def status_line(p: Progress) -> str:
    parts = [
        f"**{p.n_prompt}** prompt tokens",
        f"**{p.n_new}** new tokens",
        f"**{p.tokens_per_second:.1f}** tokens/s" if p.tokens_per_second else "— tokens/s",
        f"first token **{p.ttft:.2f} s**" if p.ttft is not None else "first token —",
        f"seed `{p.request.seed}`"
        if p.request.n == 1
        else f"seeds `{p.request.seed}`…`{p.request.seed + p.request.n - 1}`",
        f"{p.label or p.model} on {p.device}",
    ]
    state = f"finished ({p.finish_reason})" if p.done else "generating…"
    return " · ".join(parts) + f" · _{state}_"


def loading_line(state: Loading) -> str:
    """The status line while a model loads: "⏳ downloading GPT-2 XL · 1558M · int4: 2.1 / 6.4 GB"."""
    return f"⏳ {state.line()}"


def prob_color(p: float | None) -> str:
    """Green for tokens the model was sure of, through yellow, to red at 1 in 10,000 or less (log scale)."""
    if p is None:
        return "transparent"
    x = 0.0 if p <= 0 else min(1.0, max(0.0, 1.0 + math.log10(p) / 4.0))
    return f"hsla({120 * x:.0f}, 85%, 45%, 0.38)"


def _show(text: str) -> str:
    # Make whitespace-only tokens visible without changing the layout of the text.
    return html.escape(text).replace("\n", "↵\n")


def _pct(p: float) -> str:
    """A probability as a percentage with three significant digits (0.0141%, 53.2%, 100%)."""
    return f"{p * 100:.3g}%"


def _label(text: str) -> str:
    """A token's text for a tooltip: quoted the Python way, so spaces and newlines are visible."""
    return html.escape(repr(text)[1:-1])


LOOK = "<button class='look' title='the Inside view, under the token view'>see inside ↓</button>"


def _alternative_row(a: Alternative, chosen: bool) -> str:
    name = _label(a.text)
    if not chosen:
        tip = "continue the text from this token instead"
        name = f"<button class='alt' data-token='{a.token}' title='{tip}'>{name}</button>"
    return (
        f"<tr class='{'chosen' if chosen else ''}'><td>{name}</td>"
        f"<td>{_pct(a.prob)}</td><td>{_pct(a.sampled_prob)}</td></tr>"
    )


def token_span(t: TokenProbs) -> str:
    """A generated token: coloured by its probability; its details (and the alternatives, each a button
    that continues the text from it: ui/tokens.js) in a panel shown on hover or tap."""
    rows = "".join(_alternative_row(a, chosen=a.token == t.token) for a in t.alternatives)
    tip = (
        f"<span class='tip'><b>{_label(t.text)}</b> · sampled p {_pct(t.prob)} · "
        f"model p {_pct(t.raw_prob)} · rank {t.rank} · entropy {t.entropy:.2f} {LOOK}"
        f"<table><tr><th>alternative</th><th>model</th><th>sampled</th></tr>{rows}</table></span>"
    )
    return (
        f"<span class='tok gen' tabindex='0' style='background:{prob_color(t.raw_prob)}'>"
        f"{_show(t.text)}{tip}</span>"
    )


def prompt_spans(prompt: PromptProbs | None) -> str:
    if prompt is None:
        return ""
    out = []
    for t in prompt.tokens:
        p = "—" if t.prob is None else _pct(t.prob)
        tip = f"<span class='tip'><b>{_label(t.text)}</b> · prompt token · p {p}"
        tip += f" · rank {t.rank}" if t.rank is not None else ""
        tip += f" {LOOK}</span>"
        out.append(
            f"<span class='tok prm' tabindex='0' style='background:{prob_color(t.prob)}'>"
            f"{_show(t.text)}{tip}</span>"
        )
    return "".join(out)


def sparkline(values: list[float], width: int = 260, height: int = 36) -> str:
    if len(values) < 2:
        return ""
    top = max(max(values), 1e-6)
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return (
        f"<svg class='spark' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='entropy per step'><polyline fill='none' stroke='currentColor' "
        f"stroke-width='1.5' points='{points}'/></svg>"
    )


def summary_html(p: Progress | None, sample: int = 0) -> str:
    tokens = p.tokens[sample] if p is not None and p.tokens else []
    s = continuation_summary(tokens)
    ppl = f"{p.prompt.perplexity:.1f}" if p and p.prompt and p.prompt.perplexity is not None else "—"
    mean_lp = f"{s['mean_logprob']:.2f}" if s["mean_logprob"] is not None else "—"
    cont_ppl = f"{s['perplexity']:.1f}" if s["perplexity"] is not None else "—"
    ent = f"{s['mean_entropy']:.2f}" if s["mean_entropy"] is not None else "—"
    return (
        "<div class='summary'>"
        f"<div><span class='k'>prompt perplexity</span> <b>{ppl}</b></div>"
        f"<div><span class='k'>continuation mean log-prob</span> <b>{mean_lp}</b> "
        f"<span class='k'>(perplexity {cont_ppl})</span></div>"
        f"<div><span class='k'>entropy per step (mean {ent} nats)</span><br>"
        f"{sparkline([t.entropy for t in tokens])}</div>"
        "</div>"
    )


LEGEND = (
    "<div class='legend'>model probability: "
    + "".join(
        f"<span class='tok' style='background:{prob_color(p)}'>{label}</span> "
        for p, label in [
            (1.0, "≥ 90%"),
            (0.1, "10%"),
            (0.01, "1%"),
            (0.001, "0.1%"),
            (1e-4, "≤ 0.01%"),
        ]
    )
    + " · tap a token to look inside the model there; tap one of its alternatives to continue the text "
    "from it</div>"
)


def tokens_html(prompt_part: str, gen_spans: list[str]) -> str:
    return f"{LEGEND}<div class='tokens'>{prompt_part}{''.join(gen_spans)}</div>"


def samples_html(p: Progress | None) -> str:
    """Each sample's continuation in a column, headed by its seed and a button that reuses it."""
    if p is None:
        return "<div class='samples'></div>"
    columns = []
    for i, text in enumerate(p.texts):
        seed = p.request.seed + i
        reason = p.finish_reasons[i]
        state = "generating…" if reason is None else f"finished ({reason})"
        columns.append(  # (the state's span is what `stopped` rewrites)
            f"<div class='sample' data-sample='{i + 1}'><div class='head'><b>Sample {i + 1}</b> · seed "
            f"<code>{seed}</code> <button class='reuse' data-seed='{seed}' "
            f"title='put seed {seed} in the Seed box'>use seed</button> <span class='state'>{state}</span>"
            f"</div><div class='text'>{html.escape(text)}</div></div>"
        )
    return f"<div class='samples' style='--n: {len(columns)}'>{''.join(columns)}</div>"


def branched_html(was: str, now: str, position: int, seed: int) -> str:
    """What a branch did: token `position` (its text `was`) replaced by the alternative `now`."""
    return (
        f"Branched at token {position}: <b>{_label(was)}</b> → <b>{_label(now)}</b>. The text up to there "
        f"plus the alternative is now the prompt, continued with the same settings and seed <code>{seed}"
        "</code>. <b>Back</b> returns to the text before."
    )


def notes_html(notes: list[str]) -> str:
    """What a share link asked for that the page could not do, and why."""
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f"<b>Some of this link's settings were ignored:</b><ul>{items}</ul>"


def stopped(view: str) -> str:
    """The status line or the samples of a generation that was stopped: "generating…" becomes "stopped"."""
    # Only the markers this module writes: a sample's text (escaped, so it holds no tags) is left alone.
    return view.replace("_generating…_", "_stopped_").replace(
        "<span class='state'>generating…</span>", "<span class='state'>stopped</span>"
    )
