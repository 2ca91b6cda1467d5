"""What the page's handlers return: updates keyed by component, for a generation as it streams, Clear,
a branch and Back. Pure functions of the page, the live view and what the handler decided (app.py's
handlers check and run; these only say what the page shows then)."""

from __future__ import annotations

import gradio as gr

from gpt2.serving import Progress

from . import render
from .layout import Page
from .live import LiveView, Snapshot


def hidden() -> dict:
    return gr.update(visible=False)


def outputs(page: Page) -> list:
    """What a generation updates."""
    return [
        page.text,
        page.samples,
        page.status,
        page.tokens,
        page.summary,
        page.seed_used,
        page.pick,
        page.view,
        page.inside,
        page.overview,
    ]


def history_outputs(page: Page) -> list:
    """What a branch leaves behind: the texts to go back to, and Back with its note."""
    return [page.history, page.back, page.branched]


def boxes(page: Page) -> list:
    """The prompt and seed boxes: what a branch sets and Back restores."""
    return [page.inputs["prompt"], page.inputs["seed"]]


def live(page: Page, p: Progress, view: LiveView, prompt: str) -> dict:
    """The page at an update of a generation: one text, or each sample's column."""
    many = p.request.n > 1
    return {
        page.text: gr.update(value=prompt + p.text, visible=not many),
        page.samples: gr.update(value=render.samples_html(p) if many else "", visible=many),
        page.status: render.status_line(p),
        page.tokens: view.tokens_html(),
        page.summary: view.summary_html(),
        page.seed_used: str(p.request.seed),
        page.view: view,
    }


def started(page: Page, p: Progress, view: LiveView, fresh: bool) -> dict:
    """Set once, at a generation's first update (later ones must not undo a choice made mid-stream):
    the sample picker; no Inside view of the text before; and for a new text (not a branch's) no Back."""
    update = {page.pick: picker(p, view), page.inside: None, page.overview: None}
    if fresh:
        update |= {page.history: [], page.back: hidden(), page.branched: hidden()}
    return update


def picker(p: Progress, view: LiveView) -> dict:
    many = p.request.n > 1
    return gr.update(choices=list(range(1, p.request.n + 1)), value=view.chosen + 1, visible=many)


def cleared(page: Page) -> dict:
    hide = gr.update(value="", visible=False)
    return {
        page.text: gr.update(value="", visible=True),
        page.samples: hide,
        page.status: "Ready.",
        page.tokens: render.tokens_html("", []),
        page.summary: render.summary_html(None),
        page.seed_used: "",
        page.pick: hide,
        page.inside: None,
        page.overview: None,
        page.history: [],
        page.back: hide,
        page.branched: hide,
    }


def branched(page: Page, left: Snapshot, history: list, prompt: str, seed: int, note: str) -> dict:
    """After choosing an alternative: the new prompt and the seed (the generation that follows reads
    them), the text left kept for Back."""
    return {
        page.inputs["prompt"]: prompt,
        page.inputs["seed"]: str(seed),
        page.pick: 1,  # the continuation of the chosen sample is the first of the new ones
        page.history: [*history, left],
        page.back: gr.update(visible=True),
        page.branched: gr.update(value=note, visible=True),
    }


def went_back(page: Page, history: list) -> dict:
    """Back: the text before the latest branch as it was, the prompt and seed boxes too."""
    if not history:
        return {page.back: hidden()}
    snapshot, rest = history[-1], history[:-1]
    view, p = snapshot.view, snapshot.view.progress
    update = live(page, p, view, p.request.prompt)
    if not p.done:  # the branch was taken mid-stream, which stopped that generation there
        update[page.status] = render.stopped(update[page.status])
    return {
        **update,
        page.pick: picker(p, view),
        page.inside: None,
        page.overview: None,
        page.history: rest,
        page.back: gr.update(visible=bool(rest)),
        page.branched: gr.update(visible=bool(rest)),
        page.inputs["prompt"]: snapshot.prompt,
        page.inputs["seed"]: snapshot.seed,
    }
