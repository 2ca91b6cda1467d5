"""Weights in and out: this project's safetensors files (`weights`), the checks every importer shares
(`checks`), Hugging Face's GPT-2 layout (`hf`) and the Hub (`hub`)."""

from .weights import list_models, load_model, read_metadata, save_model

__all__ = ["list_models", "load_model", "read_metadata", "save_model"]
