"""Read back a file this converter wrote (`weights/gpt2-<name>.safetensors`), e.g. to export it with
`--to-hf`: the hyper-parameters come from its metadata, the tensors go through the same checks as every
other route (`build_model`: names, shapes, finite values)."""

from __future__ import annotations

import os
from pathlib import Path

from gpt2 import GPT2
from gpt2.formats.weights import FORMAT, read_metadata

from .common import ConvertError, build_model


def load_weights_file(path: str | os.PathLike[str]) -> tuple[GPT2, dict]:
    """(fp32 model, metadata) from a converted file; any other safetensors file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} is not a file")
    try:
        meta = read_metadata(path)
        state = load_file(str(path))
    except (ValueError, OSError, SafetensorError) as exc:
        hint = " (a Hugging Face folder converts with --from-hf)" if FORMAT in str(exc) else ""
        raise ConvertError(f"{_first_line(exc)}{hint}") from None
    return build_model(state, meta["config"], source=str(path)), meta


def _first_line(exc: BaseException) -> str:
    return next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
