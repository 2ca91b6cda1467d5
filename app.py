"""The Gradio Space: GPT-2 streaming token by token, with a look inside the model, and a client API.

    python app.py [--weights SOURCE[,SOURCE...]] [--precision auto|PRECISION] [--share] [--mcp]

With no --weights (nor GPT2_WEIGHTS) it serves the converted models in weights/, or, if there are none,
OpenAI's four sizes from the Hugging Face Hub: 124M loaded at start-up, the others when first chosen.

Wiring only: the page is built by `ui.layout`, requests are checked, scheduled and streamed by
`gpt2.serving`, rendered by `ui.render`; here events meet handlers, which return updates keyed by component.

API (parameters by name, see README.md, "Using the API"):
    /generate             the continuation so far, as a string, at each update
    /generate_with_probs  the same plus per-token probabilities, alternatives and perplexity, as JSON
    /generate_samples     n continuations of one prompt decoded side by side, as a list of strings
    /inspect              one token of a text seen from inside (attention, logit lens, writes), as JSON
"""

# No `from __future__ import annotations`: Gradio reads handler signatures (gr.Request, gr.EventData).

if __name__ == "__main__":
    # Before Gradio is imported (half of the start-up): whether there is anything to serve is known, and
    # said, within seconds; the first model loads and the engine compiles while Gradio imports.
    from ui import startup

    STARTED = startup.start()

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr

from gpt2.decoding.batch import BusyError
from gpt2.decoding.params import BY_NAME
from gpt2.decoding.probs import token_text
from gpt2.serving import LoadError, ModelRegistry, Progress, Server, inside, make_inspection, make_request
from ui import api, controls, quiet_queue, render, script, share, startup, updates
from ui.layout import Page, build_page
from ui.live import LiveView, Snapshot

CONCURRENCY_ID = "gpt2"  # every event that runs the model shares this group
PRIVATE = dict(api_visibility="private", queue=False)  # UI-only events; programs use the named endpoints
LOAD_POLL_S = 0.25  # how often the page hears how a model's load is going


def gpu(fn: Callable) -> Callable:
    """`@spaces.GPU` when running on ZeroGPU (borrow a GPU for the call), the function itself otherwise."""
    return startup.spaces.GPU(fn) if startup.spaces is not None else fn


@dataclass
class App:
    """The app as built: `blocks` to launch, and what serves it: the model `registry` and the `server`
    (one batching scheduler per model). Tests and main() reach them here."""

    blocks: gr.Blocks
    registry: ModelRegistry
    server: Server
    page: Page


def build_app(
    registry: ModelRegistry | str | os.PathLike[str] = startup.DEFAULT_WEIGHTS,
    *,
    server: Server | None = None,
    max_batch: int = 8,
    yield_interval: float | None = None,
    queue_size: int = 32,
) -> App:
    """The Space. `registry` is a ModelRegistry or a weights file/folder (tests pass a fixture folder)."""
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry.from_path(registry)
    if server is None:
        server = Server(registry, max_batch=max_batch)
    if yield_interval is not None:
        server.interval = yield_interval
    # Batching: as many handlers at once as the batch has rows (the scheduler decodes them together);
    # without it, one at a time on a small CPU (each generation already uses every core).
    concurrency = server.max_batch if server.batching else 1
    run_opts = dict(concurrency_id=CONCURRENCY_ID, concurrency_limit=concurrency)
    run, look = runner(registry, server), inspector(registry)
    with api.Blocks(title="GPT-2, hand-built") as blocks:
        page = build_page(registry)
        wire_generation(page, run, registry, run_opts)
        wire_inside(page, registry, run_opts)
        wire_links(blocks, page, registry)
        blocks.load(None, js=script("open_settings.js"), **PRIVATE)  # a wide screen opens the settings
        api.add_endpoints(run, look, registry.default, gpu, **run_opts)
    blocks.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    quiet_queue(blocks)  # Gradio's 1 ms polling cost one HTTP stream ~10% of its speed (ui/__init__.py)
    return App(blocks, registry, server, page)


def build_demo(*args, **kwargs) -> gr.Blocks:
    """The Space's gr.Blocks (`build_app(...).blocks`), for whoever only launches it."""
    return build_app(*args, **kwargs).blocks


