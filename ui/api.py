"""The client API: the three endpoints' functions (Gradio types each parameter from their signatures and
shows their docstrings on its API page and in MCP tool descriptions), and a gr.Blocks that answers a REST
call with the wrong number of inputs with a message.

    /generate             the continuation so far, as a string, at each update
    /generate_with_probs  the same plus per-token probabilities, alternatives and perplexity, as JSON
    /generate_samples     n continuations of one prompt decoded side by side, as a list of strings
"""

# No `from __future__ import annotations`: gr.api reads the endpoint functions' annotations at runtime.

import inspect
from collections.abc import Callable, Iterator

import gradio as gr

from gpt2.serving import DEFAULTS, Progress

from .content import API_ARGS

ENDPOINTS = ("generate", "generate_with_probs", "generate_samples")
Run = Callable[..., Iterator[Progress]]  # run(args, with_probs, n=1): a checked request's stream


class Blocks(gr.Blocks):
    """gr.Blocks whose API endpoints answer a REST call with the wrong number of inputs with a message
    (Gradio's own check sends `{"error": null}` and prints a traceback)."""

    def validate_inputs(self, block_fn, inputs):  # type: ignore[no-untyped-def]
        wanted = list(inspect.signature(block_fn.fn).parameters)
        if block_fn.api_name in ENDPOINTS and len(inputs) != len(wanted):
            raise gr.Error(
                f"/{block_fn.api_name} takes {len(wanted)} inputs, in this order: {', '.join(wanted)} "
                f"(got {len(inputs)})",
                title="Invalid request",
                print_exception=False,
            )
        super().validate_inputs(block_fn, inputs)


def endpoints(run: Run, default_model: str, wrap: Callable[[Callable], Callable]) -> list[Callable]:
    """The endpoint functions, each streaming through `run` and wrapped by `wrap` (e.g. ZeroGPU's);
    parameters in the API's order, defaults the UI's defaults."""

    def api(doc: str, extra: str = "") -> Callable:
        """Give an endpoint its docstring: `doc`, then the parameters all three share (Gradio shows these
        in its API page and MCP tool descriptions)."""

        def attach(fn: Callable) -> Callable:
            fn.__doc__ = f"{doc}\n\nArgs:\n{API_ARGS}{extra}"
            return wrap(fn)

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
        model: str = default_model,
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
        model: str = default_model,
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
        model: str = default_model,
        n: int = 2,
    ) -> Iterator[list[str]]:
        args = (prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, model)
        for p in run(args, with_probs=False, n=n):
            yield list(p.texts)

    return [generate, generate_with_probs, generate_samples]
