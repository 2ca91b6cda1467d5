"""The independent reference: Hugging Face transformers' GPT2LMHeadModel holding our weights."""

from __future__ import annotations

import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from gpt2 import GPT2

# HF's Conv1D keeps weights as [in, out] (OpenAI's layout); our nn.Linear keeps [out, in].
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_gpt2_config(
    n_vocab: int, n_ctx: int, n_embd: int, n_layer: int, n_head: int, tied: bool = True
) -> HFConfig:
    """Hugging Face's config for exactly GPT-2's maths (tanh GELU, LayerNorm eps 1e-5, no dropout)."""
    return HFConfig(
        vocab_size=n_vocab,
        n_positions=n_ctx,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tied,
    )


def hf_config(model: GPT2) -> HFConfig:
    c = model.config
    return hf_gpt2_config(c.n_vocab, c.n_ctx, c.n_embd, c.n_layer, c.n_head, c.tied_head)


def hf_from_ours(model: GPT2, attn_implementation: str = "eager") -> GPT2LMHeadModel:
    """A GPT2LMHeadModel with exactly our model's weights (fp32, eval mode)."""
    hf = GPT2LMHeadModel(hf_config(model)).eval()
    hf.config._attn_implementation = attn_implementation
    ours = model.state_dict()
    state = {}
    for key, value in ours.items():
        value = value.detach().float()
        if key == "lm_head.weight":
            state[key] = value
            continue
        state[f"transformer.{key}"] = value.t().contiguous() if key.endswith(_TRANSPOSED) else value
    if model.lm_head is None:
        state["lm_head.weight"] = ours["wte.weight"].float()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")]
    assert not missing and not unexpected, (missing, unexpected)
    return hf


@torch.no_grad()
def hf_logits(hf: GPT2LMHeadModel, idx: torch.Tensor) -> torch.Tensor:
    return hf(idx).logits
