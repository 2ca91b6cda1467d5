"""Import a state dict saved by the book's `GPTModel` ("Build a Large Language Model (From Scratch)").

Names: `tok_emb, pos_emb, trf_blocks.{i}.att.W_query/W_key/W_value/out_proj, trf_blocks.{i}.ff.layers.0/.2,
trf_blocks.{i}.norm1/norm2.scale/shift, final_norm.scale/shift, out_head` — all `nn.Linear` (`[out, in]`,
our layout), with q, k and v as three matrices that we fuse into `c_attn` (with zero biases when the
model was built with `qkv_bias=False`). The math is GPT-2's: LayerNorm eps 1e-5 with biased variance,
tanh GELU, contiguous heads. A `.pth` with Hugging Face names (a bare `pytorch_model.bin`) works too.

Files are read with `torch.load(weights_only=True)` only: a pickle that needs code is refused.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from gpt2 import GPT2, GPT2Config

from .common import ConvertError, build_model, check_source_tensors, heads_tied, strip_common_prefix

# Where training scripts put the model's weights inside a bigger checkpoint dict.
_STATE_KEYS = ("model_state_dict", "state_dict", "model")
_BLOCK_RE = re.compile(r"^trf_blocks\.(\d+)\.")


def load_pth(path: str | os.PathLike[str], *, bare: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth`/`.bin` (or `.safetensors`) file; `model_and_optimizer.pth` dicts unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConvertError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the class or function the pickle wants ("GLOBAL posix.system"); anything else is
        # plain garbage (an HTML error page, a truncated file) rather than a pickle that needs code.
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not match:
            detail = next((ln.strip() for ln in str(exc).splitlines() if "error" in ln.lower()), "")
            raise ConvertError(
                f"{path} is not a readable PyTorch checkpoint ({detail or 'bad pickle'})"
            ) from None
        raise ConvertError(
            f"{path} was refused: loading it would need to unpickle code or objects, which could run "
            f"anything (it references {match.group(1)}). Save the weights alone, e.g. "
            "torch.save(model.state_dict(), 'model.pth'), and convert that"
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint at all
        raise ConvertError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    return _find_state_dict(obj, path, bare)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: Path, bare: bool) -> dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if not bare and isinstance(obj, dict):
        for key in _STATE_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
    raise ConvertError(
        f"{path} holds no model state dict (found: {keys}); expected a dict of tensors, "
        f"or one under {', '.join(repr(k) for k in _STATE_KEYS)}"
    )


def book_expected_shapes(config: GPT2Config, qkv_bias: bool) -> dict[str, tuple[int, ...]]:
    d, f = config.n_embd, 4 * config.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (config.n_vocab, d),
        "pos_emb.weight": (config.n_ctx, d),
        "final_norm.scale": (d,),
        "final_norm.shift": (d,),
        "out_head.weight": (config.n_vocab, d),
    }
    for i in range(config.n_layer):
        b = f"trf_blocks.{i}."
        for proj in ("W_query", "W_key", "W_value"):
            shapes[f"{b}att.{proj}.weight"] = (d, d)
            if qkv_bias:
                shapes[f"{b}att.{proj}.bias"] = (d,)
        shapes.update(
            {
                f"{b}att.out_proj.weight": (d, d),
                f"{b}att.out_proj.bias": (d,),
                f"{b}ff.layers.0.weight": (f, d),
                f"{b}ff.layers.0.bias": (f,),
                f"{b}ff.layers.2.weight": (d, f),
                f"{b}ff.layers.2.bias": (d,),
                f"{b}norm1.scale": (d,),
                f"{b}norm1.shift": (d,),
                f"{b}norm2.scale": (d,),
                f"{b}norm2.shift": (d,),
            }
        )
    return shapes


def infer_config(
    state: dict[str, torch.Tensor], source: str, *, size: str | None, n_head: int | None
) -> GPT2Config:
    """Dimensions from the tensors; the head count (which no shape reveals) from `size` or `n_head`.

    With `size`, the tensors must have that size's width, depth and vocabulary; the context may be
    shorter (the book trains with context_length 256).
    """
    if "tok_emb.weight" not in state or "pos_emb.weight" not in state:
        raise ConvertError(
            f"{source}: tensor tok_emb.weight or pos_emb.weight is missing (not a GPTModel state dict?)"
        )
    tok, pos = state["tok_emb.weight"], state["pos_emb.weight"]
    if tok.dim() != 2 or pos.dim() != 2 or tok.shape[1] != pos.shape[1]:
        raise ConvertError(
            f"{source}: tok_emb.weight {tuple(tok.shape)} and pos_emb.weight {tuple(pos.shape)} "
            "must be 2-D with the same width"
        )
    layers = {int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))}
    n_layer = max(layers) + 1 if layers else 0
    dims = dict(n_vocab=tok.shape[0], n_ctx=pos.shape[0], n_embd=tok.shape[1], n_layer=n_layer)
    if size is not None:
        want = GPT2Config.from_name(size)
        for key, label in (("n_embd", "width"), ("n_layer", "number of blocks"), ("n_vocab", "vocabulary")):
            if dims[key] != getattr(want, key):
                raise ConvertError(
                    f"{source}: the tensors give {label} {dims[key]}, but GPT-2 {size} has "
                    f"{getattr(want, key)} (wrong --size?)"
                )
        if dims["n_ctx"] > want.n_ctx:
            raise ConvertError(
                f"{source}: pos_emb.weight has {dims['n_ctx']} positions, GPT-2 {size} has {want.n_ctx}"
            )
        n_head = want.n_head if n_head is None else n_head
    if n_head is None:
        raise ConvertError(
            "the number of attention heads cannot be read from the weights: pass --size or --n-head"
        )
    try:
        return GPT2Config(n_head=n_head, **dims)
    except ValueError as exc:
        raise ConvertError(f"{source}: {exc}") from None


def book_to_ours(
    state: dict[str, torch.Tensor], config: GPT2Config, source: str
) -> tuple[dict[str, torch.Tensor], GPT2Config]:
    """Rename, fuse q/k/v, and keep `out_head` separate only when it differs from `tok_emb`."""
    state = {k: v for k, v in state.items() if not re.fullmatch(r"trf_blocks\.\d+\.att\.mask", k)}  # buffer
    qkv_bias = any(k.endswith("att.W_query.bias") for k in state)
    check_source_tensors(state, book_expected_shapes(config, qkv_bias), source)
    d = config.n_embd
    ours: dict[str, torch.Tensor] = {
        "wte.weight": state["tok_emb.weight"],
        "wpe.weight": state["pos_emb.weight"],
        "ln_f.weight": state["final_norm.scale"],
        "ln_f.bias": state["final_norm.shift"],
    }
    for i in range(config.n_layer):
        b, o = f"trf_blocks.{i}.", f"h.{i}."
        projs = ("W_query", "W_key", "W_value")  # c_attn's output is q, k, v in that order
        ours[f"{o}attn.c_attn.weight"] = torch.cat([state[f"{b}att.{p}.weight"] for p in projs], dim=0)
        biases = [state[f"{b}att.{p}.bias"] if qkv_bias else torch.zeros(d) for p in projs]
        ours[f"{o}attn.c_attn.bias"] = torch.cat([t.float() for t in biases])
        ours[f"{o}attn.c_proj.weight"] = state[f"{b}att.out_proj.weight"]
        ours[f"{o}attn.c_proj.bias"] = state[f"{b}att.out_proj.bias"]
        ours[f"{o}mlp.c_fc.weight"] = state[f"{b}ff.layers.0.weight"]
        ours[f"{o}mlp.c_fc.bias"] = state[f"{b}ff.layers.0.bias"]
        ours[f"{o}mlp.c_proj.weight"] = state[f"{b}ff.layers.2.weight"]
        ours[f"{o}mlp.c_proj.bias"] = state[f"{b}ff.layers.2.bias"]
        for norm, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
            ours[f"{o}{ln}.weight"] = state[f"{b}{norm}.scale"]
            ours[f"{o}{ln}.bias"] = state[f"{b}{norm}.shift"]
    tied = heads_tied(state["out_head.weight"], state["tok_emb.weight"])
    if not tied:
        ours["lm_head.weight"] = state["out_head.weight"]
    return ours, GPT2Config(**{**config.to_hparams(), "tied_head": tied})


def load_pth_model(
    path: str | os.PathLike[str], *, size: str | None = None, n_head: int | None = None
) -> GPT2:
    """A ready GPT2 from the book's `model.pth` / `model_and_optimizer.pth` (or an HF-named `.bin`)."""
    source = str(path)
    state = strip_common_prefix(load_pth(path), ("_orig_mod.", "module."))
    if "tok_emb.weight" not in state and any(k.endswith("wte.weight") for k in state):
        from gpt2.formats.hf import hf_to_ours

        hf_like = {
            (k[len("transformer.") :] if k.startswith("transformer.") else k): v for k, v in state.items()
        }
        book_like = {"tok_emb.weight": hf_like.get("wte.weight"), "pos_emb.weight": hf_like.get("wpe.weight")}
        book_like.update(
            {k.replace("h.", "trf_blocks.", 1): v for k, v in hf_like.items() if k.startswith("h.")}
        )
        config = infer_config(
            {k: v for k, v in book_like.items() if v is not None}, source, size=size, n_head=n_head
        )
        state, config = hf_to_ours(state, config, source)
    else:
        config = infer_config(state, source, size=size, n_head=n_head)
        state, config = book_to_ours(state, config, source)
    return build_model(state, config, source=source)
