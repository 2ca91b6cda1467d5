"""The client API: three streaming endpoints whose parameters are the declared request parameters
(`gpt2.decoding.params`), one that looks inside a token, and a gr.Blocks that answers an older client or
a wrong call.

    /generate             the continuation so far, as a string, at each update
    /generate_with_probs  the same plus per-token probabilities, alternatives and perplexity, as JSON
    /generate_samples     n continuations of one prompt decoded side by side, as a list of strings
    /inspect              one token of a text seen from inside: every head's attention from it, every
                          layer's guess (the logit lens) and each block's writes, as one JSON object

Gradio types each endpoint from its function's signature and annotations and shows its docstring on the
API page and in MCP tool descriptions, so each function gets a real signature built from the
declarations: adding a parameter there adds it to every endpoint, in the same place.
"""

# No `from __future__ import annotations`: Gradio reads the endpoint functions' annotations at runtime.

import inspect
import json
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr
from fastapi import Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from gradio.route_utils import FnIndexInferError

from gpt2.decoding.params import BY_NAME as PARAMS_BY_NAME
from gpt2.decoding.params import (
    INSPECT_PARAMS,
    REQUEST,
    REQUIRED,
    SAMPLES,
    SAMPLES_DEFAULT,
    SERVER,
    SERVING,
    Param,
    check_prompt,
    params,
    signature,
)
from gpt2.serving import Progress

Run = Callable[..., Iterator[Progress]]  # run(values by name, with_probs): a checked request's stream


@dataclass(frozen=True)
class Endpoint:
    name: str
    doc: str
    update: Callable[[Progress], object]  # what a client gets at each update
    returns: object  # its annotation
    with_probs: bool = False
    samples: bool = False  # takes n: several samples side by side

    @property
    def params(self) -> tuple[Param, ...]:
        return params(REQUEST, SERVER, *([SAMPLES] if self.samples else []))


ENDPOINTS = (
    Endpoint(
        "generate",
        "Stream GPT-2's continuation of a prompt; every update is the whole continuation so far.",
        lambda p: p.text,
        Iterator[str],
    ),
    Endpoint(
        "generate_with_probs",
        "Like /generate, but every update is a JSON object: the text so far, each generated token's "
        "probability (sampled and raw), rank, entropy and top-5 alternatives, the prompt's per-token "
        "probabilities and perplexity, and live stats (see README.md, 'Using the API').",
        lambda p: p.payload(),
        Iterator[dict],
        with_probs=True,
    ),
    Endpoint(
        "generate_samples",
        "Stream n continuations of one prompt, decoded side by side; every update is the list of the n "
        "continuations so far. Sample i uses seed + i: exactly what /generate gives with that seed.",
        lambda p: list(p.texts),
        Iterator[list[str]],
        samples=True,
    ),
)
BY_NAME = {e.name: e for e in ENDPOINTS}
INSPECT = "inspect"
NAMES = (*BY_NAME, INSPECT)  # every endpoint a program can call
INSPECT_DOC = (
    "Look inside GPT-2 at one token of a text: the weight each attention head gives every token up to it, "
    "what each layer would predict next (the logit lens: the top 5 after the embeddings and after each "
    "block) and how much each block's attention and MLP wrote there; one JSON object with tokens, "
    "position, offset, attention[layer][head][token], lens[layer] and writes[layer] (see README.md, "
    "'Looking inside')."
)


def bounds_text(p: Param) -> str:
    """`p`'s serving bounds in words ("1 to 1024", "at most 20,000 characters"), or "" if it has none."""
    if p.library is None:
        return ""
    lo, hi = SERVING.bounds(p.name)
    if p.check is check_prompt:
        return f"at most {hi:,} characters"
    return f"{lo:g} to {hi:g}" if hi < 1e15 else f"{lo} to {hi}"  # (a seed's every digit)


def describe(p: Param) -> str:
    """One line for the API page and MCP: what `p` does, and its bounds on this server."""
    bounds = bounds_text(p)
    return f"{p.doc} ({bounds})" if bounds else p.doc


def _declare(fn: Callable, name: str, doc: str, declared: tuple[Param, ...], sig: inspect.Signature, returns):
    """Give `fn` the endpoint's name, its docstring (what Gradio shows on the API page and in MCP tool
    descriptions: each parameter with its bounds) and the declared parameters' real signature."""
    args = "".join(f"    {p.name}: {describe(p)}\n" for p in declared)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{doc}\n\nArgs:\n{args}"
    fn.__signature__ = sig.replace(return_annotation=returns)
    fn.__annotations__ = {**{p.name: p.type for p in declared}, "return": returns}


def endpoint_function(endpoint: Endpoint, run: Run, default_model: str) -> Callable[..., Iterator]:
    """`endpoint` as a function with the declared parameters' real signature: the API's defaults, the
    server's first model, and /generate_samples' two samples."""
    sig = signature(endpoint.params, api=True, defaults={"model": default_model, "n": SAMPLES_DEFAULT})

    def fn(*args, **kwargs):
        values = sig.bind(*args, **kwargs)
        values.apply_defaults()
        for progress in run(values.arguments, with_probs=endpoint.with_probs):
            yield endpoint.update(progress)

    _declare(fn, endpoint.name, endpoint.doc, endpoint.params, sig, endpoint.returns)
    return fn


def inspect_function(look: Callable[[dict], dict], default_model: str) -> Callable[..., dict]:
    """/inspect as a function with its declared parameters' signature; `look(values by name)` checks
    them and returns the trace's JSON."""
    sig = signature(INSPECT_PARAMS, api=True, defaults={"model": default_model})

    def fn(*args, **kwargs):
        values = sig.bind(*args, **kwargs)
        values.apply_defaults()
        return look(values.arguments)

    _declare(fn, INSPECT, INSPECT_DOC, INSPECT_PARAMS, sig, dict)
    return fn


