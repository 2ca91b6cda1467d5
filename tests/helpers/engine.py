"""What the engine's tests share: the skip where it cannot run, a model with it attached, and one packed
layer of each precision."""

from __future__ import annotations

import copy

import pytest
import torch

from gpt2 import GPT2, PRECISIONS, prepare
from gpt2.engine import build

needs_native = pytest.mark.skipif(
    not build.available("fp32"), reason=f"native engine unavailable: {build.unavailable_reason()}"
)
PACKED = [p for p in PRECISIONS if p != "fp32"]


def with_engine(model: GPT2, precision: str = "fp32") -> GPT2:
    """A copy of `model` stored in `precision` with the engine attached (an error says why it cannot be)."""
    return prepare(copy.deepcopy(model), precision, engine=True)


def packed_layer(precision: str, out: int, in_: int, bias: bool, seed: int = 0):
    """A random `out` x `in_` linear layer stored in `precision` (weights ~0.05, bias ~1)."""
    from gpt2.engine.precision import Bf16Linear, F16Linear, Int4Linear, Int8Linear

    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(out, in_, generator=g) * 0.05, torch.randn(out, generator=g)
    cls = {"bf16": Bf16Linear, "f16": F16Linear, "int8": Int8Linear, "int4": Int4Linear}[precision]
    return cls(w, b if bias else None)
