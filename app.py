"""The Gradio Space: GPT-2 streaming token by token, with a look inside the model, and a client API.

    python app.py [--weights weights/] [--share] [--mcp]

Host and port come from Gradio's environment (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT). Event handlers are
thin: they check the request, then iterate `stream_generation`, the one place that drives the library. It
consumes `Step`s from a step source (`gpt2.generate_steps` by default), so a batching scheduler or another
precision can be plugged in through `build_demo(step_source=...)` without touching the UI.

API (all streaming, parameters by name, see README.md, "Using the API"):
    /generate             the continuation so far, as a string, at each update
    /generate_with_probs  the same plus per-token probabilities, alternatives and perplexity, as JSON
"""

# No `from __future__ import annotations`: gr.api reads the endpoint functions' annotations at runtime.

import argparse
import html
import importlib.util
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from gpt2 import (
    GPT2,
    Step,
    Tokenizer,
    generate_steps,
    hub,
    list_models,
    load_model,
    load_tokenizer,
    native,
    read_metadata,
)
from gpt2.fast import PRECISIONS, FastGPT2, resolve_precision
from gpt2.generation import normalize_stop, prompt_ids
from gpt2.inspect import PromptProbs, TokenProbs, continuation_summary, prompt_probs, token_probs
from gpt2.sampling import resolve_seed
from gpt2.scheduler import BatchedSteps, BusyError
from gpt2.tokenizer import BPE_FILE_SHA256

try:  # Hugging Face ZeroGPU: present on Spaces that use it, a no-op decorator everywhere else.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

ROOT = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = ROOT / "weights"
CONVERT_COMMAND = "python -m convert --model 124M"
MAX_PROMPT_CHARS = 20_000  # ~5k tokens; the model sees at most 1024 of them anyway
YIELD_INTERVAL = 1 / 15  # seconds between UI/API updates: smooth to read, cheap to send
CONCURRENCY_ID = "gpt2"  # every event that runs the model shares this group

# One table for the sliders and for checking API requests (which bypass the sliders).
LIMITS: dict[str, tuple[float, float]] = {
    "max_new_tokens": (1, 1024),
    "temperature": (0.0, 2.0),
    "top_k": (0, 200),
    "top_p": (0.05, 1.0),
    "repetition_penalty": (1.0, 2.0),
}
INTEGER_PARAMS = ("max_new_tokens", "top_k")
DEFAULTS: dict[str, float] = {
    "max_new_tokens": 100,
    "temperature": 1.0,
    "top_k": 40,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}
EXAMPLES = [
    "Every effort moves you",
    "The lighthouse keeper had not spoken to anyone in three years, until",
    "Here is a recipe for the best chocolate cake:",
    "def fibonacci(n):",
    "Breaking news: scientists in Reykjavik announced today that",
]

StepSource = Callable[..., Iterator[Step]]


def gpu(fn: Callable) -> Callable:
    """`@spaces.GPU` when running on ZeroGPU (borrow a GPU for the call), the function itself otherwise."""
    return spaces.GPU(fn) if spaces is not None else fn


# ----------------------------------------------------------------------------------------------------------
# Models


class NoWeightsError(RuntimeError):
    pass


# --- Weights from the Hugging Face Hub (`--weights hf://OWNER/REPO[@REVISION][/FILE]`, gpt2/hub.py) ---
HUB_DEFAULT = "hf://openai-community/gpt2"  # what a Space serves when its repo holds no converted weights


def default_weights() -> str:
    """`--weights` default: $GPT2_WEIGHTS, else weights/, except on a Space (SPACE_ID set) whose weights/
    holds no converted model: then GPT-2 124M from the Hub (cached after the first start)."""
    if os.environ.get("GPT2_WEIGHTS"):
        return os.environ["GPT2_WEIGHTS"]
    if os.environ.get("SPACE_ID") and not list_models(DEFAULT_WEIGHTS):
        return HUB_DEFAULT
    return str(DEFAULT_WEIGHTS)


def load_weights(source: "Path | str", device: str) -> GPT2:
    """A converted weights file, or an hf:// spec (downloaded once into huggingface_hub's cache)."""
    if hub.is_hub_spec(str(source)):
        return hub.load_hub_model(str(source), device=device)
    return load_model(source, device=device)


def hub_registry(spec: str, device: str | None, precision: str) -> "ModelRegistry":
    """The one model an hf:// spec names, served with the packaged GPT-2 tokenizer."""
    name = hub.model_name(spec)  # validates the spec: a malformed one is a HubError (ValueError) here
    return ModelRegistry({name: spec}, load_tokenizer(), device=device, precision=precision)


