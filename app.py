"""The Gradio Space: GPT-2 streaming token by token, with a look inside the model, and a client API.

    python app.py [--weights weights/ | hf://OWNER/REPO] [--precision fp32|bf16|f16|int8|int4]
                  [--share] [--mcp]

Layout and wiring only: requests are checked, scheduled and streamed by `gpt2.serving`, and rendered by
`ui.render`. Host and port come from Gradio's environment (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT).

API (all streaming, parameters by name, see README.md, "Using the API"):
    /generate             the continuation so far, as a string, at each update
    /generate_with_probs  the same plus per-token probabilities, alternatives and perplexity, as JSON
    /generate_samples     n continuations of one prompt decoded side by side, as a list of strings
"""

# No `from __future__ import annotations`: gr.api reads the endpoint functions' annotations at runtime.

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from gpt2.decoding.batch import BusyError
from gpt2.decoding.request import SERVING
from gpt2.engine.precision import PRECISIONS
from gpt2.serving import (
    DEFAULTS,
    ModelRegistry,
    NoWeightsError,
    Progress,
    Server,
    default_weights,
    make_request,
    parse_stop_text,
)
from ui import api, quiet_queue, render, script, share
from ui.content import EXAMPLES, INTRO, SLIDERS
from ui.live import LiveView

try:  # Hugging Face ZeroGPU: present on Spaces that use it, a no-op decorator everywhere else.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights"
CONCURRENCY_ID = "gpt2"  # every event that runs the model shares this group


def gpu(fn: Callable) -> Callable:
    """`@spaces.GPU` when running on ZeroGPU (borrow a GPU for the call), the function itself otherwise."""
    return spaces.GPU(fn) if spaces is not None else fn


