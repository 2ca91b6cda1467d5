"""From a request to tokens and back: the request parameters, each declared once (`params`), checking a
request once (`request`), drawing tokens (`sampling`), one continuation's state machine (`sequence`), its
batch-1 driver (`generate`) and batch-N driver (`batch`, each request's side of it in `request_stream`),
and looking inside: each token's probabilities (`probs`), and every layer and head of one forward pass
(`trace`)."""

from .batch import BatchScheduler, BusyError, generate_samples
from .generate import Step, TextStream, generate, generate_steps
from .params import LIBRARY, PARAMS, SERVING, Limits, Param, resolve_seed
from .request import Request
from .sampling import SamplingParams
from .trace import LensGrid, Trace, lens_grid, trace

__all__ = [
    "LIBRARY",
    "PARAMS",
    "SERVING",
    "BatchScheduler",
    "BusyError",
    "LensGrid",
    "Limits",
    "Param",
    "Request",
    "SamplingParams",
    "Step",
    "TextStream",
    "Trace",
    "generate",
    "generate_samples",
    "generate_steps",
    "lens_grid",
    "resolve_seed",
    "trace",
]