@contextmanager
def client_errors() -> Iterator[None]:
    """Every failure a client can cause, as a readable gr.Error (no traceback in the server's log)."""
    try:
        yield
    except ValueError as exc:
        raise gr.Error(str(exc), title="Invalid request", print_exception=False) from None
    except BusyError as exc:  # every batch slot and queue place is taken
        raise gr.Error(str(exc), title="Server busy", print_exception=False) from None
    except LoadError as exc:  # a failed download, not enough memory, ...: the next request retries
        raise gr.Error(str(exc), title="Model not loaded", print_exception=False) from None


def runner(registry: ModelRegistry, server: Server) -> Callable[..., Iterator[Progress]]:
    """run(values, with_probs): check a request (the declared parameters by name) and stream it."""

    def run(values: dict, with_probs: bool) -> Iterator[Progress]:
        with client_errors():
            request, name = make_request(registry, **values)
            yield from server.stream(request, name, with_probs=with_probs)

    return run


def inspector(registry: ModelRegistry) -> Callable[[dict], dict]:
    """look(values): check an /inspect call (its declared parameters by name) and trace it, on this
    thread (a handler's: within the same concurrency limit as generation)."""

    def look(values: dict) -> dict:
        with client_errors():
            checked = make_inspection(registry, **values)
            return inside.inspect(registry, checked.ids, checked.position, checked.model)

    return look


def wire_generation(page: Page, run: Callable, registry: ModelRegistry, run_opts: dict) -> None:
    """Generate (text or samples, live line, coloured tokens and summary, from one stream), Stop, Clear,
    the sample picker and the seed buttons; and branching: an alternative chosen in the token view
    continues the text from it (with the same settings and seed), and Back returns to the text before."""

    def generation(pick, inputs: dict, fresh: bool):
        values = {name: controls.to_api(BY_NAME[name], value) for name, value in inputs.items()}
        for line in loading_lines(registry, values["model"]):
            yield {page.status: line}
        view, first = LiveView(chosen=int(pick or 1) - 1), True
        for p in run(values, with_probs=True):
            view.update(p)
            update = updates.live(page, p, view, values["prompt"])
            if first:
                update |= updates.started(page, p, view, fresh)
                first = False
            yield update

    @gpu
    def ui_generate(pick, **inputs):
        yield from generation(pick, inputs, fresh=True)

    @gpu
    def ui_continue(pick, **inputs):  # a branch's: Back stays
        yield from generation(pick, inputs, fresh=False)

    def branch(view: LiveView | None, history: list, prompt: str, seed: str, event: gr.EventData):
        """The prompt becomes the text up to the token plus the alternative chosen, the seed the one that
        text was drawn with (ui_continue, next, reads them); the text left is kept for Back."""
        if view is None:
            return {page.history: gr.skip()}
        position, token = getattr(event, "position", None), getattr(event, "token", None)
        with client_errors():
            text, seed_used, was = view.branch(position, token, registry.tokenizer.token_bytes)
        note = render.branched_html(was, token_text(registry.tokenizer, token), position, seed_used)
        return updates.branched(page, Snapshot(view, prompt, seed), history, text, seed_used, note)

    def choose_sample(view: LiveView | None, pick):
        if view is None:
            return {page.tokens: gr.skip()}
        view.choose(pick)
        return {page.tokens: view.tokens_html(), page.summary: view.summary_html()}

    def stopped(status, samples):  # after the cancel has taken effect: every sample says so
        return {page.status: render.stopped(status), page.samples: render.stopped(samples)}

    outputs, history, boxes = updates.outputs(page), updates.history_outputs(page), updates.boxes(page)
    run_ui = {
        **run_opts,
        "api_visibility": "private",
        "show_progress": "minimal",
        "inputs_kwargs": page.inputs,
    }
    branch_io = ([page.view, page.history, *boxes], [*boxes, page.pick, *history])
    branched = page.tokens.branch(branch, *branch_io, **PRIVATE)
    running = [
        page.generate.click(ui_generate, [page.pick], outputs + history, **run_ui),
        branched.success(ui_continue, [page.pick], outputs, **run_ui),
    ]
    page.tokens.branch(None, cancels=running, **PRIVATE)  # a branch ends the generation it leaves

    def back(history: list):
        return updates.went_back(page, history)

    page.back.click(back, page.history, outputs + history + boxes, cancels=running, **PRIVATE)
    page.stop.click(None, cancels=running, **PRIVATE)
    for event in running:
        event.failure(stopped, [page.status, page.samples], [page.status, page.samples], **PRIVATE)
    page.clear.click(lambda: updates.cleared(page), None, outputs + history, cancels=running, **PRIVATE)
    page.reuse.click(lambda seed: seed, page.seed_used, page.inputs["seed"], **PRIVATE)
    page.samples.click(seed_of_sample, None, page.inputs["seed"], **PRIVATE)
    page.pick.input(choose_sample, [page.view, page.pick], [page.tokens, page.summary], **PRIVATE)


