"""The Inside view and branching, at the handlers (no browser): a tap traces the generation's own token ids
and nothing else runs the model's full forward pass; the overview is computed once per text; a branch
makes the prompt from the text before the token and the alternative; Back restores what was there."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest
from helpers.app_server import MODEL_NAME, shared_weights_dir

import app
from gpt2 import lens_grid, trace
from gpt2.decoding.probs import token_text
from gpt2.serving import ModelRegistry
from ui import updates
from ui.live import Snapshot

PROMPT = "Every effort moves you"


class ForwardCounter:
    """Counts calls of the served model's full forward pass (what a trace runs; generation runs `step`)."""

    def __init__(self, model) -> None:
        self.calls = 0
        self._forward = model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._forward(*args, **kwargs)


@pytest.fixture(scope="module")
def ui(tmp_path_factory, bpe_dir):
    registry = ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    model = registry.get(MODEL_NAME)
    built = app.build_app(registry, yield_interval=0.0)
    handlers = {f.name: f.fn for f in built.blocks.fns.values() if f.fn is not None}
    yield SimpleNamespace(
        app=built, page=built.page, registry=registry, model=model, fn=handlers, forward=ForwardCounter(model)
    )
    built.server.close()


def generated(ui, n: int = 1, pick: int = 1, **values) -> list[dict]:
    """Every update of the page's Generate handler, called as its event calls it."""
    inputs = {"prompt": PROMPT, "max_new_tokens": 8, "seed": "5", "n": n, "model": MODEL_NAME, **values}
    return list(ui.fn["ui_generate"](pick, **inputs))


def test_a_tap_traces_the_generations_own_tokens_and_nothing_else_runs_the_forward_pass(ui):
    before = ui.forward.calls
    final = generated(ui, max_new_tokens=12)[-1]
    assert ui.forward.calls == before  # no trace while generating: nothing per generated token
    view = final[ui.page.view]
    tok = ui.registry.tokenizer
    ids = view.ids()
    assert ids == tok.encode(PROMPT) + [t.token for t in view.progress.tokens[0]] and len(ids) == 4 + 12
    for position in (0, 9, len(ids) - 1):
        out = ui.fn["ui_inspect"](view, gr.EventData(None, {"position": position}))[ui.page.inside]
        assert out["model"] == MODEL_NAME  # and the trace as JSON text (one string for Gradio's front end)
        assert json.loads(out["trace"]) == trace(ui.model, ids, position).to_dict(tok)
    assert ui.forward.calls == before + 3 * 2  # one forward pass per tap (and one per library call above)
    with pytest.raises(gr.Error, match="position must be a token index from 0 to 15"):
        ui.fn["ui_inspect"](view, gr.EventData(None, {"position": 16}))


def test_the_overview_is_computed_once_per_text(ui):
    view = generated(ui, n=2)[-1][ui.page.view]
    tok = ui.registry.tokenizer
    first = ui.fn["ui_overview"](view)[ui.page.overview]
    assert first["model"] == MODEL_NAME
    assert json.loads(first["overview"]) == lens_grid(ui.model, view.ids()).to_dict(tok)
    calls = ui.forward.calls
    assert ui.fn["ui_overview"](view)[ui.page.overview] == gr.skip()  # the same text: already drawn
    view.choose(2)  # the other sample: another text
    again = ui.fn["ui_overview"](view)[ui.page.overview]
    assert json.loads(again["overview"]) == lens_grid(ui.model, view.ids()).to_dict(tok)
    assert again["overview"] != first["overview"]
    assert ui.forward.calls == calls + 2  # this overview, and the library's above


def test_a_branch_continues_from_the_alternative_and_back_restores_the_text(ui):
    updates_seen = generated(ui, max_new_tokens=10)
    view, page = updates_seen[-1][ui.page.view], ui.page
    tok = ui.registry.tokenizer
    n_prompt = len(tok.encode(PROMPT))
    position = n_prompt + 3  # the fourth generated token
    there = view.progress.tokens[0][3]
    alternative = next(a.token for a in there.alternatives if a.token != there.token)
    event = gr.EventData(None, {"position": position, "token": alternative})
    out = ui.fn["branch"](view, [], PROMPT, "5", event)
    before = "".join(token_text(tok, t.token) for t in view.progress.tokens[0][:3])
    prompt = PROMPT + before + token_text(tok, alternative)
    assert out[page.inputs["prompt"]] == prompt and out[page.inputs["seed"]] == "5"
    assert out[page.history] == [Snapshot(view, PROMPT, "5")] and out[page.back]["visible"]
    assert "same settings and seed <code>5</code>" in out[page.branched]["value"]
    # The continuation: the same settings and seed from the new prompt, which the text starts with.
    values = {"prompt": prompt, "max_new_tokens": 10, "seed": "5", "n": 1, "model": MODEL_NAME}
    continued = list(ui.fn["ui_continue"](1, **values))
    text = continued[-1][page.text]["value"]
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert page.history not in continued[0]  # a branch's generation keeps Back
    assert any(u.get(page.history) == [] for u in generated(ui))  # a new text's generation drops it
    # Back: the text, the token view and the boxes as they were before the branch.
    back = updates.went_back(page, out[page.history])
    assert back[page.text]["value"] == PROMPT + view.progress.text
    assert back[page.tokens] == view.tokens_html() and back[page.view] is view
    assert back[page.inputs["prompt"]] == PROMPT and back[page.history] == []
    assert not back[page.back]["visible"]


@pytest.mark.parametrize(
    "position,token,message",
    [(1, 0, "not a generated token"), (99, 0, "not a generated token"), ("4", 0, "not a generated token")],
)
def test_a_branch_only_takes_a_generated_token_and_a_listed_alternative(ui, position, token, message):
    view = generated(ui)[-1][ui.page.view]
    with pytest.raises(gr.Error, match=message):
        ui.fn["branch"](view, [], PROMPT, "5", gr.EventData(None, {"position": position, "token": token}))
    listed = {a.token for a in view.progress.tokens[0][0].alternatives}
    unlisted = next(t for t in range(100, 200) if t not in listed)
    with pytest.raises(gr.Error, match="is not one of the alternatives listed for token 4"):
        ui.fn["branch"](view, [], PROMPT, "5", gr.EventData(None, {"position": 4, "token": unlisted}))