def build_demo(
    registry: ModelRegistry | str | os.PathLike[str] = DEFAULT_WEIGHTS,
    *,
    server: Server | None = None,
    max_batch: int = 8,
    yield_interval: float | None = None,
    queue_size: int = 32,
) -> gr.Blocks:
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

    def run(args: tuple, with_probs: bool, n: object = 1) -> Iterator[Progress]:
        """Check a request and stream it; every failure a client can cause becomes a readable gr.Error."""
        try:
            request, name = make_request(registry, *args, n=n)
            yield from server.stream(request, name, with_probs=with_probs)
        except ValueError as exc:
            raise gr.Error(str(exc), title="Invalid request", print_exception=False) from None
        except BusyError as exc:  # every batch slot and queue place is taken
            raise gr.Error(str(exc), title="Server busy", print_exception=False) from None

    # --- the UI handler: text (or the samples), live line, coloured tokens and summary, from one stream ---

    @gpu
    def ui_generate(
        prompt, max_new_tokens, temperature, top_k, top_p, penalty, seed_text, stop_text, model, n, pick
    ):
        stop = parse_stop_text(stop_text)
        args = (prompt, max_new_tokens, temperature, top_k, top_p, penalty, seed_text, stop, model)
        if isinstance(model, str) and model in registry.names and not registry.is_loaded(model):
            yield (
                gr.skip(),
                gr.skip(),
                f"⏳ loading model **{model}** on {registry.device}…",
                *[gr.skip()] * 5,
            )
        view, first = LiveView(chosen=int(pick or 1) - 1), True
        for p in run(args, with_probs=True, n=n):
            view.update(p)
            many = p.request.n > 1
            # The selector is set once per generation: later updates must not undo a choice made mid-stream.
            picker = gr.update(choices=list(range(1, p.request.n + 1)), value=view.chosen + 1, visible=many)
            yield (
                gr.update(value=prompt + p.text, visible=not many),
                gr.update(value=render.samples_html(p) if many else "", visible=many),
                render.status_line(p),
                view.tokens_html(),
                view.summary_html(),
                str(p.request.seed),
                picker if first else gr.skip(),
                view,
            )
            first = False

    def choose_sample(view: LiveView | None, pick):
        if view is None:
            return gr.skip(), gr.skip()
        view.choose(pick)
        return view.tokens_html(), view.summary_html()

    def cleared():
        hide = gr.update(value="", visible=False)
        empty = render.tokens_html("", [])
        return gr.update(value="", visible=True), hide, "Ready.", empty, render.summary_html(None), "", hide

    def seed_of_sample(event: gr.EventData):  # a sample's "use seed" button (ui/samples.js)
        return str(getattr(event, "seed", ""))[:20]

    def open_link(request: gr.Request):
        """Set the inputs a share link carries (the page's query string); say which were ignored."""
        shared = share.parse_query(str(request.query_params), registry)
        values = [shared.values.get(name, gr.skip()) for name in share.FIELDS]
        notes = gr.update(value=render.notes_html(shared.notes), visible=True) if shared.notes else gr.skip()
        return *values, notes

    def copy_link(page, *values):
        """This page with the current inputs, and the seed the last generation used (if there was one)."""
        fields = dict(zip(share.FIELDS, values[:-1], strict=True))
        fields["seed"] = values[-1] or fields["seed"]
        return gr.update(value=share.link(page, fields), visible=True)

    with api.Blocks(title="GPT-2, hand-built") as demo:
        gr.Markdown(INTRO)
        # Closed at first, so a phone shows the prompt first; open_settings.js opens it on a wide screen.
        with gr.Sidebar(label="Settings", open=False, width=300, elem_id="settings"):
            model_box = gr.Dropdown(
                registry.names, value=registry.default, label="Model", info="loaded on first use"
            )
            controls = {}
            for name, label, step, info in SLIDERS:
                lo, hi = SERVING.bounds(name)
                controls[name] = gr.Slider(
                    lo, hi, value=DEFAULTS[name], step=step, label=label, info=info, elem_id=name
                )
            seed_box = gr.Textbox(label="Seed", placeholder="empty = random", max_lines=1, elem_id="seed")
            seed_used = gr.Textbox(label="Seed used", interactive=False, max_lines=1, elem_id="seed-used")
            reuse = gr.Button("Reuse this seed", size="sm")
            stop_box = gr.Textbox(
                label="Stop strings", placeholder=r"comma-separated, e.g. \n\n, THE END", max_lines=1
            )
        link_notes = gr.HTML(visible=False, elem_id="link-notes", container=True, padding=True)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                prompt_box = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    max_length=SERVING.max_prompt_chars,
                    elem_id="prompt",
                    autofocus=True,
                )
                with gr.Row():  # one line on a wide screen; on a phone, Generate, Stop, Clear, then Copy link
                    go = gr.Button("Generate", variant="primary", elem_id="generate", scale=2, min_width=120)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", min_width=80)
                    clear = gr.Button("Clear", elem_id="clear", min_width=80)
                    copy = gr.Button("Copy link", elem_id="copy-link", min_width=120)
                link_box = gr.Textbox(
                    label="Link to these settings and this seed",
                    visible=False,
                    elem_id="link",
                    buttons=["copy"],
                )
                output = gr.Textbox(
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
                gr.Examples([[e] for e in EXAMPLES], inputs=[prompt_box], label="Try")
            with gr.Column(scale=2):
                pick = gr.Radio([1], value=1, label="Token view: sample", visible=False, elem_id="pick")
                tokens_view = gr.HTML(
                    render.tokens_html("", []),
                    label="Inside the model",
                    css_template=render.CSS,
                    elem_id="tokens",
                    container=True,
                    padding=True,
                )
                summary = gr.HTML(
                    render.summary_html(None), css_template=render.CSS, elem_id="summary", padding=True
                )
        view_state = gr.State(None)  # this tab's LiveView

        private = dict(api_visibility="private", queue=False)  # programs use the named endpoints below
        controls.update(prompt=prompt_box, seed=seed_box, stop=stop_box, model=model_box)
        fields = [controls[name] for name in share.FIELDS]  # the API's parameters, in its order
        outputs = [output, samples, status, tokens_view, summary, seed_used, pick, view_state]
        run_ui = {**run_opts, "api_visibility": "private", "show_progress": "minimal"}
        running = go.click(ui_generate, [*fields, pick], outputs, **run_ui)
        stop_btn.click(None, cancels=[running], **private)
        # After the cancel has taken effect (an update already on its way cannot overwrite it), every sample.
        running.failure(
            lambda *views: [render.stopped(v) for v in views], [status, samples], [status, samples], **private
        )
        clear.click(cleared, None, outputs[:-1], cancels=[running], **private)
        reuse.click(lambda s: s, seed_used, seed_box, **private)
        samples.click(seed_of_sample, None, seed_box, **private)
        pick.input(choose_sample, [view_state, pick], [tokens_view, summary], **private)
        page_url = gr.Textbox(visible=False)  # filled in the browser by page_url.js
        copy.click(
            copy_link, [page_url, *fields, seed_used], link_box, js=script("page_url.js"), **private
        ).then(None, link_box, None, js=script("copy_link.js"), **private)
        demo.load(open_link, None, [*fields, link_notes], show_progress="hidden", **private)
        demo.load(None, js=script("open_settings.js"), **private)
        for fn in api.endpoints(run, registry.default, gpu):
            gr.api(fn, api_name=fn.__name__, **run_opts)

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    quiet_queue(demo)  # Gradio's 1 ms polling cost one HTTP stream ~10% of its speed (ui/__init__.py)
    demo.registry, demo.serving = registry, server  # for tests and main()
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Serve the GPT-2 demo (host/port: GRADIO_SERVER_NAME/PORT).")
    ap.add_argument(
        "--weights",
        default=default_weights(DEFAULT_WEIGHTS),
        help="a converted .safetensors file or folder, or hf://OWNER/REPO[@REVISION][/FILE] (GPT2_WEIGHTS)",
    )
    ap.add_argument("--share", action="store_true", help="also open a public *.gradio.live link")
    ap.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("GPT2_PRECISION", "fp32"),
        help="CPU weights: fp32 (exact), bf16, f16, int8 or int4 (fewer bytes per token, see README 'Speed')",
    )
    mcp_env = os.environ.get("GPT2_MCP", "").lower() in ("1", "true", "yes")
    ap.add_argument("--mcp", action="store_true", default=mcp_env, help="also serve the API as MCP tools")
    return ap.parse_args(argv)


