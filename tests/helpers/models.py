"""Random-weight models for tests: every parameter random (biases and LayerNorm gains included, so none
is a no-op), ours and Hugging Face's, at full 124M width (`WIDE`, fewer layers) or tiny (`TINY`)."""

from __future__ import annotations

from pathlib import Path

import torch

from gpt2 import GPT2, GPT2Config

ROOT = Path(__file__).resolve().parents[2]  # the repository
# Full 124M width; fewer layers keep the suite fast (width is what catches transposes and head splits).
WIDE = GPT2Config(n_layer=2)
TINY = GPT2Config(n_vocab=50257, n_ctx=128, n_embd=64, n_head=4, n_layer=2)


def randomize_parameters(model: torch.nn.Module, *, bias_std: float, weight_std: float) -> torch.nn.Module:
    """Every parameter random, biases and LayerNorm gains included (so none is a no-op)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(bias_std * torch.randn_like(p))
            else:
                p.normal_(0.0, weight_std)
    return model.eval()


def random_model(config: GPT2Config, seed: int = 0, std: float = 0.02) -> GPT2:
    """A GPT2 with random weights, biases and LayerNorm parameters included."""
    torch.manual_seed(seed)
    return randomize_parameters(GPT2(config), bias_std=0.02, weight_std=std)


def random_hf_model(seed: int, tied: bool = True, **dims):
    """Hugging Face transformers' GPT-2 (the independent reference) with every parameter random: HF
    initialises LayerNorms to 1/0 and biases to 0, which would hide mistakes in mapping them."""
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = HFConfig(**dims, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied)
    return randomize_parameters(GPT2LMHeadModel(cfg), bias_std=0.05, weight_std=0.1)
