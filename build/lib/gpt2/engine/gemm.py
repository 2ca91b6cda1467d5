"""One packed linear layer over many rows in C: decode.c's `gpt2_linear`, for PyTorch's path.

A long prompt runs on PyTorch's path (compute-bound: GEMMs win there), where a packed (bf16/int8) layer
would otherwise widen its whole weight to a fresh fp32 tensor per call. `linear` sends it to the
engine's blocked GEMM instead, which widens the weight block by block while packing it (the same values,
without an fp32 copy per call); a few rows go through the decode kernels.
"""

from __future__ import annotations

import ctypes

import torch

from . import abi, build
from .binding import check_tensor


def runs_linear(precision: str, in_features: int) -> bool:
    """Whether `linear` takes a `precision` layer this wide here (bf16/int8, inputs a multiple of 64)."""
    return precision in ("bf16", "int8") and in_features % 64 == 0 and build.available(precision)


def linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """`x W^T + b` for a bf16 or int8 layer (`gpt2.engine.precision`'s storage: weight `[out, in]` bf16, or
    int8 with fp32 per-row `scale`), fp32 `x` of shape `(..., in)`, on the CPU. Checked here first: a
    ValueError says what does not fit, and nothing runs."""
    precision = {torch.bfloat16: "bf16", torch.int8: "int8"}.get(getattr(weight, "dtype", None))
    if precision is None:
        got = getattr(weight, "dtype", type(weight).__name__)
        raise ValueError(f"native linear takes bf16 or int8 weights, got {got}")
    if not runs_linear(precision, weight.shape[-1] if weight.dim() == 2 else 0):
        raise RuntimeError(
            f"native linear unavailable for {precision}: {build.unavailable_reason(precision)}"
        )
    if weight.dim() != 2:
        raise ValueError(f"native linear weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    out, in_ = weight.shape
    check_tensor("linear weight", weight, (out, in_), weight.dtype)
    if (scale is None) != (precision != "int8"):
        raise ValueError("native linear: int8 weights need per-row fp32 scales, bf16 weights none")
    if scale is not None:
        check_tensor("linear scale", scale, (out,), torch.float32)
    if bias is not None:
        check_tensor("linear bias", bias, (out,), torch.float32)
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError("native linear input must be an fp32 CPU tensor")
    if x.dim() < 1 or x.shape[-1] != in_:
        raise ValueError(f"native linear input must end in {in_} features, got shape {tuple(x.shape)}")
    rows = x.reshape(-1, in_).contiguous()
    y = torch.empty(*x.shape[:-1], out, dtype=torch.float32)
    if rows.shape[0] == 0:
        return y
    spec = abi.Linear(
        weight.data_ptr(),
        None if scale is None else scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out,
        in_,
    )
    rc = build.library().gpt2_linear(
        ctypes.byref(spec),
        abi.PRECISION_CODES[precision],
        rows.data_ptr(),
        rows.shape[0],
        y.data_ptr(),
        max(1, torch.get_num_threads()),
    )
    if rc != 0:
        raise ValueError(f"native linear refused its arguments: {abi.error_message(rc)}")
    return y
