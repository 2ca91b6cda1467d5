"""Hugging Face's GPT-2 layout (`config.json` + `transformer.*` tensors) → our config and state dict.

Shared by the converter (`python -m convert --from-hf`, a folder on disk) and the app's Hub loader
(`gpt2.hub`, files fetched from the Hub), so both accept and refuse exactly the same models. Any depth
and width the config gives (distilgpt2's 6 layers, OpenAI's four sizes, fine-tunes) is fine, as long as
the config describes exactly the math our GPT2 computes. HF's Conv1D keeps weights as `[in, out]`, so
those four are transposed.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..config import GPT2Config
from ..model import GPT2
from .checks import CheckpointError, build_model, check_source_tensors, heads_tied

# All three are the tanh approximation GPT-2 was trained with (gelu_fast is the same formula rearranged).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-persistent buffers older transformers versions saved with the weights: the causal mask.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def parse_config_json(text: str | bytes, source: str) -> dict[str, Any]:
    """`config.json`'s text as a dict, or a one-line CheckpointError naming `source`."""
    try:
        cfg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source} is not a JSON object")
    return cfg


def config_from_hf(cfg: dict[str, Any], source: str) -> GPT2Config:
    """Our config from HF's `config.json`, refusing every setting our model cannot reproduce exactly."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {why}; this model cannot be served faithfully as GPT-2")

    if cfg.get("model_type") != "gpt2":
        raise refuse(f'model_type is {cfg.get("model_type")!r}, not "gpt2"')
    act = cfg.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise refuse(f"activation_function is {act!r}, GPT-2's is the tanh GELU ({', '.join(TANH_GELUS)})")
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-12:
        raise refuse(f"layer_norm_epsilon is {eps!r}, GPT-2's is 1e-05")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if cfg.get(key, want) != want:
            raise refuse(f"{key} is {cfg.get(key)!r}")
    if cfg.get("add_cross_attention", False):
        raise refuse("it has cross-attention layers")
    n_embd = cfg.get("n_embd")
    if cfg.get("n_inner") not in (None, 4 * n_embd if isinstance(n_embd, int) else None):
        raise refuse(f"n_inner is {cfg.get('n_inner')}, GPT-2's MLP is 4 × n_embd")
    try:
        return GPT2Config(
            n_vocab=cfg["vocab_size"],
            n_ctx=cfg.get("n_positions", cfg.get("n_ctx")),
            n_embd=n_embd,
            n_head=cfg["n_head"],
            n_layer=cfg["n_layer"],
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: config.json does not describe a valid GPT-2 ({exc!r})") from None


def hf_expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """HF's names without the `transformer.` prefix (plus `lm_head.weight`), with HF's shapes."""
    with torch.device("meta"):
        ours = GPT2(config).state_dict()
    shapes = {}
    for key, value in ours.items():
        shape = tuple(value.shape)
        shapes[key] = shape[::-1] if key.endswith(_CONV1D) else shape
    shapes["lm_head.weight"] = (config.n_vocab, config.n_embd)
    return shapes


def hf_to_ours(
    state: dict[str, torch.Tensor], config: GPT2Config, source: str
) -> tuple[dict[str, torch.Tensor], GPT2Config]:
    """Rename/transpose an HF GPT-2 state dict; untie the head only if it differs from `wte`."""
    state = {(k[len("transformer.") :] if k.startswith("transformer.") else k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}
    expected = hf_expected_shapes(config)
    check_source_tensors(state, expected, source, optional=frozenset({"lm_head.weight"}))
    head = state.pop("lm_head.weight", None)
    tied = heads_tied(head, state["wte.weight"])
    ours = {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in state.items()}
    if not tied:
        ours["lm_head.weight"] = head
    return ours, GPT2Config(**{**config.to_hparams(), "tied_head": tied})


def model_from_hf(
    cfg: dict[str, Any], state: dict[str, torch.Tensor], *, config_source: str, source: str
) -> GPT2:
    """A checked fp32 GPT2 from HF's parsed `config.json` and its (safetensors-loaded) state dict."""
    config = config_from_hf(cfg, config_source)
    ours, config = hf_to_ours(state, config, source)
    return build_model(ours, config, source=source)
