"""The `weights/` format: one safetensors file per model, hyper-parameters in its metadata.

A file holds the model's state dict under the module names of `gpt2.model` (Linear weights as
`[out, in]`), no pickled code, and these metadata keys (all strings, as safetensors requires):

    format          "gpt2-handbuilt"
    format_version  "1"
    hparams         JSON of GPT2Config (n_vocab, n_ctx, n_embd, n_head, n_layer, tied_head)
    name            the model's display name, e.g. "124M"
    source          where it came from (free text, optional)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import GPT2Config
from ..engine import check_precision, prepare
from ..model import GPT2

FORMAT = "gpt2-handbuilt"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
PREFIX = "gpt2-"


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a weights file must hold, with its shape."""
    with torch.device("meta"):
        model = GPT2(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def model_filename(name: str) -> str:
    return f"{PREFIX}{name}{SUFFIX}"


def save_model(
    model: GPT2,
    path: str | os.PathLike[str],
    *,
    name: str,
    dtype: torch.dtype | None = None,
    source: str = "",
) -> Path:
    """Write `model` to `path` atomically (a temporary file renamed into place only when complete)."""
    if model.runtime.precision != "fp32":
        raise ValueError(
            f"this model is packed as {model.runtime.precision} for serving; save the fp32 model"
        )
    path = Path(path)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None:
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hparams": json.dumps(model.config.to_hparams()),
        "name": name,
        "source": source,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp creates 0600; a weights file is data anyone who may run the app should read.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a weights file with `hparams` parsed into a GPT2Config under "config"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} weights file (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    try:
        meta["config"] = GPT2Config.from_hparams(json.loads(meta["hparams"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has no valid hparams metadata: {exc}") from exc
    return meta


def load_model(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    precision: str = "fp32",
    engine: bool | None = None,
) -> GPT2:
    """Load a weights file written by `save_model` (or the converter) into a ready, eval-mode GPT2.

    `precision` (`gpt2.PRECISIONS`: "fp32", "bf16", "f16", "int8", "int4") is how the linear layers are
    stored, and `engine` whether the native decode engine is bound (`gpt2.engine.prepare`): None = where
    it runs, True = insist (an error says why not), False = PyTorch only. A packed model without the engine
    warns once.
    """
    check_precision(precision)
    if precision != "fp32" and dtype != torch.float32:
        raise ValueError(f"precision {precision} packs an fp32 load; leave dtype as torch.float32")
    path = Path(path)
    meta = read_metadata(path)
    config: GPT2Config = meta["config"]
    want = expected_shapes(config)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            have = set(f.keys())
            missing = sorted(set(want) - have)
            unexpected = sorted(have - set(want))
            if missing or unexpected:
                raise ValueError(
                    f"{path} does not match its hparams: missing {missing or 'nothing'}, "
                    f"unexpected {unexpected or 'nothing'}"
                )
            for key in want:
                t = f.get_tensor(key)
                if tuple(t.shape) != want[key]:
                    raise ValueError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected {want[key]}")
                if not t.is_floating_point():
                    raise ValueError(f"{path}: tensor {key} has dtype {t.dtype}, expected a float type")
                tensors[key] = t.to(device=device, dtype=dtype)
    except SafetensorError as exc:
        raise ValueError(f"{path} is corrupt: {exc}") from exc
    with torch.device("meta"):
        model = GPT2(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.runtime.name = meta.get("name") or path.stem
    return prepare(model.eval().requires_grad_(False), precision, engine)


def list_models(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Converted models in `directory`, by display name (from metadata), in a stable order.

    Files that are not valid weights files are skipped, so a half-copied file cannot break the app.
    """
    found: dict[str, Path] = {}
    directory = Path(directory)
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            name = read_metadata(path).get("name") or path.stem
        except (ValueError, OSError):
            continue
        found.setdefault(name, path.resolve())
    return dict(sorted(found.items(), key=lambda kv: _size_order(kv[0])))


def _size_order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits and name.endswith("M") and name[:-1].isdigit() else 1 << 30, name)
