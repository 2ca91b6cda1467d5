"""From a request to tokens and back: checking a request once (`request`), drawing tokens (`sampling`),
one continuation's state machine (`sequence`), its batch-1 driver (`generate`) and batch-N driver
(`batch`), and looking inside: each token's probabilities (`probs`), and every layer and head of one
forward pass (`trace`)."""

from .batch import BatchScheduler, BusyError, generate_samples
from .generate import Step, TextStream, generate, generate_steps
from .request import LIBRARY, SERVING, Limits, Request
from .sampling import SamplingParams, resolve_seed
from .trace import LensGrid, Trace, lens_grid, trace

__all__ = [
    "LIBRARY",
    "SERVING",
    "BatchScheduler",
    "BusyError",
    "LensGrid",
    "Limits",
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
