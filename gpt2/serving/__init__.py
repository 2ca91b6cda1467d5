"""Serving GPT-2 to many clients at once: which models exist and where they come from (`sources`),
loading them within the memory there is (`registry`, `budget`), the one streaming driver that turns a
checked request into updates for a UI or an API (`server`), and looking inside one token for a client
(`inside`). No Gradio in here: `app.py` is layout and wiring over this package, so all of it is testable
without a web server."""

from .budget import MemoryBudget, NotEnoughMemoryError
from .inside import Inspection, make_inspection
from .registry import LoadError, Loading, ModelRegistry, NoWeightsError, default_weights
from .server import DEFAULTS, Progress, Server, make_request, parse_stop_text
from .sources import AUTO, HUB_DEFAULT, OPENAI_HUB

__all__ = [
    "AUTO",
    "DEFAULTS",
    "HUB_DEFAULT",
    "Inspection",
    "OPENAI_HUB",
    "LoadError",
    "Loading",
    "MemoryBudget",
    "ModelRegistry",
    "NoWeightsError",
    "NotEnoughMemoryError",
    "Progress",
    "Server",
    "default_weights",
    "make_inspection",
    "make_request",
    "parse_stop_text",
]
