"""Serving GPT-2 to many clients at once: which models exist (`registry`), the one streaming driver that
turns a checked request into updates for a UI or an API (`server`), and looking inside one token for a
client (`inside`). No Gradio in here: `app.py` is layout and wiring over this package, so all of it is
testable without a web server."""

from .inside import Inspection, make_inspection
from .registry import HUB_DEFAULT, ModelRegistry, NoWeightsError, default_weights
from .server import DEFAULTS, Progress, Server, make_request, parse_stop_text

__all__ = [
    "DEFAULTS",
    "HUB_DEFAULT",
    "Inspection",
    "ModelRegistry",
    "NoWeightsError",
    "Progress",
    "Server",
    "default_weights",
    "make_inspection",
    "make_request",
    "parse_stop_text",
]
