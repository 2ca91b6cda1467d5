"""The `weights/` format: one safetensors file per model, hyper-parameters in its metadata.

A file holds the model's state dict under the module names of `gpt2.model` (Linear weights as
`[out, in]`), no pickled code, and these metadata keys (all strings, as safetensors requires):

    format          "gpt2-handbuilt"
    format_version  "1" (fp32, f16 or bf16 tensors) or "2" (packed for serving)
    hparams         JSON of GPT2Config (n_vocab, n_ctx, n_embd, n_head, n_layer, tied_head)
    name            the model's display name, e.g. "124M"
    source          where it came from (free text, optional)
    precision       version 2 only: how the linear layers are packed (`gpt2.engine.precision`); the
                    tensors are then the packed model's own (codes, scales), loaded as they are

Loading reads one tensor at a time (`gpt2.formats.stream`) and packs each block as soon as it is in
(`assemble`), so a model is never held in fp32 on its way to int8 or int4, and nothing of the file stays
mapped: the process holds the model it serves and no more.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import GPT2Config
from ..engine import check_precision, memory, prepare
from ..engine.precision import pack_block, pack_head, quantize
from ..model import GPT2
from .stream import Progress, TensorFile

FORMAT = "gpt2-handbuilt"
FORMAT_VERSION = "1"  # plain tensors
PACKED_VERSION = "2"  # linear layers packed for serving
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
    """Write `model` to `path` atomically (a temporary file renamed into place only when complete). A
    packed model (`prepare(model, "int8")`, ...) is written as it is packed: a file that loads without
    ever holding fp32 (`dtype` then does not apply)."""
    precision = model.runtime.precision
    if precision != "fp32" and dtype is not None:
        raise ValueError(f"this model is packed as {precision}: its tensors are written as they are")
    path = Path(path)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None:
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if precision == "fp32" else PACKED_VERSION,
        "hparams": json.dumps(model.config.to_hparams()),
        "name": name,
        "source": source,
    }
    if precision != "fp32":
        metadata["precision"] = precision
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
    """The metadata of a weights file with `hparams` parsed into a GPT2Config under "config" and the
    stored precision under "precision" ("fp32" for plain tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    return _checked_metadata(TensorFile(path).metadata, path)


def _checked_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = dict(meta)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} weights file (metadata format={meta.get('format')!r})")
    version = meta.get("format_version")
    if version not in (FORMAT_VERSION, PACKED_VERSION):
        raise ValueError(
            f"{path} has format_version {version!r}, expected {FORMAT_VERSION} or {PACKED_VERSION}"
        )
    try:
        meta["config"] = GPT2Config.from_hparams(json.loads(meta["hparams"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has no valid hparams metadata: {exc}") from exc
    if version == PACKED_VERSION:
        check_precision(meta.get("precision"))
    else:
        meta["precision"] = "fp32"
    return meta


def load_model(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    precision: str | None = None,
    engine: bool | None = None,
    progress: Progress | None = None,
) -> GPT2:
    """Load a weights file written by `save_model` (or the converter) into a ready, eval-mode GPT2.

    `precision` (`gpt2.PRECISIONS`) is how the linear layers are stored, packed block by block as the
    file is read; None takes the file's own (fp32 for plain tensors). A packed file loads only at its own
    precision. `engine` binds the native decode engine (`gpt2.engine.prepare`): None = where it runs,
    True = insist (an error says why not), False = PyTorch only. `progress(bytes_read, total)` is called
    after each tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    file = TensorFile(path, progress)
    meta = _checked_metadata(file.metadata, path)
    stored = meta["precision"]
    precision = stored if precision is None else check_precision(precision)
    if stored != "fp32" and precision != stored:
        raise ValueError(
            f"{path} holds {stored} weights: load it with precision={stored!r}, or convert again"
        )
    if precision != "fp32" and dtype != torch.float32:
        raise ValueError("a packed precision starts from fp32 weights; leave dtype as torch.float32")
    config: GPT2Config = meta["config"]
    _check_tensors(file, _skeleton(config, stored), path)
    if stored == "fp32":
        model = assemble(
            config, lambda key: file.read(key, memory.empty).to(device=device, dtype=dtype), precision
        )
    else:
        model = _skeleton(config, stored)
        model.load_state_dict({key: file.read(key) for key in file.entries}, strict=True, assign=True)
    model.runtime.name = meta.get("name") or path.stem
    return prepare(model.eval().requires_grad_(False), precision, engine)


def _skeleton(config: GPT2Config, precision: str) -> GPT2:
    """The model's structure on the meta device, its linear layers packed like a `precision` file's."""
    with torch.device("meta"):
        model = GPT2(config)
        return quantize(model, precision)


def _check_tensors(file: TensorFile, skeleton: GPT2, path: Path) -> None:
    """Every tensor the structure needs, with its shape, before any is read; packed ones with their dtype."""
    want = skeleton.state_dict()
    missing = sorted(set(want) - set(file.entries))
    unexpected = sorted(set(file.entries) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match its hparams: missing {missing[:5] or 'nothing'}, "
            f"unexpected {unexpected[:5] or 'nothing'}"
        )
    packed = skeleton.runtime.precision != "fp32"
    for key, t in want.items():
        if file.shape(key) != tuple(t.shape):
            raise ValueError(f"{path}: tensor {key} has shape {file.shape(key)}, expected {tuple(t.shape)}")
        if packed and file.dtype(key) != t.dtype:
            raise ValueError(f"{path}: tensor {key} has dtype {file.dtype(key)}, expected {t.dtype}")
        if not packed and not file.dtype(key).is_floating_point:
            raise ValueError(f"{path}: tensor {key} has dtype {file.dtype(key)}, expected a float type")


def assemble(config: GPT2Config, read: Callable[[str], torch.Tensor], precision: str = "fp32") -> GPT2:
    """A GPT2 whose tensors come from `read(name)` (our names and layout, the dtype to keep), one module at
    a time, each block's linear layers packed into `precision` as soon as its tensors are in: at no point
    does the whole model exist at a wider precision than it will be served in."""
    check_precision(precision)
    with torch.device("meta"):
        model = GPT2(config)

    def fill(module: torch.nn.Module, prefix: str) -> None:
        names = module.state_dict().keys()
        module.load_state_dict({n: read(prefix + n) for n in names}, strict=True, assign=True)

    for name in ("wte", "wpe", "ln_f"):
        fill(getattr(model, name), f"{name}.")
    for i, block in enumerate(model.h):
        fill(block, f"h.{i}.")
        pack_block(block, precision)
        _settle(block)
    if model.lm_head is not None:
        fill(model.lm_head, "lm_head.")
    pack_head(model, precision)
    _settle(model)
    return model


def _settle(module: torch.nn.Module) -> None:
    """Put what was just packed where it will stay (huge pages) and hand what packing freed back to the
    system now, not at the end: the peak while loading stays near the size of the loaded model."""
    memory.place(module)
    memory.release_free_memory()


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
