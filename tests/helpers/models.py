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
# max |Δ| / max |fp32 logits| against the fp32 model, per precision: what rounding the weights costs.
# Measured on random 768-wide weights, 2 layers, 5 seeds (docs/engine.md): bf16 4-5e-3, f16 5-6e-4,
# int8 ~2e-2, int4 0.18-0.20; 12 layers alike.
REL_TOL = {"fp32": 1e-5, "bf16": 1e-2, "f16": 2e-3, "int8": 3e-2, "int4": 0.3}
# ... and against the same rounded weights computed in fp32: what the activations' precision costs.
# bf16 and f16 weights are widened and multiplied with fp32 activations (~1e-6); int8's and int4's 16-bit
# codes per 64 values cost ~6e-5. Rounding activations to bf16 or int8 instead would show up here as
# 1e-3 and more.
ACT_TOL = {"fp32": 1e-5, "bf16": 1e-5, "f16": 1e-5, "int8": 2e-4, "int4": 2e-4}


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
