"""The Gradio Space: GPT-2 streaming token by token, with a look inside the model, and a client API.

    python app.py [--weights weights/ | hf://OWNER/REPO] [--precision fp32|bf16|int8] [--share] [--mcp]

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
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from gpt2 import list_models
from gpt2.precision import PRECISIONS
from gpt2.request import SERVING
from gpt2.scheduler import BusyError
from gpt2.serving import (
    DEFAULTS,
    ModelRegistry,
    NoWeightsError,
    Progress,
    Server,
    make_request,
    parse_stop_text,
)
from ui import render

try:  # Hugging Face ZeroGPU: present on Spaces that use it, a no-op decorator everywhere else.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights"
HUB_DEFAULT = "hf://openai-community/gpt2"  # what a Space serves when its repo holds no converted weights
CONCURRENCY_ID = "gpt2"  # every event that runs the model shares this group
API_ENDPOINTS = ("generate", "generate_with_probs", "generate_samples")
EXAMPLES = [
    "Every effort moves you",
    "The lighthouse keeper had not spoken to anyone in three years, until",
    "Here is a recipe for the best chocolate cake:",
    "def fibonacci(n):",
    "Breaking news: scientists in Reykjavik announced today that",
]
API_ARGS = """\
    prompt: text to continue (at most 20,000 characters; empty starts from <|endoftext|>)
    max_new_tokens: tokens to generate, 1 to 1024
    temperature: 0 to 2; 0 is greedy (always the most likely token)
    top_k: keep only the k most likely tokens, 0 to 200; 0 turns it off
    top_p: nucleus sampling, 0.05 to 1; 1 turns it off
    repetition_penalty: 1 (off) to 2; discourages tokens already in the text
    seed: a whole number for reproducible text; empty or null picks one at random (the seed used is reported)
    stop: a stop string or a list of them; the text ends before the first one (not included)
    model: one of the server's models (see the model selector)
