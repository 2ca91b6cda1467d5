"""Every request parameter, declared once: name, Python type, defaults, bounds, a one-line doc and the
control that sets it in the app. Everything else is derived from `PARAMS`:

    Request.create, SamplingParams      the checks (`Param.check`) against `LIBRARY` or `SERVING` bounds
    generate, generate_steps, ...       their keyword arguments (`takes`: a real signature for help())
    gpt2.serving.make_request, DEFAULTS the API's defaults
    ui/api.py                           the three endpoints' signatures, types and docs (API page, MCP)
    ui/share.py, ui/controls.py         share-link fields and the page's sliders and boxes

A parameter belongs to a scope: REQUEST (how one continuation is made: generate takes these), SAMPLES (how
many are made: generate_samples, the scheduler, /generate_samples) or SERVER (which model: the server's
choice, not part of a `Request`). A new sampler adds its declaration here and its field to
`SamplingParams`; the library, the scheduler, the endpoints, the page and share links follow.

`INSPECT_PARAMS` are the parameters of looking inside one token (`/inspect`, `gpt2.serving.inside`): a
text, a token of it, and the model (generation's own declaration). They are not a request's, so they are
not in `PARAMS`; the page sets them by a click, not with a control.
"""

from __future__ import annotations

import functools
import inspect
import math
import secrets
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

MAX_SEED = 2**63 - 1
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
REQUIRED = inspect.Parameter.empty
SAMPLES_DEFAULT = 2  # n where several samples are the point: generate_samples and /generate_samples
REQUEST, SAMPLES, SERVER, INSPECT = "request", "samples", "server", "inspect"


# How the app's page sets a parameter: plain data here (no Gradio in gpt2/); ui/controls.py builds the
# component, a slider over the serving bounds starting at the API's default, or a text box or a selector.


@dataclass(frozen=True)
class Slider:
    label: str
    step: float
    info: str | None = None


@dataclass(frozen=True)
class Textbox:
    label: str
    placeholder: str | None = None
    lines: int = 1
    comma_list: bool = False  # several values in one line, comma-separated (\n and \t as escapes)


@dataclass(frozen=True)
class Dropdown:
    label: str
    info: str | None = None


Control = Slider | Textbox | Dropdown
Bounds = tuple[float, float]


@dataclass(frozen=True)
class Param:
    """One request parameter. `default` is the library's (`generate`), `api` the API's and the page's:
    they differ where a person or a program wants a different start (see max_new_tokens and top_k).
    `library` and `serving` are inclusive bounds (the prompt's: its length in characters); `serving`
    None means the library's. `check(param, value, limits)` returns the checked value or raises
    ValueError with a message for the person who sent it."""

    name: str
    type: Any  # what an endpoint's annotation says (Gradio types the API and MCP tools from it)
    default: object
    api: object
    doc: str  # one line: the API page, MCP tool descriptions, README's table
    control: Control | None = None  # None: the page has no control for it (it is set by a click)
    check: Callable[[Param, object, Limits], object] | None = None  # None: checked elsewhere (model)
    library: Bounds | None = None
    serving: Bounds | None = None
    scope: str = REQUEST
    positive: bool = False  # must also be above 0 (top_p 0 would keep no token)
    # A value other than the API's default that changes the text: tests send every parameter through
    # every door with it (None for the model, whose names are the server's).
    example: object = None

    @property
    def number(self) -> bool:
        return self.type in (int, float)

    @property
    def integer(self) -> bool:
        """Whether its numbers must be whole (int is its type, or one of them: the seed)."""
        return self.type is int or int in typing.get_args(self.type)


# ----------------------------------------------------------------------------------- the checks


def _shown(number: float) -> str:
    if isinstance(number, int):
        return str(number) if len(str(abs(number))) <= 30 else f"a {len(str(abs(number)))}-digit number"
    return f"{number:g}"


def _as_float(value: Real) -> float:
    try:
        return float(value)
    except OverflowError:  # e.g. a Fraction beyond float's range
        return math.inf


