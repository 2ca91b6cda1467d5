"""Import a Hugging Face GPT-2 folder (`config.json` + `model.safetensors` or `pytorch_model.bin`).

Which configs are accepted and how HF's tensors map onto ours lives in `gpt2.formats.hf`, shared with the
app's Hub loader (`gpt2.formats.hub`); this module only reads a folder on disk, including the older pickled
`pytorch_model.bin` (safely, weights only), which the Hub loader never fetches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gpt2 import GPT2
from gpt2.formats.hf import model_from_hf, parse_config_json

from .common import ConvertError


def weight_files(directory: Path) -> list[Path]:
    """The folder's weights, as transformers picks them: safetensors (one file or shards) before pickles."""

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

    for name in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
        if (directory / name).is_file():
            return shards(name) if name.endswith(".index.json") else [directory / name]
    raise ConvertError(f"{directory} has no model.safetensors or pytorch_model.bin")


def read_hf_state(directory: Path) -> dict[str, torch.Tensor]:
    """The folder's weights: safetensors, else `pytorch_model.bin` (safe loading, weights only)."""
    from .from_pth import load_pth

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        state.update(load_pth(f, bare=True))  # reads .safetensors with safetensors, the rest weights-only
    return state


def load_hf_model(directory: str | os.PathLike[str]) -> GPT2:
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{cfg_path} is missing (expected a Hugging Face model folder)")
    cfg = parse_config_json(cfg_path.read_bytes(), str(cfg_path))
    return model_from_hf(cfg, read_hf_state(directory), config_source=str(cfg_path), source=str(directory))