# ----------------------------------------------------------------------------------------------------------


class ModelRegistry:
    """Converted models by display name, loaded on first use and kept (at most `max_loaded` at a time).

    Names are the only handle a request has on a model: a name must be one `list_models` found, so no
    request can make the app open a path of its choosing.
    """

    def __init__(
        self,
        paths: dict[str, Path | str],  # a str is an hf:// spec
        tokenizer: Tokenizer,
        *,
        directory: Path | None = None,
        device: str | None = None,
        precision: str = "fp32",
        max_loaded: int = 2,
    ) -> None:
        if not paths:
            raise NoWeightsError("no converted models")
        self.paths = dict(paths)
        self.tokenizer = tokenizer
        self.directory = directory  # re-scanned when a request names a model converted after start-up
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision != "fp32" and not self.device.startswith("cpu"):
            raise ValueError(f"precision {precision!r} is a CPU mode; on {self.device} use fp32")
        # bf16/int8 fall back to fp32 (with a warning) on CPUs without native bf16.
        self.precision = resolve_precision(precision)
        self.max_loaded = max_loaded
        self._models: OrderedDict[str, GPT2 | FastGPT2] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], device: str | None = None, precision: str = "fp32"
    ) -> "ModelRegistry":
        """Every converted model in a folder, or the single model in a weights file (or an hf:// spec)."""
        if hub.is_hub_spec(str(path)):
            return hub_registry(str(path), device, precision)
        path = Path(path)
        if path.is_file():
            name = read_metadata(path).get("name") or path.stem
            paths, directory = {name: path.resolve()}, None
            bpe = path.parent
        else:
            paths, directory, bpe = list_models(path), path, path
        if not paths:
            raise NoWeightsError(
                f"No converted GPT-2 weights found in {path}. Convert OpenAI's checkpoint first:\n\n"
                f"    {CONVERT_COMMAND}\n\n(or point --weights at a converted .safetensors file or folder)"
            )
        has_bpe = all((bpe / name).is_file() for name in BPE_FILE_SHA256)
        tokenizer = load_tokenizer(bpe if has_bpe else None)
        return cls(paths, tokenizer, directory=directory, device=device, precision=precision)

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    @property
    def default(self) -> str:
        return self.names[0]  # list_models sorts by size: the smallest (fastest) model first

    def is_loaded(self, name: str) -> bool:
        return name in self._models

    def check_name(self, name: object) -> str:
        if name is None or name == "":
            return self.default
        if not isinstance(name, str):
            raise ValueError(f"model must be a model name (a string), got {type(name).__name__}")
        if name not in self.paths and self.directory is not None:
            self.paths = list_models(self.directory) or self.paths
        if name not in self.paths:
            raise ValueError(f"unknown model {name[:80]!r}; available: {', '.join(self.names)}")
        return name

    @property
    def device_label(self) -> str:
        return self.device if self.precision == "fp32" else f"{self.device}, {self.precision}"

    def get(self, name: str) -> GPT2 | FastGPT2:
        name = self.check_name(name)
        with self._lock:  # two first requests for one model load it once
            if name not in self._models:
                model = load_weights(self.paths[name], device=self.device)
                if self.precision != "fp32":  # packed bf16/int8 weights; the fp32 copy is dropped
                    model = FastGPT2(model, self.precision)
                self._models[name] = model
                while len(self._models) > self.max_loaded:
                    self._models.popitem(last=False)
            self._models.move_to_end(name)
            return self._models[name]


def default_concurrency(device: str) -> int:
    """How many generations run at once. On a small CPU one at a time is fastest for everyone (each
    already uses every core); a GPU interleaves several without slowing each much."""
    env = os.environ.get("GPT2_CONCURRENCY")
    if env:
        if not env.strip().isdigit():
            raise ValueError(f"GPT2_CONCURRENCY must be a whole number, got {env!r}")
        return max(1, int(env))
    if device.startswith("cuda"):
        return 4
    return 1 if (os.cpu_count() or 1) <= 4 else 2


# ----------------------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Request:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    stop: tuple[str, ...]
    model: str


