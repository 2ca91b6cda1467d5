"""The page's layout: every component, built in place inside the gr.Blocks being built, and returned as a
`Page` whose fields name them by role. app.py wires events to them by name, so moving a component or
adding one changes nothing else.

    ┌ Settings (sidebar) ┐ ┌ prompt, buttons, Back, link, text / samples, status ┐ ┌ token view, summary,
                                                                                 Inside view, overview ┐
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from gpt2.decoding.params import BY_NAME, PARAMS, SAMPLES, Dropdown, Param, Slider
from gpt2.serving import ModelRegistry

from . import controls, render, script
from .content import EXAMPLES, INTRO


@dataclass
class Page:
    """The page's components. `inputs` holds the control of each declared request parameter, by name, in
    the API's order (the prompt box included)."""

    inputs: dict[str, gr.Component]
    seed_used: gr.Textbox  # the seed the last generation used (Copy link carries it)
    reuse: gr.Button
    link_notes: gr.HTML  # what a share link asked for that the page could not do
    generate: gr.Button
    stop: gr.Button
    clear: gr.Button
    copy: gr.Button
    back: gr.Button  # after a branch: the text before it
    branched: gr.HTML  # what the branch did
    history: gr.State  # ui.live.Snapshot of each text a branch left, the latest last
    link: gr.Textbox
    page_url: gr.Textbox  # filled in the browser (ui/page_url.js)
    text: gr.Textbox  # one sample: the prompt and its continuation
    samples: gr.HTML  # several samples: a column each
    status: gr.Markdown
    pick: gr.Radio  # whose tokens the token view shows
    tokens: gr.HTML
    summary: gr.HTML
    inside: gr.HTML  # one token seen from inside (ui/inside.js draws it)
    overview: gr.HTML  # the logit lens over the text (ui/overview.js)
    view: gr.State  # this tab's ui.live.LiveView


def _sidebar_order(p: Param) -> tuple[int, bool]:
    # The model first, then how each token is drawn, how many samples, and the boxes (seed, stop).
    kind = 0 if isinstance(p.control, Dropdown) else 1 if isinstance(p.control, Slider) else 2
    return kind, p.scope == SAMPLES


def settings(registry: ModelRegistry) -> dict[str, object]:
    """The sidebar: every parameter's control but the prompt's, and the seed's companions."""
    # Closed at first, so a phone shows the prompt first; open_settings.js opens it on a wide screen.
    with gr.Sidebar(label="Settings", open=False, width=300, elem_id="settings"):
        inputs = {}
        for p in sorted((p for p in PARAMS if p.name != "prompt"), key=_sidebar_order):
            inputs[p.name] = controls.build(p, registry)
            if p.name == "seed":
                seed_used = gr.Textbox(label="Seed used", interactive=False, max_lines=1, elem_id="seed-used")
                reuse = gr.Button("Reuse this seed", size="sm")
    return dict(inputs=inputs, seed_used=seed_used, reuse=reuse)


def text_column(registry: ModelRegistry) -> dict[str, object]:
    """The prompt, the buttons, the link box and the generated text (or the samples side by side)."""
    with gr.Column(scale=3):
        prompt = controls.build(BY_NAME["prompt"], registry, autofocus=True)
        with gr.Row():  # one line on a wide screen; on a phone, Generate, Stop, Clear, then Copy link
            generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=2, min_width=120)
            stop = gr.Button("Stop", variant="stop", elem_id="stop-button", min_width=80)
            clear = gr.Button("Clear", elem_id="clear", min_width=80)
            copy = gr.Button("Copy link", elem_id="copy-link", min_width=120)
        with gr.Row(equal_height=False):
            back = gr.Button("← Back", visible=False, elem_id="back", size="sm", scale=0, min_width=80)
            branched = gr.HTML(visible=False, elem_id="branched", js_on_load=None)
        link = gr.Textbox(
            label="Link to these settings and this seed", visible=False, elem_id="link", buttons=["copy"]
        )
        text = gr.Textbox(
            label="Text", lines=8, max_lines=30, interactive=False, elem_id="output", autoscroll=True
        )
        samples = gr.HTML(
            render.samples_html(None),
            css_template=render.CSS,
            js_on_load=script("samples.js"),
            visible=False,
            elem_id="samples",
        )
        status = gr.Markdown("Ready.", elem_id="status")
        gr.Examples([[e] for e in EXAMPLES], inputs=[prompt], label="Try")
    buttons = dict(generate=generate, stop=stop, clear=clear, copy=copy, back=back, branched=branched)
    return dict(prompt=prompt, **buttons, link=link, text=text, samples=samples, status=status)


def token_column() -> dict[str, object]:
    """What the model thought: the sample picker, the coloured tokens (a tap looks inside, an alternative
    branches: ui/tokens.js), the summary, and the Inside view and overview of the token tapped."""
    with gr.Column(scale=2):
        pick = gr.Radio([1], value=1, label="Token view: sample", visible=False, elem_id="pick")
        tokens = gr.HTML(
            render.tokens_html("", []),
            label="Inside the model",
            css_template=render.CSS,
            js_on_load=script("tokens.js"),
            elem_id="tokens",
            container=True,
            padding=True,
        )
        summary = gr.HTML(render.summary_html(None), css_template=render.CSS, elem_id="summary", padding=True)
        # Drawn in the browser from the trace's JSON (the template is only their frame).
        pictures = dict(css_template=render.INSIDE_CSS, padding=True)
        inside = gr.HTML(
            None,
            html_template="<div class='inside-view'></div>",
            js_on_load=script("pictures.js") + script("inside.js"),
            elem_id="inside",
            **pictures,
        )
        overview = gr.HTML(
            None,
            html_template="<div class='overview-view'></div>",
            js_on_load=script("pictures.js") + script("overview.js"),
            elem_id="overview",
            **pictures,
        )
    return dict(pick=pick, tokens=tokens, summary=summary, inside=inside, overview=overview)


def build_page(registry: ModelRegistry) -> Page:
    """Build the page inside the current gr.Blocks."""
    gr.Markdown(INTRO)
    side = settings(registry)
    link_notes = gr.HTML(visible=False, elem_id="link-notes", container=True, padding=True)
    with gr.Row(equal_height=False):
        main = text_column(registry)
        inside = token_column()
    page_url = gr.Textbox(visible=False)
    built = {**side.pop("inputs"), "prompt": main.pop("prompt")}
    inputs = {p.name: built[p.name] for p in PARAMS}  # the API's order
    return Page(
        inputs,
        **side,
        link_notes=link_notes,
        page_url=page_url,
        view=gr.State(None),
        history=gr.State([]),
        **main,
        **inside,
    )
