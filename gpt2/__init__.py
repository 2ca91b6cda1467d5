"""GPT-2, hand-built in PyTorch: the specification (`config`, `model`, `tokenizer`) and, in layers above
it, the engine that runs it fast (`engine`), weights in and out (`formats`), decoding (`decoding`) and
serving (`serving`). Each layer imports only the ones below it (tests/test_layout.py holds it so):

    config, model, tokenizer  ◄──  engine  ◄──  formats, decoding  ◄──  serving
"""

from .config import SIZES, GPT2Config
from .decoding import (
    LIBRARY,
    SERVING,
    BatchScheduler,
    BusyError,
    LensGrid,
    Limits,
    Request,
    SamplingParams,
    Step,
    TextStream,
    Trace,
    generate,
    generate_samples,
    generate_steps,
    lens_grid,
    resolve_seed,
    trace,
)
from .engine import PRECISIONS, prepare, quantize
from .formats import list_models, load_model, read_metadata, save_model
from .model import GPT2, KVCache
from .tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "GPT2",
    "LIBRARY",
    "PRECISIONS",
    "SERVING",
    "SIZES",
    "BatchScheduler",
    "BusyError",
    "GPT2Config",
    "KVCache",
    "LensGrid",
    "Limits",
    "Request",
    "SamplingParams",
    "Step",
    "TextStream",
    "Trace",
    "Tokenizer",
    "generate",
    "generate_samples",
    "generate_steps",
    "lens_grid",
    "list_models",
    "load_model",
    "load_tokenizer",
    "prepare",
    "quantize",
    "read_metadata",
    "resolve_seed",
    "save_model",
    "trace",
]