def _check_number(name: str, value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    number = float(value)
    lo, hi = LIMITS[name]
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    if not lo <= number <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {number:g}")
    if name in INTEGER_PARAMS:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {number:g}")
        return int(number)
    return number


def make_request(
    registry: ModelRegistry,
    prompt: object,
    max_new_tokens: object = DEFAULTS["max_new_tokens"],
    temperature: object = DEFAULTS["temperature"],
    top_k: object = DEFAULTS["top_k"],
    top_p: object = DEFAULTS["top_p"],
    repetition_penalty: object = DEFAULTS["repetition_penalty"],
    seed: object = None,
    stop: object = None,
    model: object = None,
) -> Request:
    """Check everything a client sent; a ValueError carries a message meant for the person who sent it."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"prompt is too long: {len(prompt):,} characters (at most {MAX_PROMPT_CHARS:,}; "
            f"GPT-2 sees only its last 1024 tokens)"
        )
    numbers = {
        name: _check_number(name, value)
        for name, value in dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
        ).items()
    }
    return Request(
        prompt=prompt,
        seed=resolve_seed(seed),  # the seed actually used, reported back so any result can be reproduced
        stop=tuple(normalize_stop(stop)),
        model=registry.check_name(model),
        **numbers,
    )


def parse_stop_text(text: str | None) -> list[str]:
    """The UI's stop box: comma-separated, with \\n and \\t written as escapes (e.g. `\\n\\n, THE END`)."""
    if not text:
        return []
    parts = [p.strip().replace("\\n", "\n").replace("\\t", "\t") for p in text.split(",")]
    return [p for p in parts if p]


# ----------------------------------------------------------------------------------------------------------
# The one function that drives the library


@dataclass
class Progress:
    """What a client sees at an update: the continuation so far and live numbers."""

    text: str
    request: Request
    device: str
    n_prompt: int
    n_new: int = 0
    elapsed: float = 0.0
    ttft: float | None = None  # seconds from the request to the first token
    finish_reason: str | None = None  # set on the last update
    tokens: list[TokenProbs] = field(default_factory=list)  # with_probs only
    prompt: PromptProbs | None = None  # with_probs only

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def tokens_per_second(self) -> float | None:
        return self.n_new / self.elapsed if self.n_new and self.elapsed > 0 else None

    def stats(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.n_prompt,
            "new_tokens": self.n_new,
            "seconds": round(self.elapsed, 4),
            "tokens_per_second": self.tokens_per_second,
            "time_to_first_token": self.ttft,
        }


def stream_generation(
    registry: ModelRegistry,
    request: Request,
    *,
    with_probs: bool = False,
    interval: float = YIELD_INTERVAL,
    step_source: StepSource = generate_steps,
) -> Iterator[Progress]:
    """Run one request, yielding a `Progress` about every `interval` seconds; the last one is complete.

    The same `Progress` object is updated and re-yielded (callers render it before asking for more).
    With `with_probs`, each token is inspected from the logits the step already carries, and the prompt
    is scored with one extra forward pass after the first token (so it does not delay that token).
    """
    model = registry.get(request.model)
    tokenizer = registry.tokenizer
    ids = prompt_ids(tokenizer, request.prompt)
    start = time.perf_counter()
    steps = step_source(
        model,
        tokenizer,
        request.prompt,
        max_new_tokens=request.max_new_tokens,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        seed=request.seed,
        stop=list(request.stop),
    )
    progress = Progress("", request, registry.device_label, n_prompt=len(ids))
    pieces: list[str] = []
    last_yield = -math.inf
    try:
        while True:
            # Grad mode is per thread, and Gradio may resume a generator on a different thread for every
            # update: switch it off around each step rather than once around the loop.
            with torch.no_grad():
                step = next(steps, None)
                if step is None:  # a step source that ends without a final step
                    step = Step(None, "", finish_reason="length")
                now = time.perf_counter()
                if step.token is not None:
                    progress.n_new += 1
                    if progress.ttft is None:
                        progress.ttft = now - start
                    if with_probs:
                        progress.tokens.append(
                            token_probs(tokenizer, step.token, step.logits, step.processed)
                        )
                if with_probs and progress.prompt is None and (progress.n_new or step.token is None):
                    progress.prompt = prompt_probs(model, tokenizer, ids)
            pieces.append(step.text)
            progress.elapsed = now - start
            if step.token is None:
                progress.finish_reason = step.finish_reason or "length"
                progress.text = "".join(pieces)
                yield progress
                return
            if now - last_yield >= interval:
                progress.text = "".join(pieces)
                last_yield = now
                yield progress
    finally:
        # Stopped early (Stop, job.cancel(), a closed tab): tell the step source at once, so a shared
        # scheduler frees this request's slot now rather than when the garbage collector gets to it.
        close = getattr(steps, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------------------------------------
# Rendering (pure functions of a Progress, so they are easy to test)


def status_line(p: Progress) -> str:
    parts = [
        f"**{p.n_prompt}** prompt tokens",
        f"**{p.n_new}** new tokens",
        f"**{p.tokens_per_second:.1f}** tokens/s" if p.tokens_per_second else "— tokens/s",
        f"first token **{p.ttft:.2f} s**" if p.ttft is not None else "first token —",
        f"seed `{p.request.seed}`",
        f"{p.request.model} on {p.device}",
    ]
    state = f"finished ({p.finish_reason})" if p.done else "generating…"
    return " · ".join(parts) + f" · _{state}_"


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


def token_span(t: TokenProbs) -> str:
    rows = "".join(
        f"<tr class='{'chosen' if a.token == t.token else ''}'><td>{_label(a.text)}</td>"
        f"<td>{_pct(a.prob)}</td><td>{_pct(a.sampled_prob)}</td></tr>"
        for a in t.alternatives
    )
    tip = (
        f"<span class='tip'><b>{_label(t.text)}</b> · sampled p {_pct(t.prob)} · "
        f"model p {_pct(t.raw_prob)} · rank {t.rank} · entropy {t.entropy:.2f}"
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
        tip += f" · rank {t.rank}</span>" if t.rank is not None else "</span>"
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


def summary_html(p: Progress) -> str:
    s = continuation_summary(p.tokens)
    ppl = f"{p.prompt.perplexity:.1f}" if p.prompt and p.prompt.perplexity is not None else "—"
    mean_lp = f"{s['mean_logprob']:.2f}" if s["mean_logprob"] is not None else "—"
    cont_ppl = f"{s['perplexity']:.1f}" if s["perplexity"] is not None else "—"
    ent = f"{s['mean_entropy']:.2f}" if s["mean_entropy"] is not None else "—"
    return (
        "<div class='summary'>"
        f"<div><span class='k'>prompt perplexity</span> <b>{ppl}</b></div>"
        f"<div><span class='k'>continuation mean log-prob</span> <b>{mean_lp}</b> "
        f"<span class='k'>(perplexity {cont_ppl})</span></div>"
        f"<div><span class='k'>entropy per step (mean {ent} nats)</span><br>"
        f"{sparkline([t.entropy for t in p.tokens])}</div>"
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
    + " · hover or tap a token for what else the model considered</div>"
)

TOKENS_CSS = """
.tokens { position: relative; white-space: pre-wrap; line-height: 1.9; font-family: var(--font-mono);
  font-size: 0.9em; }
.tok { border-radius: 3px; padding: 1px 0; cursor: default; }
.tok.prm { opacity: 0.75; }
/* A token's details open as a panel under the whole token block (positioned on .tokens, not on the
   token), so they never run off the edge of the page whatever the token's place in the line. */
.tok .tip { display: none; position: absolute; left: 0; right: 0; top: calc(100% + 4px); z-index: 50;
  white-space: normal; padding: 6px 8px; border-radius: 6px; font-size: 0.85em; line-height: 1.35;
  background: var(--background-fill-primary); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); box-shadow: 0 2px 8px rgba(0,0,0,.2); }
.tok:hover, .tok:focus { outline: 1px solid var(--body-text-color); }
.tok:hover .tip, .tok:focus .tip { display: block; }
.tip table { border-collapse: collapse; margin-top: 4px; }
.tip td, .tip th { padding: 0 10px 0 0; text-align: left; white-space: pre; }
.tip tr.chosen td { font-weight: bold; }
.legend { font-size: 0.8em; margin-bottom: 6px; opacity: 0.85; }
.summary { font-size: 0.9em; display: flex; flex-direction: column; gap: 4px; }
.summary .k { opacity: 0.7; }
"""


def tokens_html(prompt_part: str, gen_spans: list[str]) -> str:
    return f"{LEGEND}<div class='tokens'>{prompt_part}{''.join(gen_spans)}</div>"


def probs_payload(p: Progress) -> dict[str, Any]:
    """The JSON /generate_with_probs streams (documented in README.md, "Using the API")."""
    return {
        "text": p.text,
        "done": p.done,
        "finish_reason": p.finish_reason,
        "seed": p.request.seed,
        "model": p.request.model,
        "stats": p.stats(),
        "prompt": p.prompt.to_dict() if p.prompt is not None else None,
        "tokens": [t.to_dict() for t in p.tokens],
        "summary": continuation_summary(p.tokens),
    }


# ----------------------------------------------------------------------------------------------------------
# The Blocks app


def build_demo(
    registry: ModelRegistry | str | os.PathLike[str] = DEFAULT_WEIGHTS,
    *,
    step_source: StepSource = generate_steps,
    yield_interval: float = YIELD_INTERVAL,
    concurrency: int | None = None,
    queue_size: int = 32,
) -> gr.Blocks:
    """The Space. `registry` is a ModelRegistry or a weights file/folder (tests pass a fixture folder)."""
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry.from_path(registry)
    concurrency = concurrency or default_concurrency(registry.device)
    run_opts = dict(concurrency_id=CONCURRENCY_ID, concurrency_limit=concurrency)

    def stream(request: Request, with_probs: bool) -> Iterator[Progress]:
        try:
            yield from stream_generation(
                registry, request, with_probs=with_probs, interval=yield_interval, step_source=step_source
            )
        except ValueError as exc:  # a step source may refuse a request too (e.g. a prompt over its limit)
            raise gr.Error(str(exc), title="Invalid request", print_exception=False) from None
        except BusyError as exc:  # the batching scheduler's slots and queue are full
            raise gr.Error(str(exc), title="Server busy", print_exception=False) from None

    def checked(*args: object) -> Request:
        try:
            return make_request(registry, *args)
        except ValueError as exc:
            raise gr.Error(str(exc), title="Invalid request", print_exception=False) from None

    # --- API endpoints (parameters typed from these signatures; defaults are the sliders' defaults) ---

    @gpu
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
        """Stream GPT-2's continuation of a prompt; every update is the whole continuation so far.

        Args:
            prompt: text to continue (at most 20,000 characters; empty starts from <|endoftext|>)
            max_new_tokens: tokens to generate, 1 to 1024
            temperature: 0 to 2; 0 is greedy (always the most likely token)
            top_k: keep only the k most likely tokens, 0 to 200; 0 turns it off
            top_p: nucleus sampling, 0.05 to 1; 1 turns it off
            repetition_penalty: 1 (off) to 2; discourages tokens already in the text
            seed: a whole number for reproducible text; empty or null picks one at random
            stop: a stop string or a list of them; the text ends before the first one (not included)
            model: one of the converted models (see the model selector)
        """
        request = checked(
            prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, model
        )
        for p in stream(request, with_probs=False):
            yield p.text

    @gpu
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
        """Like /generate, but every update is a JSON object: the text so far, each generated token's
        probability (sampled and raw), rank, entropy and top-5 alternatives, the prompt's per-token
        probabilities and perplexity, and live stats (see README.md, "Using the API" for the fields).

        Args:
            prompt: text to continue (at most 20,000 characters)
            max_new_tokens: tokens to generate, 1 to 1024
            temperature: 0 to 2; 0 is greedy
            top_k: 0 (off) to 200
            top_p: 0.05 to 1 (1 = off)
            repetition_penalty: 1 (off) to 2
            seed: a whole number, or empty/null for a random one (the seed used is in the result)
            stop: a stop string or a list of them
            model: one of the converted models
        """
        request = checked(
            prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, model
        )
        for p in stream(request, with_probs=True):
            yield probs_payload(p)

    # --- the UI handler: text, live line, coloured tokens and summary, all from one stream ---

    @gpu
    def ui_generate(
        prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_k: float,
        top_p: float,
        repetition_penalty: float,
        seed_text: str,
        stop_text: str,
        model: str,
    ) -> Iterator[tuple]:
        request = checked(
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed_text,
            parse_stop_text(stop_text),
            model,
        )
        if not registry.is_loaded(request.model):
            loading = f"⏳ loading model **{request.model}** on {registry.device}…"
            yield prompt, loading, gr.skip(), gr.skip(), gr.skip()
        spans: list[str] = []
        prompt_part = ""
        for p in stream(request, with_probs=True):
            spans.extend(token_span(t) for t in p.tokens[len(spans) :])
            if p.prompt is not None and not prompt_part:
                prompt_part = prompt_spans(p.prompt)
            yield (
                prompt + p.text,
                status_line(p),
                tokens_html(prompt_part, spans),
                summary_html(p),
                str(request.seed),
            )

    with gr.Blocks(title="GPT-2, hand-built") as demo:
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
            for name, label, step, info in [
                ("max_new_tokens", "Max new tokens", 1, None),
                ("temperature", "Temperature", 0.05, "0 = greedy"),
                ("top_k", "Top-k", 1, "0 = off"),
                ("top_p", "Top-p", 0.05, "1 = off"),
                ("repetition_penalty", "Repetition penalty", 0.05, "1 = off"),
            ]:
                lo, hi = LIMITS[name]
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
                    label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt", autofocus=True
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
                    tokens_html("", []),
                    label="Inside the model",
                    css_template=TOKENS_CSS,
                    elem_id="tokens",
                    js_on_load=None,
                    container=True,
                    padding=True,
                )
                summary = gr.HTML(
                    summary_html(Progress("", _blank_request(registry), registry.device, 0)),
                    css_template=TOKENS_CSS,
                    elem_id="summary",
                    js_on_load=None,
                    padding=True,
                )

        inputs = [prompt_box, *sliders.values(), seed_box, stop_box, model_box]
        outputs = [output, status, tokens_view, summary, seed_used]
        run = go.click(
            ui_generate,
            inputs,
            outputs,
            api_visibility="private",  # programs use /generate and /generate_with_probs
            show_progress="minimal",
            **run_opts,
        )
        stop_btn.click(
            lambda s: s.replace("_generating…_", "_stopped_"),
            status,
            status,
            cancels=[run],
            api_visibility="private",
            queue=False,
        )
        clear.click(
            lambda: ("", "", "Ready.", tokens_html("", []), ""),
            None,
            [prompt_box, output, status, tokens_view, seed_used],
            cancels=[run],
            api_visibility="private",
            queue=False,
        )
        reuse.click(lambda s: s, seed_used, seed_box, api_visibility="private", queue=False)
        gr.api(generate, api_name="generate", **run_opts)
        gr.api(generate_with_probs, api_name="generate_with_probs", **run_opts)

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    demo.registry = registry  # for tests and main()
    return demo


def _blank_request(registry: ModelRegistry) -> Request:
    return Request("", 1, 1.0, 0, 1.0, 1.0, 0, (), registry.default)


# ----------------------------------------------------------------------------------------------------------
# Command line


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
        help="CPU weights: fp32 (exact), bf16 or int8 (faster, see README 'Speed'); env GPT2_PRECISION",
    )
    ap.add_argument(
        "--mcp",
        action="store_true",
        default=os.environ.get("GPT2_MCP", "").lower() in ("1", "true", "yes"),
        help="also serve the API as an MCP server (needs `pip install 'gradio[mcp]'`; env GPT2_MCP=1)",
    )
    return ap.parse_args(argv)


def batching_step_source() -> tuple[StepSource, int | None]:
    """The step source the Space serves with, and its concurrency: the batching scheduler, decoding up to
    GPT2_MAX_BATCH (default 8) requests together (README.md, "Many users at once"), or plain
    `generate_steps` when GPT2_MAX_BATCH is 0 or 1, or on ZeroGPU (its GPU exists only inside each
    handler call, not in the scheduler's worker thread)."""
    max_batch = int(os.environ.get("GPT2_MAX_BATCH", "8"))
    if max_batch <= 1 or spaces is not None:
        return generate_steps, None
    return BatchedSteps(max_batch=max_batch, max_queue=max_batch), max_batch


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.mcp and importlib.util.find_spec("mcp") is None:
        sys.exit("--mcp needs Gradio's MCP extra: pip install 'gradio[mcp]==6.31.0'")
    try:
        registry = ModelRegistry.from_path(args.weights, precision=args.precision)
    except (NoWeightsError, ValueError, RuntimeError) as exc:
        sys.exit(str(exc))
    print(f"models: {', '.join(registry.names)} · device: {registry.device_label}", flush=True)
    try:
        registry.get(registry.default)  # warm the default model so the first visitor does not wait
    except ValueError as exc:  # e.g. a HubError: a missing repo, no network and nothing cached
        sys.exit(str(exc))
    if registry.device == "cpu":  # say which decode engine serves (the native one builds on first use)
        why = native.unavailable_reason(registry.precision)
        print(f"decode engine: {'native (gpt2/csrc/decode.c)' if why is None else f'PyTorch ({why})'}")
    try:
        step_source, concurrency = batching_step_source()
    except ValueError:
        sys.exit(f"GPT2_MAX_BATCH must be a whole number, got {os.environ.get('GPT2_MAX_BATCH')!r}")
    try:
        demo = build_demo(registry, step_source=step_source, concurrency=concurrency)
    except ValueError as exc:  # e.g. a malformed GPT2_CONCURRENCY
        sys.exit(str(exc))
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
