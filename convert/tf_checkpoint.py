"""Read OpenAI's TensorFlow checkpoint (`model.ckpt.*` + `hparams.json`) into our module names.

Every variable is matched by its exact name against the table that `hparams.json` implies (so a layer's
index comes from its name, never from listing order, where `h10` sorts before `h2`), every shape is
checked, and the conv1d weights `[1, nx, nf]` become Linear weights `[nf, nx]` (one transpose; a square
matrix would silently pass a missing one, which is why the tests use the full 768 width).
TensorFlow is imported only inside these functions: the app and `gpt2/` never need it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2 import GPT2, GPT2Config

from .common import ConvertError, build_model

HPARAMS = "hparams.json"
_LAYER_RE = re.compile(r"^model/h(\d+)/")


def expected_variables(config: GPT2Config) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """OpenAI variable name → (our state-dict key, OpenAI's shape, whether it is a conv1d weight)."""
    d, L = config.n_embd, config.n_layer
    table: dict[str, tuple[str, tuple[int, ...], bool]] = {
        "model/wte": ("wte.weight", (config.n_vocab, d), False),
        "model/wpe": ("wpe.weight", (config.n_ctx, d), False),
        "model/ln_f/g": ("ln_f.weight", (d,), False),
        "model/ln_f/b": ("ln_f.bias", (d,), False),
    }
    conv = {
        "attn/c_attn": (d, 3 * d),
        "attn/c_proj": (d, d),
        "mlp/c_fc": (d, 4 * d),
        "mlp/c_proj": (4 * d, d),
    }
    for i in range(L):
        tf_prefix, our_prefix = f"model/h{i}/", f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            table[f"{tf_prefix}{ln}/g"] = (f"{our_prefix}{ln}.weight", (d,), False)
            table[f"{tf_prefix}{ln}/b"] = (f"{our_prefix}{ln}.bias", (d,), False)
        for scope, (nx, nf) in conv.items():
            ours = our_prefix + scope.replace("/", ".")
            table[f"{tf_prefix}{scope}/w"] = (f"{ours}.weight", (1, nx, nf), True)
            table[f"{tf_prefix}{scope}/b"] = (f"{ours}.bias", (nf,), False)
    return table


def read_hparams(source_dir: Path) -> GPT2Config:
    path = source_dir / HPARAMS
    if not path.is_file():
        raise ConvertError(f"{path} is missing (an OpenAI checkpoint folder has hparams.json)")
    try:
        hparams = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(hparams, dict):
            raise ValueError("not a JSON object")
        return GPT2Config.from_hparams(hparams)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path} is not a valid hparams file: {exc}") from None


def checkpoint_prefix(source_dir: Path) -> Path:
    """The checkpoint's path prefix: from the `checkpoint` file if there is one, else `model.ckpt`.

    Only the file name is used, so a `checkpoint` written on another machine (absolute paths) or a
    hostile one (`../..`) still points inside `source_dir`.
    """
    name = "model.ckpt"
    index_file = source_dir / "checkpoint"
    if index_file.is_file():
        match = re.search(
            r'^model_checkpoint_path:\s*"([^"]+)"', index_file.read_text(errors="replace"), re.M
        )
        if match:
            name = Path(match.group(1).replace("\\", "/")).name
    prefix = source_dir / name
    if not Path(f"{prefix}.index").is_file():
        raise ConvertError(
            f"{prefix}.index is missing (expected OpenAI's model.ckpt.* files in {source_dir})"
        )
    return prefix


def _import_tf() -> Any:
    # TF's start-up chatter would hide our messages; oneDNN only matters for TF's own maths, not reading.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ConvertError(
            f"TensorFlow is needed to read OpenAI's checkpoints ({exc}); "
            "install the convert step's requirements: pip install -r convert/requirements.txt"
        ) from None
    return tf


def read_tf_checkpoint(source_dir: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], GPT2Config]:
    """Our state dict (Linear weights `[out, in]`) and config from an OpenAI-layout folder."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ConvertError(f"{source_dir} is not a directory")
    config = read_hparams(source_dir)
    prefix = checkpoint_prefix(source_dir)
    table = expected_variables(config)
    tf = _import_tf()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as exc:  # TF raises OpError subclasses and plain Python errors alike
        raise ConvertError(
            f"{prefix}.index is not a readable TensorFlow checkpoint: {_first_line(exc)}"
        ) from None

    missing = [n for n in table if n not in shapes]
    unexpected = sorted(n for n in shapes if n not in table)
    if missing:
        raise ConvertError(
            f"{prefix}: variable {missing[0]} is missing (expected shape {list(table[missing[0]][1])} "
            f"for {HPARAMS}: {config.n_layer} layers, n_embd {config.n_embd})"
            + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else "")
        )
    if unexpected:
        raise ConvertError(
            f"{prefix}: unexpected variable {_describe_unexpected(unexpected[0], shapes, config)}"
        )
    for tf_name, (_, shape, _) in table.items():
        if tuple(shapes[tf_name]) != shape:
            raise ConvertError(
                f"{prefix}: variable {tf_name} has shape {list(shapes[tf_name])}, expected {list(shape)} "
                f"from {HPARAMS}"
            )
        if dtypes[tf_name] not in (tf.float32, tf.float16, tf.bfloat16):
            raise ConvertError(
                f"{prefix}: variable {tf_name} has dtype {dtypes[tf_name].name}, expected float32"
            )

    # A truncated or padded data file is caught here, before TF reads garbage or stops part-way.
    data_files = sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    if not data_files:
        raise ConvertError(f"{prefix}.data-00000-of-00001 is missing")
    want_bytes = sum(math.prod(shapes[n]) * dtypes[n].size for n in shapes)
    have_bytes = sum(f.stat().st_size for f in data_files)
    if have_bytes != want_bytes:
        raise ConvertError(
            f"{data_files[0]} holds {have_bytes:,} bytes but the checkpoint's variables need {want_bytes:,} "
            "(a truncated or corrupt download?)"
        )

    state: dict[str, torch.Tensor] = {}
    for tf_name, (ours, _, is_conv) in table.items():
        try:
            array = np.asarray(reader.get_tensor(tf_name))
        except Exception as exc:
            raise ConvertError(f"{prefix}: cannot read variable {tf_name}: {_first_line(exc)}") from None
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if is_conv:
            tensor = tensor[0].t().contiguous()  # conv1d [1, in, out] → Linear [out, in]
        state[ours] = tensor
    return state, config


def _describe_unexpected(name: str, shapes: dict[str, list[int]], config: GPT2Config) -> str:
    match = _LAYER_RE.match(name)
    where = ""
    if match and int(match.group(1)) >= config.n_layer:
        where = f" (layer {match.group(1)}, but {HPARAMS} says n_layer={config.n_layer})"
    return f"{name} with shape {list(shapes[name])}{where}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_tf_model(source_dir: str | os.PathLike[str]) -> GPT2:
    """A ready GPT2 from an OpenAI-layout folder (the head is tied: OpenAI's checkpoints have none)."""
    state, config = read_tf_checkpoint(source_dir)
    return build_model(state, config, source=str(source_dir))
