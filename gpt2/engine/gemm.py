"""One packed linear layer over many rows in C: decode.c's `gpt2_linear`, for PyTorch's path.

A long prompt runs on PyTorch's path (compute-bound: GEMMs win there), where a packed (bf16/f16/int8/int4)
layer would otherwise widen its whole weight to a fresh fp32 tensor per call. `linear` sends it to the
engine's blocked GEMM instead, which widens the weight block by block while packing it (the same values,
without an fp32 copy per call); a few rows go through the decode kernels.
"""

from __future__ import annotations

import ctypes

import torch

from . import abi, build
from .binding import check_linear, linear_struct

# The packed precisions, by their weight's dtype (fp32 layers are torch's own to run).
PACKED = {dtype: name for name, dtype in abi.WEIGHT_DTYPES.items() if name != "fp32"}


def runs_linear(precision: str, in_features: int) -> bool:
    """Whether `linear` takes a `precision` layer this wide here (a packed precision, inputs a multiple
    of 64)."""
    return precision in PACKED.values() and in_features % 64 == 0 and build.available(precision)


def linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """`x W^T + b` for a packed layer (`gpt2.engine.precision`'s storage, its precision told by the
    weight's dtype: bf16 or f16 `[out, in]`, int8 with fp32 per-row `scale`, int4 uint8 codes `[out, in/2]`
    with f16 `scale` `[out, in/32]`), fp32 `x` of shape `(..., in)`, on the CPU. Checked here first: a
    ValueError says what does not fit, and nothing runs."""
    precision = PACKED.get(getattr(weight, "dtype", None))
    if precision is None:
        got = getattr(weight, "dtype", type(weight).__name__)
        raise ValueError(f"native linear takes {', '.join(map(str, PACKED))} weights, got {got}")
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError("native linear input must be an fp32 CPU tensor")
    if x.dim() < 1 or x.shape[-1] % 64:
        raise ValueError(f"native linear input must end in a multiple of 64 features, got {tuple(x.shape)}")
    if not runs_linear(precision, x.shape[-1]):
        raise RuntimeError(
            f"native linear unavailable for {precision}: {build.unavailable_reason(precision)}"
        )
    if weight.dim() != 2:
        raise ValueError(f"native linear weight must be 2-D, got shape {tuple(weight.shape)}")
    out, in_ = weight.shape[0], x.shape[-1]
    check_linear("linear", precision, weight, scale, bias, out, in_)
    rows = x.reshape(-1, in_).contiguous()
    y = torch.empty(*x.shape[:-1], out, dtype=torch.float32)
    if rows.shape[0] == 0:
        return y
    spec = linear_struct(precision, weight, scale, bias, out, in_)
    rc = build.library().gpt2_linear(
        ctypes.byref(spec), rows.data_ptr(), rows.shape[0], y.data_ptr(), max(1, torch.get_num_threads())
    )
    if rc != 0:
        raise ValueError(f"native linear refused its arguments: {abi.error_message(rc)}")
    return y
