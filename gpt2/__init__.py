"""GPT-2, hand-built in PyTorch: model, KV cache, tokenizer, sampling and streaming generation."""

from .config import SIZES, GPT2Config
from .generation import Step, TextStream, generate, generate_steps
from .model import GPT2, KVCache
from .precision import PRECISIONS, quantize
from .request import LIBRARY, SERVING, Limits, Request
from .sampling import SamplingParams, resolve_seed
from .scheduler import BatchScheduler, BusyError, generate_samples
from .tokenizer import Tokenizer, load_tokenizer
from .weights import list_models, load_model, prepare, read_metadata, save_model

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
    "Limits",
    "Request",
    "SamplingParams",
    "Step",
    "TextStream",
    "Tokenizer",
    "generate",
    "generate_samples",
    "generate_steps",
    "list_models",
    "load_model",
    "load_tokenizer",
    "prepare",
    "quantize",
    "read_metadata",
    "resolve_seed",
    "save_model",
]