def check_number(p: Param, value: object, limits: Limits) -> float | int:
    """`value` within `p`'s bounds: an int for an integer parameter (40.0 is accepted as 40), else a
    float. Whole numbers stay exact (a seed above 2**53 would change in a float)."""
    # bool is an int subclass; "True" as a temperature is a client bug, not a number.
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{p.name} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    number = int(value) if isinstance(value, Integral) else _as_float(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{p.name} must be a finite number, got {number}")
    lo, hi = limits.bounds(p.name)
    if not lo <= number <= hi:
        raise ValueError(f"{p.name} must be between {_shown(lo)} and {_shown(hi)}, got {_shown(number)}")
    if p.positive and number <= 0:
        raise ValueError(f"{p.name} must be greater than 0 and at most {_shown(hi)}, got {_shown(number)}")
    if p.integer:
        if number != int(number):
            raise ValueError(f"{p.name} must be a whole number, got {_shown(number)}")
        return int(number)
    return float(number)


def check_prompt(p: Param, value: object, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{p.name} must be a string, got {type(value).__name__}")
    most = limits.bounds(p.name)[1]
    if len(value) > most:
        raise ValueError(
            f"{p.name} is too long: {len(value):,} characters (at most {most:,}; "
            "GPT-2 sees only its last 1024 tokens)"
        )
    return value


def check_position(p: Param, value: object, limits: Limits) -> int:
    """A token index (0 for the first) or -1 for the last. Whether the text has that token is checked
    against its tokens, once they are known (`gpt2.decoding.trace`)."""
    index = None
    if isinstance(value, Integral) and not isinstance(value, bool):
        index = int(value)
    elif isinstance(value, Real) and not isinstance(value, bool) and _as_float(value).is_integer():
        index = int(value)  # 3.0 from a client that sends every number as a float
    if index is None or index < -1:
        raise ValueError(
            f"{p.name} must be a token index (0 for the first) or -1 for the last, got {value!r:.40}"
        )
    return index


def check_seed(p: Param, value: object, limits: Limits) -> int:
    """The seed to use: `value` itself (digits in a string too), or a fresh random one when it is empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return secrets.randbelow(2**31)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{p.name} must be a whole number, got {value[:40]!r}") from None
    return check_number(p, value, limits)  # type: ignore[return-value]


def check_stop(p: Param, value: object, limits: Limits) -> tuple[str, ...]:
    """Stop strings as a tuple (a single string is one stop string; empty ones are dropped)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(s, str) for s in value):
        raise ValueError(f"{p.name} must be a string or a list of strings")
    stop = tuple(s for s in value if s)
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    if any(len(s) > MAX_STOP_LENGTH for s in stop):
        raise ValueError(f"each stop string must be at most {MAX_STOP_LENGTH} characters")
    return stop


# ----------------------------------------------------------------------------- the declarations

# fmt: off
PARAMS: tuple[Param, ...] = (  # in the API's order; a new parameter goes last (older clients send fewer)
    Param("prompt", str, default=REQUIRED, api=REQUIRED, check=check_prompt, example="The lighthouse",
          library=(0, 1_000_000), serving=(0, 20_000),  # ~5k tokens; GPT-2 sees at most the last 1024
          doc="text to continue; empty starts from <|endoftext|>",
          control=Textbox("Prompt", lines=3)),
    Param("max_new_tokens", int, default=50, api=100, check=check_number, example=12,
          library=(1, 8192), serving=(1, 1024),
          doc="tokens to generate",
          control=Slider("Max new tokens", 1)),
    Param("temperature", float, default=1.0, api=1.0, check=check_number, example=0.3,
          library=(0.0, 10.0), serving=(0.0, 2.0),
          doc="how random the draw is; 0 is greedy: always the most likely token",
          control=Slider("Temperature", 0.05, "0 = greedy")),
    Param("top_k", int, default=0, api=40, check=check_number, example=12,
          library=(0, 50257), serving=(0, 200),
          doc="keep only the k most likely tokens; 0 turns it off",
          control=Slider("Top-k", 1, "0 = off")),
    Param("top_p", float, default=1.0, api=1.0, check=check_number, positive=True, example=0.8,
          library=(0.0, 1.0), serving=(0.05, 1.0),
          doc="nucleus: keep the most likely tokens until their probabilities reach p; 1 turns it off",
          control=Slider("Top-p", 0.05, "1 = off")),
    Param("repetition_penalty", float, default=1.0, api=1.0, check=check_number, example=1.5,
          library=(1.0, 10.0), serving=(1.0, 2.0),
          doc="discourages tokens already in the text; 1 turns it off",
          control=Slider("Repetition penalty", 0.05, "1 = off")),
    Param("seed", int | str | None, default=None, api=None, check=check_seed, example=21,
          library=(0, MAX_SEED),
          doc="a whole number for reproducible text; empty or null picks one at random (the seed used is "
              "reported)",
          control=Textbox("Seed", "empty = random")),
    Param("stop", list[str] | str | None, default=None, api=None, check=check_stop, example="THE END",
          doc=f"a stop string or a list of them (at most {MAX_STOP_STRINGS}, each at most {MAX_STOP_LENGTH} "
              "characters); the text ends before the first one (not included)",
          control=Textbox("Stop strings", r"comma-separated, e.g. \n\n, THE END", comma_list=True)),
    Param("model", str, default=None, api=None, scope=SERVER,
          doc="one of the server's models (see the model selector); the first by default",
          control=Dropdown("Model", "loaded on first use")),
    Param("n", int, default=1, api=1, check=check_number, scope=SAMPLES, example=3,
          library=(1, 4),
          doc="how many samples, decoded side by side; sample i uses seed + i",
          control=Slider("Samples", 1, "decoded side by side; sample i uses seed + i - 1")),
    Param("min_p", float, default=0.0, api=0.0, check=check_number, example=0.7,
          library=(0.0, 1.0),
          doc="drop tokens less likely than min_p × the most likely token; 0 turns it off (0.05, llama.cpp's "
              "default, is a common choice)",
          control=Slider("Min-p", 0.01, "0 = off; 0.05 is a common choice")),
)
# fmt: on
BY_NAME = {p.name: p for p in PARAMS}

# fmt: off
INSPECT_PARAMS: tuple[Param, ...] = (  # /inspect's, in its order
    Param("text", str, default=REQUIRED, api=REQUIRED, check=check_prompt, scope=INSPECT,
          library=BY_NAME["prompt"].library, serving=BY_NAME["prompt"].serving,  # a prompt's length
          example="The lighthouse keeper",
          doc="the text, tokenized as a prompt is (nothing prepended); empty is <|endoftext|> alone"),
    Param("position", int, default=-1, api=-1, check=check_position, scope=INSPECT, example=1,
          doc="which token to look inside: its index, 0 for the first; -1 for the last"),
    BY_NAME["model"],
)
# fmt: on


def params(*scopes: str) -> tuple[Param, ...]:
    """The declared parameters of `scopes` (all of them by default), in the API's order."""
    return tuple(p for p in PARAMS if not scopes or p.scope in scopes)


class Limits:
    """Inclusive bounds for each declared parameter that has any (the prompt's: its length in characters).
    `Limits(**bounds)` is the library's with `bounds` replaced, e.g. `Limits(max_new_tokens=(1, 100))`."""

    def __init__(self, **bounds: Bounds) -> None:
        declared = {p.name: p.library for p in (*PARAMS, *INSPECT_PARAMS) if p.library is not None}
        unknown = set(bounds) - set(declared)
        if unknown:
            raise TypeError(f"no bounds for {', '.join(sorted(unknown))} (bounded: {', '.join(declared)})")
        self._bounds = {**declared, **bounds}

    def bounds(self, name: str) -> Bounds:
        return self._bounds[name]

    @property
    def max_prompt_chars(self) -> int:
        return int(self.bounds("prompt")[1])

    def __repr__(self) -> str:
        return f"Limits({', '.join(f'{k}={v}' for k, v in self._bounds.items())})"


LIBRARY = Limits()  # what the model can do
SERVING = Limits(  # a public server's
    **{p.name: p.serving for p in (*PARAMS, *INSPECT_PARAMS) if p.serving is not None}
)
API_DEFAULTS = {p.name: p.api for p in PARAMS if p.api is not REQUIRED}  # the API's and the page's


def resolve_seed(seed: object = None) -> int:
    """The seed to use: `seed` itself (validated), or a fresh random one when it is None/empty."""
    return check_seed(BY_NAME["seed"], seed, LIBRARY)


# ---------------------------------------------------------------------------------- signatures


def signature(
    declared: Sequence[Param], *, api: bool = False, defaults: dict[str, object] | None = None
) -> inspect.Signature:
    """The declared parameters as a signature, in order: positional-or-keyword, annotated with their types,
    defaulting to the library's or (`api`) the API's defaults; `defaults` overrides some."""
    chosen = {**{p.name: p.api if api else p.default for p in declared}, **(defaults or {})}
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [inspect.Parameter(p.name, kind, default=chosen[p.name], annotation=p.type) for p in declared]
    )


