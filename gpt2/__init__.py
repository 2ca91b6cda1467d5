"""GPT-2, hand-built in PyTorch: model, KV cache, tokenizer, sampling and streaming generation."""

from .config import SIZES, GPT2Config
from .generation import Step, TextStream, generate, generate_steps
from .model import GPT2, KVCache
from .sampling import SamplingParams, resolve_seed
from .tokenizer import Tokenizer, load_tokenizer
from .weights import list_models, load_model, read_metadata, save_model

__all__ = [
    "GPT2",
    "SIZES",
    "GPT2Config",
    "KVCache",
    "SamplingParams",
    "Step",
    "TextStream",
    "Tokenizer",
    "generate",
    "generate_steps",
    "list_models",
    "load_model",
    "load_tokenizer",
    "read_metadata",
    "resolve_seed",
    "save_model",
]
