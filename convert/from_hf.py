"""Import a Hugging Face GPT-2 folder (`config.json` + `model.safetensors` or `pytorch_model.bin`).

Any depth and width the config gives (distilgpt2's 6 layers, OpenAI's four sizes, fine-tunes), as long
as the config describes exactly the math our GPT2 computes; anything else is refused rather than
served subtly wrong. HF's Conv1D keeps weights as `[in, out]`, so those four are transposed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gpt2 import GPT2, GPT2Config

from .common import ConvertError, build_model, check_source_tensors, heads_tied

# All three are the tanh approximation GPT-2 was trained with (gelu_fast is the same formula rearranged).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-persistent buffers older transformers versions saved with the weights: the causal mask.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def config_from_hf(cfg: dict[str, Any], source: str) -> GPT2Config:
    """Our config from HF's `config.json`, refusing every setting our model cannot reproduce exactly."""

    def refuse(why: str) -> ConvertError:
        return ConvertError(f"{source}: {why}; this model cannot be served faithfully as GPT-2")

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
    except (KeyError, ValueError) as exc:
        raise ConvertError(f"{source}: config.json does not describe a valid GPT-2 ({exc})") from None


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


def read_hf_state(directory: Path) -> dict[str, torch.Tensor]:
    """The folder's weights: one or several safetensors files, else `pytorch_model.bin` (safe loading)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .from_pth import load_pth

    def shards(index_name: str) -> list[Path]:
        try:
            index = json.loads((directory / index_name).read_text(encoding="utf-8"))
            names = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ConvertError(f"{directory / index_name} is not a valid shard index ({exc!r})") from None
        for name in names:  # shard names come from the file: keep them inside the folder
            if Path(name).name != name:
                raise ConvertError(f"{directory / index_name} names a shard outside the folder: {name!r}")
        return [directory / n for n in names]

    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        files = shards("model.safetensors.index.json")
    elif (directory / "pytorch_model.bin").is_file():
        return load_pth(directory / "pytorch_model.bin", bare=True)
    elif (directory / "pytorch_model.bin.index.json").is_file():
        state: dict[str, torch.Tensor] = {}
        for f in shards("pytorch_model.bin.index.json"):
            state.update(load_pth(f, bare=True))
        return state
    else:
        raise ConvertError(f"{directory} has no model.safetensors or pytorch_model.bin")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise ConvertError(f"{f} is not a readable safetensors file: {exc}") from None
    return state


def load_hf_model(directory: str | os.PathLike[str]) -> GPT2:
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{cfg_path} is missing (expected a Hugging Face model folder)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{cfg_path} is not a JSON object")
    config = config_from_hf(cfg, str(cfg_path))
    state, config = hf_to_ours(read_hf_state(directory), config, str(directory))
    return build_model(state, config, source=str(directory))