def loading_lines(registry: ModelRegistry, name: object) -> Iterator[str]:
    """The status line every LOAD_POLL_S while model `name` loads (nothing when it is loaded; a name that is
    not a model's is the request's own check to report). A failed load is reported by the run after it."""
    try:
        state = registry.load(registry.check_name(name))
    except ValueError:
        return
    while state is not None and not state.finished.is_set():
        yield render.loading_line(state)
        state.wait(LOAD_POLL_S)


def wire_inside(page: Page, registry: ModelRegistry, run_opts: dict) -> None:
    """A tap on a token (in the token view, or a column of the overview): the Inside view of that token,
    then the overview of the text, computed once per text. Both run the model, so they go through the
    same queue and concurrency limit as generation. Their numbers go to the page as JSON text: Gradio's
    front end copies and compares every value it is sent, which took a second for the nested lists of
    a 256-token trace of 124M, and no time for one string."""

    @gpu
    def ui_inspect(view: LiveView | None, event: gr.EventData):
        ids = view.ids() if view is not None else []
        if not ids:
            return {page.inside: gr.skip()}
        with client_errors():
            traced = inside.inspect(registry, ids, getattr(event, "position", None), view.model)
        return {page.inside: {"model": view.model, "trace": json.dumps(traced)}}

    @gpu
    def ui_overview(view: LiveView | None):
        ids = view.ids() if view is not None else []
        if not ids or view.overview_of == (view.model, ids):
            return {page.overview: gr.skip()}
        with client_errors():
            grid = inside.overview(registry, ids, view.model)
        view.overview_of = (view.model, ids)
        return {page.overview: {"model": view.model, "overview": json.dumps(grid)}}

    run_ui = {**run_opts, "api_visibility": "private", "show_progress": "minimal"}
    for picture in (page.tokens, page.overview):
        looked = picture.inspect(ui_inspect, page.view, page.inside, **run_ui)
        looked.success(ui_overview, page.view, page.overview, **run_ui)


def seed_of_sample(event: gr.EventData):  # a sample's "use seed" button (ui/samples.js)
    return str(getattr(event, "seed", ""))[:20]


def wire_links(blocks: gr.Blocks, page: Page, registry: ModelRegistry) -> None:
    """Share links: a page opened with one sets its inputs; Copy link makes one."""

    def open_link(request: gr.Request):
        """Set the inputs a share link carries (the page's query string); say which were ignored."""
        shared = share.parse_query(str(request.query_params), registry)
        update = {page.inputs[name]: value for name, value in shared.values.items()}
        if shared.notes:
            update[page.link_notes] = gr.update(value=render.notes_html(shared.notes), visible=True)
        return update or {page.link_notes: gr.skip()}

    def copy_link(url, seed_used, **values):
        """This page with the current inputs, and the seed the last generation used (if there was one)."""
        values["seed"] = seed_used or values["seed"]
        return {page.link: gr.update(value=share.link(url, values), visible=True)}

    # page_url.js puts the page's address into the first input (only the browser knows it).
    url_first = dict(inputs_kwargs=page.inputs, js=script("page_url.js"))
    copy = page.copy.click(copy_link, [page.page_url, page.seed_used], page.link, **url_first, **PRIVATE)
    copy.then(None, page.link, None, js=script("copy_link.js"), **PRIVATE)
    blocks.load(open_link, None, [*page.inputs.values(), page.link_notes], show_progress="hidden", **PRIVATE)


def main(argv: list[str] | None = None, started: startup.Started | None = None) -> None:
    started = started or startup.start(argv)
    startup.finish(started)
    blocks = build_demo(started.registry, max_batch=started.max_batch)
    # Spaces routes traffic to 0.0.0.0:7860; elsewhere Gradio's own defaults and env vars apply.
    server_name = None
    if os.environ.get("SPACE_ID") and not os.environ.get("GRADIO_SERVER_NAME"):
        server_name = "0.0.0.0"
    blocks.launch(
        server_name=server_name,
        share=started.args.share or None,
        mcp_server=started.args.mcp or None,
        theme=gr.themes.Soft(),
        footer_links=["api", "gradio"],
    )


if __name__ == "__main__":
    main(started=STARTED)
