"""Running the specification fast: precision, memory placement and the native engine, bound at load time.

    prepare(model, precision)   pack the linear layers (`precision`), put the weights in huge pages
                                (`memory`), bind the C engine (`binding`) so that `GPT2.step` runs in C

The C library (`csrc/decode.c`) is built for this CPU on first use (`build`, `abi`, `cpu`); its GEMM
serves PyTorch's path for long prompts (`gemm`); `threads` keeps PyTorch's ops off the engine's cores
between steps. What each model runs with is recorded in `model.runtime` (`gpt2.model.Runtime`).
`GPT2.step` hands a call to the engine when `Engine.takes` it: every batched decode step and prompts up
to `PROMPT_MAX[precision]` tokens; longer prompts are compute-bound and take PyTorch's path.
"""

from __future__ import annotations

import warnings

import torch

from . import build, memory
from .binding import HEAD_DIMS, Engine
from .precision import PRECISIONS, check_precision, head_precision, quantize

__all__ = ["PRECISIONS", "Engine", "attach", "check_precision", "describe", "prepare", "quantize"]


def unsupported_reason(model) -> str | None:
    """Why the engine cannot run `model` on this machine (None when it can)."""
    c = model.config
    if model.wte.weight.device.type != "cpu":
        return f"the model is on {model.wte.weight.device}, the engine runs on the CPU"
    if model.wte.weight.dtype != torch.float32:
        return (
            f"the model computes in {model.wte.weight.dtype}; the engine takes fp32 models, packed or not "
            f"({', '.join(PRECISIONS)})"
        )
    if c.head_dim not in HEAD_DIMS or c.n_embd % 64:
        return (
            f"head size {c.head_dim} / width {c.n_embd} (needs a head size in {HEAD_DIMS}, width % 64 == 0)"
        )
    precision = model.runtime.precision
    return build.unavailable_reason(precision) or build.unavailable_reason(head_precision(precision))


def attach(model, required: bool = False) -> str | None:
    """Bind the engine to `model` (in place). Returns None when attached, else the reason it is not
    (a RuntimeError instead when `required`)."""
    reason = unsupported_reason(model)
    if reason is None:
        model.runtime.engine = Engine(model)
        return None
    model.runtime.engine = None
    if required:
        raise RuntimeError(f"the native decode engine cannot run this model: {reason}")
    return reason


def describe(model) -> str:
    """One line for logs: which path decodes this model, and why when it is not the engine."""
    rt = model.runtime
    pages = ", weights in 2 MB pages" if rt.huge_page_bytes else ""
    head = head_precision(rt.precision)
    precision = rt.precision if head == rt.precision else f"{rt.precision} (head {head})"
    if rt.engine is not None:
        return f"native engine (gpt2/engine/csrc/decode.c), {precision}{pages}"
    reason = unsupported_reason(model) or "not attached"
    return f"PyTorch, {precision}{pages} ({reason})"


def prepare(model, precision: str = "fp32", engine: bool | None = None):
    """Make `model` ready to serve in `precision` (in place): pack its linear layers, put the weights in
    huge pages where the OS has them, bind the engine (None = where it runs, True = insist, False = not).
    A packed model (bf16, f16, int8, int4) without the engine warns once: those precisions exist to be
    fast."""
    quantize(model, precision)
    model.runtime.huge_page_bytes = memory.place(model)
    memory.release_free_memory()
    if engine is False:
        model.runtime.engine = None
        return model
    reason = attach(model, required=bool(engine))
    if reason is not None and model.runtime.precision != "fp32":
        warnings.warn(
            f"precision {model.runtime.precision!r} runs on PyTorch's path here ({reason}): correct, but "
            "slower than fp32; the native engine is what makes it fast",
            RuntimeWarning,
            stacklevel=2,
        )
    return model
