"""Precision as a property of how weights are loaded: the same `GPT2`, its linear layers swapped.

Batch-1 decoding reads every weight once per token, so fewer bytes per weight mean more tokens per second.
`quantize(model, "bf16" | "int8")` replaces each block's four linear layers (and the head) with modules
that store their weight in fewer bytes, in place, in the row-major `[out, in]` layout the native engine
(`gpt2/engine/csrc/decode.c`) reads directly, so one copy of the weights serves both the engine and PyTorch:

- "fp32": `nn.Linear` as loaded (exact);
- "bf16": bfloat16 weights (half the bytes; the activations stay fp32);
- "int8": int8 weights with one fp32 scale per output row (symmetric, absmax / 127; a quarter of the bytes).

The embeddings, LayerNorms, residual stream and KV cache stay fp32 in every mode. On PyTorch's path
(prompts longer than the engine's step takes) these modules compute in fp32 with the weight widened
exactly: through the engine's GEMM (`gemm.linear`), which widens the weight block by block as it packs
it, or, where the engine is not built, by widening it in torch per call (slower: a 4-byte copy of every
weight per call). Widening, not bf16 arithmetic, because only the weights should be rounded, and on CPUs
without native bf16 it is also the faster way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT2
from . import gemm, memory

PRECISIONS = ("fp32", "bf16", "int8")
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "int8": 1}


def check_precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


# Without the engine: the widest fp32 copy of a packed weight torch makes at once. Widening the 124M
# head (50257 x 768) in one piece allocated 154 MB per call, and faulting those pages in cost ~100 ms:
# more than the head's matmul for a whole prompt. Slices of at most this size are reused from the heap
# (glibc serves blocks under 32 MB from it after the first) and stay in cache for their matmul: one row
# of head logits 112 -> 12 ms on a 2-core Zen 3. Narrower layers are widened whole: splitting a block's
# 3072-row weight only cut its matmul into less efficient pieces.
WIDEN_BYTES = 16 << 20


class PackedLinear(nn.Module):
    """A linear layer whose weight is stored in fewer bytes, computed in fp32 (see the module docstring)."""

    precision = "fp32"
    out_features: int
    in_features: int
    bias: torch.Tensor | None

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        """fp32 weight rows `rows` (all by default), `[out, in]`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        # The engine's GEMM has no backward: a caller that wants gradients keeps torch's ops.
        engine = x.device.type == "cpu" and not x.requires_grad
        if engine and gemm.runs_linear(self.precision, self.in_features):
            return gemm.linear(x, self.weight, self.scale, self.bias)
        if 4 * self.out_features * self.in_features <= WIDEN_BYTES:
            return F.linear(x, self.dequantized(), self.bias)
        step = max(1, WIDEN_BYTES // (4 * self.in_features))
        pieces = []
        for a in range(0, self.out_features, step):
            rows = slice(a, a + step)
            pieces.append(F.linear(x, self.dequantized(rows), None if self.bias is None else self.bias[rows]))
        return torch.cat(pieces, dim=-1)


class Bf16Linear(PackedLinear):
    """`y = x W^T + b` with W stored as bfloat16 (b stays fp32)."""

    precision = "bf16"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.scale = None

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        return self.weight[rows].float()


class Int8Linear(PackedLinear):
    """`y = (x W_q^T) * scale + b` with W_q int8 and one fp32 scale per output row (b stays fp32)."""

    precision = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        codes = torch.round(w / scale[:, None]).clamp(-127, 127)
        self.register_buffer("weight", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        return self.weight[rows].float() * self.scale[rows, None]


_PACKED = {"bf16": Bf16Linear, "int8": Int8Linear}


def quantize(model: GPT2, precision: str) -> GPT2:
    """Store `model`'s linear layers (and head) in `precision`, in place; returns the model.

    The fp32 weights of the swapped layers are released (only the new storage is kept). A tied head gets
    its own packed copy of `wte` (the fp32 table stays for the embedding lookup). Quantizing is one-way:
    load the file again for another precision.
    """
    check_precision(precision)
    if precision == model.runtime.precision:
        return model
    if model.runtime.precision != "fp32":
        raise ValueError(
            f"this model is already stored as {model.runtime.precision}; load it again for {precision}"
        )
    if not model.wte.weight.is_floating_point() or model.wte.weight.dtype != torch.float32:
        raise ValueError(f"bf16/int8 packing starts from an fp32 model, got {model.wte.weight.dtype}")
    model.runtime.engine = None  # it points at the weights being replaced
    for block in model.h:
        pack_block(block, precision)
    pack_head(model, precision)
    return model


LINEARS = (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))  # in every block


# fp32 rows packed at once. Above glibc's largest mmap threshold (32 MB), so each temporary of packing
# is a mapping of its own that goes straight back to the system when freed; in 8 MB slices the freed
# temporaries piled up in the heap (+335 MB packing the 124M head to int8, against +40 MB this way).
PACK_ROWS_BYTES = 64 << 20


def packed(precision: str, weight: torch.Tensor, bias: torch.Tensor | None) -> PackedLinear:
    """`weight` (and `bias`) as a `precision` layer, packed a slice of rows at a time: packing makes a few
    weight-sized temporaries, and GPT-2 XL's head alone is 321 MB in fp32. Every buffer of a packed layer
    is laid out by output row, so the slices' buffers concatenate into the whole layer's."""
    cls = _PACKED[precision]
    rows = max(1, PACK_ROWS_BYTES // (4 * weight.shape[1]))
    if weight.shape[0] <= rows:
        return cls(weight, bias)
    parts = [
        cls(weight[a : a + rows], None if bias is None else bias[a : a + rows])
        for a in range(0, weight.shape[0], rows)
    ]
    whole = parts[0]
    whole.out_features = weight.shape[0]
    for name, buf in list(whole.named_buffers()):
        pieces = [dict(p.named_buffers())[name] for p in parts]
        if buf.device.type == "cpu":  # straight into the memory it will stay in
            whole.register_buffer(
                name, torch.cat(pieces, out=memory.empty((weight.shape[0], *buf.shape[1:]), buf.dtype))
            )
        else:
            whole.register_buffer(name, torch.cat(pieces))
    return whole


@torch.no_grad()
def pack_block(block: nn.Module, precision: str) -> None:
    """Store one block's four linear layers in `precision` (in place; a loader packs each block as soon
    as its fp32 tensors are in, so the whole model never exists in fp32)."""
    if precision == "fp32":
        return
    for parent, name in LINEARS:
        linear = getattr(getattr(block, parent), name)
        setattr(getattr(block, parent), name, packed(precision, linear.weight, linear.bias))


@torch.no_grad()
def pack_head(model: GPT2, precision: str) -> None:
    """The head in `precision` (a tied head gets its own packed copy of `wte`); records the precision."""
    if precision != "fp32":
        model.lm_head = packed(precision, model.head_weight, None)
    model.runtime.precision = precision


def weight_bytes_per_token(model: GPT2) -> int:
    """Bytes of weights one decode step reads: every matmul weight (head included) with its bias and
    scales, the LayerNorms, and one row each of `wte` and `wpe`. The KV cache comes on top."""
    c = model.config
    n = 0
    for block in model.h:
        for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            n += _nbytes(lin)
    n += c.n_vocab * c.n_embd * 4 if model.lm_head is None else _nbytes(model.lm_head)
    n += (2 * c.n_layer + 1) * 2 * c.n_embd * 4  # LayerNorm gains and biases (fp32)
    return n + 2 * c.n_embd * 4


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