def max_batch_from_env() -> int:
    """GPT2_MAX_BATCH (default 8): requests decoded together; 1 = one at a time. ZeroGPU: 1 (its GPU
    exists only inside each handler call, not in the scheduler's worker thread)."""
    value = os.environ.get("GPT2_MAX_BATCH", "8").strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"GPT2_MAX_BATCH must be a whole number >= 1, got {value!r}")
    return 1 if spaces is not None else int(value)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.mcp and importlib.util.find_spec("mcp") is None:
        sys.exit("--mcp needs Gradio's MCP extra: pip install 'gradio[mcp]==6.31.0'")
    try:
        registry = ModelRegistry.from_path(args.weights, precision=args.precision)
        max_batch = max_batch_from_env()
    except (NoWeightsError, ValueError, RuntimeError) as exc:
        sys.exit(str(exc))
    print(f"models: {', '.join(registry.names)} · device: {registry.device_label}", flush=True)
    try:  # load the default model now (the first visitor should not wait); say which engine decodes it
        print(f"decode engine: {registry.engine_line()} · batch: {max_batch}", flush=True)
    except ValueError as exc:  # e.g. a HubError: a missing repo, or no network and nothing cached
        sys.exit(str(exc))
    demo = build_demo(registry, max_batch=max_batch)
    # Spaces routes traffic to 0.0.0.0:7860; elsewhere Gradio's own defaults and env vars apply.
    server_name = None
    if os.environ.get("SPACE_ID") and not os.environ.get("GRADIO_SERVER_NAME"):
        server_name = "0.0.0.0"
    demo.launch(
        server_name=server_name,
        share=args.share or None,
        mcp_server=args.mcp or None,
        theme=gr.themes.Soft(),
        footer_links=["api", "gradio"],
    )


if __name__ == "__main__":
    main()
