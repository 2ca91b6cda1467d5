"""Hugging Face's GPT-2 layout (`config.json` + `transformer.*` tensors) ⇄ our config and state dict.

Shared by the converter (`python -m convert --from-hf`, a folder on disk) and the app's Hub loader
(`gpt2.hub`, files fetched from the Hub), so both accept and refuse exactly the same models. Any depth
and width the config gives (distilgpt2's 6 layers, OpenAI's four sizes, fine-tunes) is fine, as long as
the config describes exactly the math our GPT2 computes. HF's Conv1D keeps weights as `[in, out]`, so
those four are transposed.

The way back (`python -m convert --to-hf`) uses the same table — the prefix, the head's name and the
transposed weights below — so an export is exactly what the importer reads.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..config import GPT2Config
from ..engine import memory
from ..model import GPT2
from ..tokenizer import EOT_ID
from .checks import (
    CheckpointError,
    build_model,
    check_source_tensors,
    check_vocabulary,
    checked_tensor,
    heads_tied,
)
from .stream import TensorFile
from .weights import assemble

# All three are the tanh approximation GPT-2 was trained with (gelu_fast is the same formula rearranged).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
LAYER_NORM_EPS = 1e-5  # GPT-2's (OpenAI's model.py), and transformers' default
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPT2LMHeadModel keeps every tensor but the output head under `transformer.`; the head has our name.
HF_PREFIX = "transformer."
HF_HEAD = "lm_head.weight"
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
    eps = cfg.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if not isinstance(eps, (int, float)) or abs(eps - LAYER_NORM_EPS) > 1e-12:
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
    shapes[HF_HEAD] = (config.n_vocab, config.n_embd)
    return shapes


def hf_to_ours(
    state: dict[str, torch.Tensor], config: GPT2Config, source: str
) -> tuple[dict[str, torch.Tensor], GPT2Config]:
    """Rename/transpose an HF GPT-2 state dict; untie the head only if it differs from `wte`."""
    state = {k.removeprefix(HF_PREFIX): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}
    expected = hf_expected_shapes(config)
    check_source_tensors(state, expected, source, optional=frozenset({HF_HEAD}))
    head = state.pop(HF_HEAD, None)
    tied = heads_tied(head, state["wte.weight"])
    ours = {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in state.items()}
    if not tied:
        ours[HF_HEAD] = head
    return ours, GPT2Config(**{**config.to_hparams(), "tied_head": tied})


def ours_to_hf(state: dict[str, torch.Tensor], config: GPT2Config) -> dict[str, torch.Tensor]:
    """Our state dict → GPT2LMHeadModel's names and layout: `hf_to_ours` run backwards.

    Conv1D weights go back to `[in, out]`. A tied head is not stored (transformers ties it from
    `tie_word_embeddings`, as `save_pretrained` does); a separate one keeps its name `lm_head.weight`.
    The result is checked against `hf_expected_shapes`, the importer's own table.
    """
    hf = {k: (v.t() if k.endswith(_CONV1D) else v).contiguous() for k, v in state.items()}
    check_source_tensors(hf, hf_expected_shapes(config), "the export", optional=frozenset({HF_HEAD}))
    if (HF_HEAD not in hf) != config.tied_head:
        raise CheckpointError(f"the export: config tied_head={config.tied_head} but the tensors disagree")
    return {(k if k == HF_HEAD else HF_PREFIX + k): v for k, v in hf.items()}


def config_to_hf(config: GPT2Config, dtype: str = "float32") -> dict[str, Any]:
    """`config.json` for our config: what `config_from_hf` reads back to the same model, in the keys
    transformers' GPT2Config writes, plus OpenAI's `n_ctx` (llama.cpp's converter reads that one)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.n_vocab,
        "n_positions": config.n_ctx,
        "n_ctx": config.n_ctx,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_layer": config.n_layer,
        "n_inner": None,  # 4 × n_embd
        "activation_function": TANH_GELUS[0],
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": config.tied_head,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        # GPT-2's training dropout: no effect on inference, what a fine-tune with transformers starts from.
        "attn_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "resid_pdrop": 0.1,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,  # the key every transformers version reads (v5 writes "dtype" and reads both)
    }


def load_hf_file(
    cfg: dict[str, Any], file: TensorFile, *, config_source: str, source: str, precision: str = "fp32"
) -> GPT2:
    """A checked GPT2 from HF's parsed `config.json` and its `model.safetensors`, read one tensor at a
    time and packed into `precision` block by block (`gpt2.formats.weights.assemble`): the same checks
    and mapping as `model_from_hf`, without the whole state dict in memory."""
    config = config_from_hf(cfg, config_source)
    check_vocabulary(config, source)
    names = {k.removeprefix(HF_PREFIX): k for k in file.entries if not k.endswith(_BUFFERS)}
    shapes = {k: torch.empty(file.shape(v), device="meta") for k, v in names.items()}
    check_source_tensors(shapes, hf_expected_shapes(config), source, optional=frozenset({HF_HEAD}))
    head = file.read(names[HF_HEAD]) if HF_HEAD in names else None
    tied = head is None or heads_tied(head, file.read(names["wte.weight"]))
    config = GPT2Config(**{**config.to_hparams(), "tied_head": tied})

    def read(key: str) -> torch.Tensor:
        t = head if key == HF_HEAD else file.read(names[key], memory.empty)
        return checked_tensor(key, t.t() if key.endswith(_CONV1D) else t, source)

    return assemble(config, read, precision).eval().requires_grad_(False)


def model_from_hf(
    cfg: dict[str, Any], state: dict[str, torch.Tensor], *, config_source: str, source: str
) -> GPT2:
    """A checked fp32 GPT2 from HF's parsed `config.json` and its (safetensors-loaded) state dict."""
    config = config_from_hf(cfg, config_source)
    ours, config = hf_to_ours(state, config, source)
    return build_model(ours, config, source=source)