"""
SLIDERS = [  # name, label, step, info; ranges from gpt2.request.SERVING, defaults from gpt2.serving.DEFAULTS
    ("max_new_tokens", "Max new tokens", 1, None),
    ("temperature", "Temperature", 0.05, "0 = greedy"),
    ("top_k", "Top-k", 1, "0 = off"),
    ("top_p", "Top-p", 0.05, "1 = off"),
    ("repetition_penalty", "Repetition penalty", 0.05, "1 = off"),
]


class Blocks(gr.Blocks):
    """gr.Blocks whose API endpoints answer a REST call with the wrong number of inputs with a message
    (Gradio's own check sends `{"error": null}` and prints a traceback)."""

    def validate_inputs(self, block_fn, inputs):  # type: ignore[no-untyped-def]
        wanted = list(inspect.signature(block_fn.fn).parameters)
        if block_fn.api_name in API_ENDPOINTS and len(inputs) != len(wanted):
            raise gr.Error(
                f"/{block_fn.api_name} takes {len(wanted)} inputs, in this order: {', '.join(wanted)} "
                f"(got {len(inputs)})",
                title="Invalid request",
                print_exception=False,
            )
        super().validate_inputs(block_fn, inputs)


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

    # --- API endpoints (parameters typed from these signatures; defaults are the UI's defaults) ---

    def api(doc: str, extra: str = "") -> Callable:
        """Give an endpoint its docstring: `doc`, then the parameters all three share (Gradio shows these
        in its API page and MCP tool descriptions)."""

        def attach(fn: Callable) -> Callable:
            fn.__doc__ = f"{doc}\n\nArgs:\n{API_ARGS}{extra}"
            return gpu(fn)

        return attach

    @api("Stream GPT-2's continuation of a prompt; every update is the whole continuation so far.")
    def generate(
        prompt: str,
        max_new_tokens: int = int(DEFAULTS["max_new_tokens"]),
        temperature: float = DEFAULTS["temperature"],
        top_k: int = int(DEFAULTS["top_k"]),
        top_p: float = DEFAULTS["top_p"],
        repetition_penalty: float = DEFAULTS["repetition_penalty"],
        seed: int | str | None = None,
        stop: list[str] | str | None = None,
        model: str = registry.default,
    ) -> Iterator[str]:
        args = (prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, model)
        for p in run(args, with_probs=False):
            yield p.text

    @api(
        "Like /generate, but every update is a JSON object: the text so far, each generated token's "
        "probability (sampled and raw), rank, entropy and top-5 alternatives, the prompt's per-token "
        "probabilities and perplexity, and live stats (see README.md, 'Using the API')."
    )
    def generate_with_probs(
        prompt: str,
        max_new_tokens: int = int(DEFAULTS["max_new_tokens"]),
        temperature: float = DEFAULTS["temperature"],
        top_k: int = int(DEFAULTS["top_k"]),
        top_p: float = DEFAULTS["top_p"],
        repetition_penalty: float = DEFAULTS["repetition_penalty"],
        seed: int | str | None = None,
        stop: list[str] | str | None = None,
        model: str = registry.default,
    ) -> Iterator[dict]:
        args = (prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, model)
        for p in run(args, with_probs=True):
            yield p.payload()

    @api(
        "Stream n continuations of one prompt, decoded side by side; every update is the list of the n "
        "continuations so far. Sample i uses seed + i: exactly what /generate gives with that seed.",
        "    n: how many samples, 1 to 4\n",
    )
    def generate_samples(
        prompt: str,
        max_new_tokens: int = int(DEFAULTS["max_new_tokens"]),
        temperature: float = DEFAULTS["temperature"],
        top_k: int = int(DEFAULTS["top_k"]),
        top_p: float = DEFAULTS["top_p"],
        repetition_penalty: float = DEFAULTS["repetition_penalty"],
        seed: int | str | None = None,
        stop: list[str] | str | None = None,
        model: str = registry.default,
        n: int = 2,
    ) -> Iterator[list[str]]:
        args = (prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, model)
        for p in run(args, with_probs=False, n=n):
            yield list(p.texts)

    # --- the UI handler: text, live line, coloured tokens and summary, all from one stream ---

    @gpu
    def ui_generate(prompt, max_new_tokens, temperature, top_k, top_p, penalty, seed_text, stop_text, model):
        stop = parse_stop_text(stop_text)
        args = (prompt, max_new_tokens, temperature, top_k, top_p, penalty, seed_text, stop, model)
        if isinstance(model, str) and model in registry.names and not registry.is_loaded(model):
            yield (
                prompt,
                f"⏳ loading model **{model}** on {registry.device}…",
                gr.skip(),
                gr.skip(),
                gr.skip(),
            )
        spans: list[str] = []
        prompt_part = ""
        for p in run(args, with_probs=True):
            spans.extend(render.token_span(t) for t in p.tokens[0][len(spans) :])
            if p.prompt is not None and not prompt_part:
                prompt_part = render.prompt_spans(p.prompt)
            html = render.tokens_html(prompt_part, spans)
            yield prompt + p.text, render.status_line(p), html, render.summary_html(p), str(p.request.seed)

    with Blocks(title="GPT-2, hand-built") as demo:
        gr.Markdown(
            "## GPT-2, hand-built\n"
            "OpenAI's GPT-2 written from scratch in PyTorch, streaming token by token. Each token is "
            "coloured by how likely the model found it; hover over one to see what else it considered."
        )
        with gr.Sidebar(label="Settings", open=True, width=300):
            model_box = gr.Dropdown(
                registry.names, value=registry.default, label="Model", info="loaded on first use"
            )
            sliders = {}
            for name, label, step, info in SLIDERS:
                lo, hi = SERVING.bounds(name)
                sliders[name] = gr.Slider(
                    lo, hi, value=DEFAULTS[name], step=step, label=label, info=info, elem_id=name
                )
            seed_box = gr.Textbox(label="Seed", placeholder="empty = random", max_lines=1, elem_id="seed")
            seed_used = gr.Textbox(label="Seed used", interactive=False, max_lines=1, elem_id="seed-used")
            reuse = gr.Button("Reuse this seed", size="sm")
            stop_box = gr.Textbox(
                label="Stop strings", placeholder=r"comma-separated, e.g. \n\n, THE END", max_lines=1
            )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                prompt_box = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    max_length=SERVING.max_prompt_chars,
                    elem_id="prompt",
                    autofocus=True,
                )
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
                output = gr.Textbox(
                    label="Text", lines=8, max_lines=30, interactive=False, elem_id="output", autoscroll=True
                )
                status = gr.Markdown("Ready.", elem_id="status")
                gr.Examples([[e] for e in EXAMPLES], inputs=[prompt_box], label="Try")
            with gr.Column(scale=2):
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

        inputs = [prompt_box, *sliders.values(), seed_box, stop_box, model_box]
        outputs = [output, status, tokens_view, summary, seed_used]
        private = dict(api_visibility="private")  # programs use the named endpoints below
        running = go.click(ui_generate, inputs, outputs, show_progress="minimal", **private, **run_opts)
        stop_btn.click(
            lambda s: s.replace("_generating…_", "_stopped_"),
            status,
            status,
            cancels=[running],
            queue=False,
            **private,
        )
        clear.click(
            lambda: ("", "", "Ready.", render.tokens_html("", []), ""),
            None,
            [prompt_box, output, status, tokens_view, seed_used],
            cancels=[running],
            queue=False,
            **private,
        )
        reuse.click(lambda s: s, seed_used, seed_box, queue=False, **private)
        gr.api(generate, api_name="generate", **run_opts)
        gr.api(generate_with_probs, api_name="generate_with_probs", **run_opts)
        gr.api(generate_samples, api_name="generate_samples", **run_opts)

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    demo.registry, demo.serving = registry, server  # for tests and main()
    return demo


def default_weights() -> str:
    """$GPT2_WEIGHTS, else weights/ — except on a Space (SPACE_ID set) whose weights/ holds no converted
    model: then GPT-2 124M from the Hub (preloaded at build time, see README "Deploy")."""
    if os.environ.get("GPT2_WEIGHTS"):
        return os.environ["GPT2_WEIGHTS"]
    if os.environ.get("SPACE_ID") and not list_models(DEFAULT_WEIGHTS):
        return HUB_DEFAULT
    return str(DEFAULT_WEIGHTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Serve the GPT-2 demo (host/port: GRADIO_SERVER_NAME/PORT).")
    ap.add_argument(
        "--weights",
        default=default_weights(),
        help="a converted .safetensors file or folder, or hf://OWNER/REPO[@REVISION][/FILE] (GPT2_WEIGHTS)",
    )
    ap.add_argument("--share", action="store_true", help="also open a public *.gradio.live link")
    ap.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("GPT2_PRECISION", "fp32"),
        help="CPU weights: fp32 (exact), bf16 or int8 (fewer bytes per token, see README 'Speed')",
    )
    ap.add_argument(
        "--mcp",
        action="store_true",
        default=os.environ.get("GPT2_MCP", "").lower() in ("1", "true", "yes"),
        help="also serve the API as an MCP server (needs `pip install 'gradio[mcp]'`; env GPT2_MCP=1)",
    )
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
