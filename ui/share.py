"""Share links: the page's inputs in its query string, under the API's parameter names.

    /?prompt=Once+upon&max_new_tokens=40&temperature=0.8&top_k=40&top_p=1&repetition_penalty=1
      &seed=7&stop=THE+END&model=openai-community/gpt2&n=2

The fields are the declared request parameters (`gpt2.decoding.params`), by name. Every value is checked
by the API's own code (`gpt2.serving.make_request`, so `Request.create` against `SERVING` and the
registry's `check_name`): a link cannot set what a request could not. A missing value keeps the control's
default; a bad one is dropped with a note saying which and why. A box's value is written as the box holds
it (`stop`: comma-separated, `\\n` for a newline), so a link restores the box as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from gpt2.decoding.params import BY_NAME, PARAMS
from gpt2.serving import ModelRegistry, make_request

from . import controls

FIELDS = tuple(p.name for p in PARAMS)  # the API's parameters, in the API's order
NUMBERS = tuple(p.name for p in PARAMS if p.number)
# Gradio reads some query parameters itself (?view=api, ?__theme=dark): not ours to complain about.
GRADIO_PARAMS = ("view",)


@dataclass
class Shared:
    """What a link asks for: the values it set (checked, as the controls take them) and notes on the rest."""

    values: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _as_number(name: str, text: str) -> float:
    try:
        return float(text)  # whole numbers come back as int from the API's check (40.0 → 40)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text[:40]!r}") from None


def _check(registry: ModelRegistry, name: str, text: str) -> object:
    """One parameter through the API's checks, the others at their defaults (so an error is this one's);
    the value as its control takes it (e.g. `top_k=40.0` → 40)."""
    p = BY_NAME[name]
    value = _as_number(name, text) if p.number else controls.to_api(p, text)
    request, model = make_request(registry, **{"prompt": "", name: value})  # (a prompt replaces the "")
    return controls.shown(p, {**request.values(), "model": model}[name], text)


def parse_query(query: str, registry: ModelRegistry) -> Shared:
    """A page's query string (`a=1&b=2`, URL-encoded) as the inputs it sets and notes on what it could not."""
    given: dict[str, list[str]] = {}
    for name, text in parse_qsl(query, keep_blank_values=True):
        given.setdefault(name, []).append(text)
    shared = Shared()
    for name, texts in given.items():
        if name not in FIELDS:
            if not name.startswith("_") and name not in GRADIO_PARAMS:
                shared.notes.append(f"{name[:40]!r} is not a parameter (they are: {', '.join(FIELDS)})")
            continue
        if len(texts) > 1:
            shared.notes.append(f"{name} ignored: given {len(texts)} times")
            continue
        if texts[0] == "" and name != "prompt":  # `seed=` means "no seed": the default
            continue
        try:
            shared.values[name] = _check(registry, name, texts[0])
        except ValueError as exc:
            shared.notes.append(f"{name} ignored: {exc}")
    if "seed" in shared.values and "n" in shared.values:
        try:  # each was fine alone; the samples' seeds (seed … seed + n - 1) must fit too
            make_request(registry, "", seed=shared.values["seed"], n=shared.values["n"])
        except ValueError as exc:
            shared.notes.append(f"n ignored: {exc}")
            del shared.values["n"]
    return shared


def _text(name: str, value: object) -> str:
    if name in NUMBERS and not isinstance(value, str):
        # Sliders send floats (0.9500000000000001): ten digits keep every value a link can set.
        number = float(value)  # type: ignore[arg-type]
        return str(int(number)) if BY_NAME[name].integer else f"{number:.10g}"
    return str(value).strip() if name == "seed" else str(value)


def link_query(values: dict[str, object]) -> str:
    """The query string that restores `values` (by API parameter name); empty ones are left out."""
    pairs = [(name, _text(name, values[name])) for name in FIELDS if values.get(name) not in (None, "")]
    return urlencode(pairs)


def link(page: str, values: dict[str, object]) -> str:
    """The page's address (no query) with `values` in its query string."""
    return f"{page.split('?')[0].split('#')[0]}?{link_query(values)}"
