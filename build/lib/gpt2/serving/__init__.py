"""Serving GPT-2 to many clients at once: which models exist (`registry`) and the one streaming driver
that turns a checked request into updates for a UI or an API (`server`). No Gradio in here: `app.py` is
layout and wiring over this package, so all of it is testable without a web server."""

from .registry import HUB_DEFAULT, ModelRegistry, NoWeightsError, default_weights
from .server import DEFAULTS, Progress, Server, make_request, parse_stop_text

__all__ = [
    "DEFAULTS",
    "HUB_DEFAULT",
    "ModelRegistry",
    "NoWeightsError",
    "Progress",
    "Server",
    "default_weights",
    "make_request",
    "parse_stop_text",
]
