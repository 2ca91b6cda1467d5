"""The Gradio Space: GPT-2 streaming token by token, with a look inside the model, and a client API.

    python app.py [--weights SOURCE[,SOURCE...]] [--precision auto|PRECISION] [--share] [--mcp]

With no --weights (nor GPT2_WEIGHTS) it serves the converted models in weights/, or, if there are none,
OpenAI's four sizes from the Hugging Face Hub: 124M loaded at start-up, the others when first chosen.

Wiring only: the page is built by `ui.layout` (its components, named by role), requests are checked,
scheduled and streamed by `gpt2.serving`, and rendered by `ui.render`; here events meet handlers, which
return updates keyed by component. Host and port come from Gradio's environment (GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT).

API (all streaming, parameters by name, see README.md, "Using the API"):
    /generate             the continuation so far, as a string, at each update
    /generate_with_probs  the same plus per-token probabilities, alternatives and perplexity, as JSON
    /generate_samples     n continuations of one prompt decoded side by side, as a list of strings
"""

# No `from __future__ import annotations`: Gradio reads handler signatures (gr.Request, gr.EventData).

if __name__ == "__main__":
    # Before Gradio is imported (half of the start-up): whether there is anything to serve is known, and
    # said, within seconds; the first model loads and the engine compiles while Gradio imports.
    from ui import startup

    STARTED = startup.start()

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from gpt2.decoding.batch import BusyError
from gpt2.decoding.params import BY_NAME
from gpt2.serving import LoadError, ModelRegistry, Progress, Server, make_request
from ui import api, controls, quiet_queue, render, script, share, startup
from ui.layout import Page, build_page
from ui.live import LiveView

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
    run = runner(registry, server)
    with api.Blocks(title="GPT-2, hand-built") as blocks:
        page = build_page(registry)
        wire_generation(page, run, registry, run_opts)
        wire_links(blocks, page, registry)
        blocks.load(None, js=script("open_settings.js"), **PRIVATE)  # a wide screen opens the settings
        api.add_endpoints(run, registry.default, gpu, **run_opts)
    blocks.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    quiet_queue(blocks)  # Gradio's 1 ms polling cost one HTTP stream ~10% of its speed (ui/__init__.py)
    return App(blocks, registry, server, page)


def build_demo(*args, **kwargs) -> gr.Blocks:
    """The Space's gr.Blocks (`build_app(...).blocks`), for whoever only launches it."""
    return build_app(*args, **kwargs).blocks


def runner(registry: ModelRegistry, server: Server) -> Callable[..., Iterator[Progress]]:
    """run(values, with_probs): check a request (the declared parameters by name) and stream it; every
    failure a client can cause becomes a readable gr.Error."""

    def run(values: dict, with_probs: bool) -> Iterator[Progress]:
        try:
            request, name = make_request(registry, **values)
            yield from server.stream(request, name, with_probs=with_probs)
        except ValueError as exc:
            raise gr.Error(str(exc), title="Invalid request", print_exception=False) from None
        except BusyError as exc:  # every batch slot and queue place is taken
            raise gr.Error(str(exc), title="Server busy", print_exception=False) from None
        except LoadError as exc:  # a failed download, not enough memory, ...: the next request retries
            raise gr.Error(str(exc), title="Model not loaded", print_exception=False) from None

    return run


def wire_generation(page: Page, run: Callable, registry: ModelRegistry, run_opts: dict) -> None:
    """Generate (text or samples, live line, coloured tokens and summary, from one stream), Stop, Clear,
    the sample picker and the seed buttons."""

    @gpu
    def ui_generate(pick, **inputs):
        values = {name: controls.to_api(BY_NAME[name], value) for name, value in inputs.items()}
        for line in loading_lines(registry, values["model"]):
            yield {page.status: line}
        view, first = LiveView(chosen=int(pick or 1) - 1), True
        for p in run(values, with_probs=True):
            view.update(p)
            update = live_update(page, p, view, values["prompt"])
            if first:  # set once per generation: later updates must not undo a choice made mid-stream
                many = p.request.n > 1
                update[page.pick] = gr.update(
                    choices=list(range(1, p.request.n + 1)), value=view.chosen + 1, visible=many
                )
                first = False
            yield update

    def choose_sample(view: LiveView | None, pick):
        if view is None:
            return {page.tokens: gr.skip()}
        view.choose(pick)
        return {page.tokens: view.tokens_html(), page.summary: view.summary_html()}

    def stopped(status, samples):  # after the cancel has taken effect: every sample says so
        return {page.status: render.stopped(status), page.samples: render.stopped(samples)}

    outputs = [
        page.text,
        page.samples,
        page.status,
        page.tokens,
        page.summary,
        page.seed_used,
        page.pick,
        page.view,
    ]
    run_ui = {**run_opts, "api_visibility": "private", "show_progress": "minimal"}
    running = page.generate.click(ui_generate, [page.pick], outputs, inputs_kwargs=page.inputs, **run_ui)
    page.stop.click(None, cancels=[running], **PRIVATE)
    running.failure(stopped, [page.status, page.samples], [page.status, page.samples], **PRIVATE)
    page.clear.click(lambda: cleared(page), None, outputs, cancels=[running], **PRIVATE)
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


def live_update(page: Page, p: Progress, view: LiveView, prompt: str) -> dict:
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
    }


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