def takes(*scopes: str, api: bool = False, defaults: dict[str, object] | None = None) -> Callable:
    """Decorate a function that takes the declared parameters of `scopes` as `**options`. Its calls are
    bound to a signature that lists them (after the function's own positional parameters; keyword-only
    unless `api`, where they are positional in the API's order), so an unknown name is a TypeError, a
    missing one gets its default, and `help()` shows them all. The function gets every value by name."""

    def attach(fn: Callable) -> Callable:
        own = list(inspect.signature(fn).parameters.values())
        leading = [q for q in own if q.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keyword = [q for q in own if q.kind is inspect.Parameter.KEYWORD_ONLY]
        taken = {q.name for q in own}
        declared = signature(
            [p for p in params(*scopes) if p.name not in taken], api=api, defaults=defaults
        ).parameters.values()
        if not api:
            declared = [q.replace(kind=inspect.Parameter.KEYWORD_ONLY) for q in declared]
        sig = inspect.signature(fn).replace(parameters=[*leading, *declared, *keyword])

        @functools.wraps(fn)
        def call(*args: object, **kwargs: object) -> object:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:  # e.g. a misspelt option: say whose
                raise TypeError(f"{fn.__qualname__}(): {exc}") from None
            bound.apply_defaults()
            return fn(**bound.arguments)

        call.__signature__ = sig  # type: ignore[attr-defined]
        return call

    return attach
