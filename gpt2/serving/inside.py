"""Looking inside one token for a client: `/inspect` and the app's Inside view.

    make_inspection(registry, text, position, model)   check a call (the declared `INSPECT_PARAMS`): the
                                                       text's token ids, as generation tokenizes a prompt
    inspect(registry, ids, position, name)             `gpt2.decoding.trace` at that token, as JSON
    overview(registry, ids, name)                      the logit lens over the last tokens, as JSON

A trace is one forward pass of the specification over at most n_ctx tokens, run on the caller's thread
(the app runs it in a handler, within the same concurrency limit as generation); no scheduler is
involved, and nothing is computed for any token nobody asked about.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..decoding.params import INSPECT_PARAMS, SERVING, Limits, signature
from ..decoding.sequence import prompt_ids
from ..decoding.trace import GRID_LAST, lens_grid, trace
from .registry import ModelRegistry

_SIGNATURE = signature(INSPECT_PARAMS, api=True)  # text, then optionally position and model


@dataclass(frozen=True)
class Inspection:
    """A checked /inspect call: the text's token ids, the token to look inside, and the model's name."""

    ids: list[int]
    position: int
    model: str


def make_inspection(
    registry: ModelRegistry, *args: object, limits: Limits = SERVING, **kwargs: object
) -> Inspection:
    """Check an /inspect call: its declared parameters (text, position, model), by position or name, with
    the API's defaults. ValueError says which one and why; whether the position is one of the text's
    tokens is the trace's check."""
    try:
        bound = _SIGNATURE.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"make_inspection(): {exc}") from None
    bound.apply_defaults()
    values = bound.arguments
    checked = {p.name: p.check(p, values[p.name], limits) for p in INSPECT_PARAMS if p.check is not None}
    name = registry.check_name(values["model"])
    return Inspection(prompt_ids(registry.tokenizer, checked["text"]), checked["position"], name)


def inspect(registry: ModelRegistry, ids: list[int], position: int, name: str) -> dict:
    """The trace of token `position` of `ids` under model `name` (`Trace.to_dict`: the JSON `/inspect`
    returns). A position outside `ids` is a ValueError; a model that cannot be loaded a LoadError."""
    with registry.using(name) as model:  # kept loaded (never unloaded to make room) while it runs
        return trace(model, ids, position).to_dict(registry.tokenizer)


def overview(registry: ModelRegistry, ids: list[int], name: str, last: int = GRID_LAST) -> dict:
    """Each layer's top next-token guess over the last `last` tokens of `ids` (`LensGrid.to_dict`)."""
    with registry.using(name) as model:
        return lens_grid(model, ids, last).to_dict(registry.tokenizer)
