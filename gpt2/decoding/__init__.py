"""From a request to tokens and back: checking a request once (`request`), drawing tokens (`sampling`),
one continuation's state machine (`sequence`), its batch-1 driver (`generate`) and batch-N driver
(`batch`), and looking inside: each token's probabilities (`probs`)."""

from .batch import BatchScheduler, BusyError, generate_samples
from .generate import Step, TextStream, generate, generate_steps
from .request import LIBRARY, SERVING, Limits, Request
from .sampling import SamplingParams, resolve_seed

__all__ = [
    "LIBRARY",
    "SERVING",
    "BatchScheduler",
    "BusyError",
    "Limits",
    "Request",
    "SamplingParams",
    "Step",
    "TextStream",
    "generate",
    "generate_samples",
    "generate_steps",
    "resolve_seed",
]