def add_endpoints(
    run: Run,
    look: Callable[[dict], dict],
    default_model: str,
    wrap: Callable[[Callable], Callable],
    **options,
) -> None:
    """Register every endpoint in the Blocks being built, each wrapped by `wrap` (e.g. ZeroGPU's)."""
    for endpoint in ENDPOINTS:
        gr.api(wrap(endpoint_function(endpoint, run, default_model)), api_name=endpoint.name, **options)
    gr.api(wrap(inspect_function(look, default_model)), api_name=INSPECT, **options)


def complete(api_name: str, sig: inspect.Signature, inputs: list) -> None:
    """Fill in `inputs` (a REST call's list of values, in order) with the defaults of the trailing
    parameters it left out: an older client does not send the parameters added since. A call with more
    inputs than there are parameters, or without the required ones, gets a message naming them in order."""
    declared = list(sig.parameters.values())
    required = [q.name for q in declared if q.default is REQUIRED]
    if not len(required) <= len(inputs) <= len(declared):
        optional = [q.name for q in declared if q.default is not REQUIRED]
        raise gr.Error(
            f"/{api_name} takes {len(required)} to {len(declared)} inputs, in this order: "
            f"{', '.join(required)}, then optionally {', '.join(optional)} (got {len(inputs)})",
            title="Invalid request",
            print_exception=False,
        )
    inputs.extend(q.default for q in declared[len(inputs) :])


# Where programs call an endpoint with a body of their own: Gradio's REST API (/call/NAME, /run/NAME and
# /api/NAME, under /gradio_api). Its other routes (the clients' queue) keep Gradio's answers.
REST_PATH = re.compile(r"/(call|run|api)/[^/]+/?")
EXAMPLE_BODY = json.dumps({"data": [PARAMS_BY_NAME["prompt"].example]})


def body_error(exc: RequestValidationError, content_type: str) -> str:
    """One line for a REST body FastAPI could not read as the call's JSON object."""
    first = (exc.errors() or [{}])[0]
    fix = f"send a JSON object like {EXAMPLE_BODY} with Content-Type: application/json"
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return f"the request body is empty: {fix}"
    if first.get("type") == "json_invalid":
        where = first.get("loc", ("body", 0))[-1]
        why = first.get("ctx", {}).get("error", "not JSON")
        return f"the request body is not JSON ({why} at character {where}): {fix}"
    if "json" not in content_type.lower():
        return f"the request body must be JSON (it was sent as {content_type[:60] or 'no type'}): {fix}"
    where = ".".join(str(part) for part in first.get("loc", ("body",)))
    return f"invalid request body at {where}: {first.get('msg', 'not what the call takes')}: {fix}"


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    if not REST_PATH.search(request.url.path):
        return await request_validation_exception_handler(request, exc)
    return JSONResponse({"detail": body_error(exc, request.headers.get("content-type", ""))}, status_code=400)


async def _unknown_endpoint(request: Request, exc: FnIndexInferError) -> JSONResponse:
    name = str(request.path_params.get("api_name", ""))[:80]
    known = ", ".join(f"/{known}" for known in NAMES)
    return JSONResponse({"detail": f"no endpoint /{name} here; the endpoints are {known}"}, status_code=404)


class Blocks(gr.Blocks):
    """gr.Blocks whose API endpoints take a REST call with fewer inputs than they have parameters (the
    rest get their defaults) and answer a wrong number of inputs with a message (Gradio's own check sends
    `{"error": null}` and prints a traceback). Gradio's clients send every parameter by name.

    A REST body that is not the call's JSON object gets a 400 with one line saying what to send (FastAPI's
    answer is a 422 holding a list of validation records), and an unknown endpoint a 404 naming the ones
    there are (Gradio's is a bare 500).
    """

    def validate_inputs(self, block_fn, inputs):  # type: ignore[no-untyped-def]
        if block_fn.api_name in NAMES:
            complete(block_fn.api_name, inspect.signature(block_fn.fn), inputs)
        super().validate_inputs(block_fn, inputs)

    def launch(self, *args, app_kwargs: dict | None = None, **kwargs):  # type: ignore[no-untyped-def]
        app_kwargs = dict(app_kwargs or {})
        handlers = {RequestValidationError: _invalid_body, FnIndexInferError: _unknown_endpoint}
        app_kwargs["exception_handlers"] = {**handlers, **app_kwargs.get("exception_handlers", {})}
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)


def _type_name(annotation: object) -> str:
    names = {str: "string", int: "int", float: "float", type(None): "null"}
    if typing.get_origin(annotation) is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}s"
    options = typing.get_args(annotation) or (annotation,)
    words = [names.get(t) or _type_name(t) for t in options]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def parameter_table(declared: tuple[Param, ...] | None = None) -> str:
    """README's table of the generation endpoints' parameters, or of `declared` (e.g. `INSPECT_PARAMS`);
    tests/app/test_api_params.py holds README to them."""
    rows = ["| parameter | type | default | range | |", "|---|---|---|---|---|"]
    for p in declared or params():
        only = [e.name for e in ENDPOINTS if p in e.params] if declared is None else []
        name = f"`{p.name}`" + (f" (`/{only[0]}` only)" if len(only) == 1 else "")
        default = SAMPLES_DEFAULT if p.scope == SAMPLES else p.api
        shown = {REQUIRED: "(required)", None: "null"}.get(default, default)  # type: ignore[call-overload]
        doc = p.doc.replace("|", "\\|")
        rows.append(f"| {name} | {_type_name(p.type)} | {shown} | {bounds_text(p)} | {doc} |")
    return "\n".join(rows) + "\n"
