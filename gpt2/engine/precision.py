"""Precision as a property of how weights are loaded: the same `GPT2`, its linear layers swapped.

Batch-1 decoding reads every weight once per token, so fewer bytes per weight mean more tokens per second.
`quantize(model, precision)` replaces each block's four linear layers (and the head) with modules that
store their weight in fewer bytes, in place, in the layout the native engine (`gpt2/engine/csrc/decode.c`)
reads directly, so one copy of the weights serves both the engine and PyTorch:

- "fp32": `nn.Linear` as loaded (exact);
- "bf16": bfloat16 weights (half the bytes; the activations stay fp32);
- "f16": IEEE half weights (half the bytes, 3 more mantissa bits than bf16; weights beyond +-65504 are
  refused when packing);
- "int8": int8 weights with one fp32 scale per output row (symmetric, absmax / 127; a quarter of the bytes);
- "int4": 4-bit codes with one f16 scale per 32 inputs of a row (4.5 bits a weight), each group's scale
  chosen to minimise its squared error; the head stays int8 (`HEAD_PRECISION`).

Each packed module keeps plain tensors (its buffers), the layout a packed safetensors file holds as-is
under the module's names (`h.{i}.attn.c_attn.weight`, `.scale`, `.bias`; likewise `lm_head.*`):

    precision  weight                      scale                          bias
    bf16       bfloat16 [out, in]          -                              fp32 [out] or none
    f16        float16 [out, in]           -                              fp32 [out] or none
    int8       int8 [out, in]              fp32 [out]: w = code * scale   fp32 [out] or none
    int4       uint8 [out, in / 2]         float16 [out, in / 32]         fp32 [out] or none

int4 codes: in each 64 inputs of a row (32 bytes), byte j holds input j in its low nibble and input j + 32
in its high nibble, each as code + 8 (0..15 for codes -8..7); input k's weight is
code * scale[row, k // 32]. (That order lets the kernels unpack a group of 32 with one load and a mask.)

The embeddings, LayerNorms, residual stream and KV cache stay fp32 in every mode. On PyTorch's path
(prompts longer than the engine's step takes) these modules compute in fp32 with the weight widened
exactly: through the engine's GEMM (`gemm.linear`), which widens the weight block by block as it packs
it, or, where the engine is not built, by widening it in torch per call (slower: a 4-byte copy of every
weight per call). Widening, not bf16 arithmetic, because only the weights should be rounded, and on CPUs
without native bf16 it is also the faster way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT2
from . import abi, gemm, memory, threads

PRECISIONS = ("fp32", "bf16", "f16", "int8", "int4")
# Bytes a block's weight takes per parameter (int4: half a byte of code and an f16 scale per 32; int8's
# per-row scale and every bias come on top).
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "f16": 2, "int8": 1, "int4": 0.5 + 2 / abi.INT4_GROUP}
# The head's precision where it is not the blocks'. llama.cpp gives a q4_0 model's output matrix (GPT-2's
# tied token embedding) Q6_K, or Q8_0 where its width is no multiple of 256 (1558M's 1600): 6 bits and
# more. A 4-bit head would put the coarsest rounding on the logits themselves; int8 with a scale per row
# (1558M: 80 MB, 35 MB more than 4 bits, next to 830 MB of int4 blocks) keeps the error below q4_0's.
HEAD_PRECISION = {"int4": "int8"}
F16_MAX = 65504.0  # the largest finite float16
# The largest |weight| a precision stores: f16's own range; int4's f16 scales (a group's scale is at
# most ~|w| / 6.75). Larger or non-finite weights are refused when packing, before anything changes.
MAX_WEIGHT = {"f16": F16_MAX, "int4": 6.5 * F16_MAX}


def check_precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


def check_range(weight: torch.Tensor, precision: str, name: str = "a weight") -> None:
    """ValueError unless `precision` can hold every value of `weight` (`MAX_WEIGHT`; finite)."""
    limit = MAX_WEIGHT.get(precision)
    if limit is None or not weight.numel() or weight.is_meta:  # meta: a skeleton, no values yet
        return
    lo, hi = weight.detach().aminmax()  # no |w| copy of the whole tensor
    largest = max(-lo.item(), hi.item()) if not (lo.isnan() or hi.isnan()) else float("nan")
    if not largest <= limit:  # NaN fails this too
        raise ValueError(
            f"{precision} holds weights up to +-{limit:g}; {name} has max |w| = {largest:g}: "
            "use bf16 (fp32's range) or fp32"
        )


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


class HalfLinear(PackedLinear):
    """`y = x W^T + b` with W stored in a 2-byte float (`dtype`; b stays fp32); packing refuses a weight
    beyond the format's range (`MAX_WEIGHT`)."""

    dtype: torch.dtype

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        check_range(weight, self.precision, "this layer")
        self.register_buffer("weight", weight.detach().to(self.dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.scale = None

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        return self.weight[rows].float()


class Bf16Linear(HalfLinear):
    """bfloat16 weights: fp32's range, 8 significant bits."""

    precision, dtype = "bf16", torch.bfloat16


class F16Linear(HalfLinear):
    """IEEE half weights: 11 significant bits, up to +-65504."""

    precision, dtype = "f16", torch.float16


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


# int4 scale search: each group of 32 is rounded with scale m / t for each target t (m its value of largest
# magnitude; t = -8 is q4_0's absmax / -8, |t| > 8 clips m), the scale then fitted to those codes by least
# squares, and the candidate with the smallest squared error kept: never worse than q4_0's rounding but for
# the scale's own f16 rounding. RMS error on Gaussian rows 0.0860 (q4_0) -> 0.0813; Student-t(3) rows
# 0.1271 -> 0.1230; 13 or 24 targets gain 0.0003 more, 3 lose 0.0003.
INT4_TARGETS = (-9.0, -8.5, -8.0, -7.5, -7.0)
# Weights per step of the search (its temporaries stay in cache). Steps run side by side on torch's thread
# count of threads, each with torch's ops on that thread alone: torch splitting these small ops over its
# own threads made packing 2-4x slower than one thread (1558M's blocks: 100-200 s vs 40-50 s).
INT4_CHUNK = 1 << 20


def int4_pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` `[out, in]` (in % 64 == 0) as int4 codes `[out, in / 2]` uint8 and f16 scales
    `[out, in / 32]` (the layout in the module docstring); each group's scale minimises its squared error
    among `INT4_TARGETS`' candidates."""
    out, in_ = weight.shape
    if in_ % 64:
        raise ValueError(f"int4 packs rows of a multiple of 64 inputs, got {in_}")
    check_range(weight, "int4", "this layer")
    w = weight.detach().float()
    G = abi.INT4_GROUP
    codes = torch.empty(out, in_ // 2, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(out, in_ // G, dtype=torch.float16, device=weight.device)
    if weight.is_meta:  # a skeleton's layout (a packed file's shapes), nothing to compute
        return codes, scales
    step = max(1, INT4_CHUNK // in_)

    def pack(a: int) -> None:
        with threads.single_threaded_torch():
            g = w[a : a + step].reshape(-1, G)
            d = _int4_scales(g).to(torch.float16)
            df = d.float()[:, None]
            c = torch.where(df != 0, g / df, 0.0).round_().clamp_(-8, 7).add_(8).to(torch.uint8)
            c = c.view(-1, in_ // 64, 2, G)  # (row, block of 64, low/high half, 32)
            codes[a : a + step] = (c[:, :, 0] | c[:, :, 1] << 4).view(-1, in_ // 2)
            scales[a : a + step] = d.view(-1, in_ // G)

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        list(pool.map(pack, range(0, out, step)))  # list(): a step's exception is raised here
    return codes, scales


def _int4_scales(g: torch.Tensor) -> torch.Tensor:
    """The least-squares scale of each row of `g` `[n, 32]` for the best of `INT4_TARGETS`' roundings."""
    hi, lo = g.amax(-1), g.amin(-1)
    m = torch.where(hi > -lo, hi, lo)[:, None]  # the value of largest magnitude, signed
    inv = torch.where(m != 0, m.reciprocal(), 0.0)
    both = torch.empty(g.shape[0], 2, g.shape[1])  # [x; codes]: one batched matmul gives x.c and c.c
    both[:, 0] = g
    c = both[:, 1]
    best, best_d = torch.full((g.shape[0],), -1.0), torch.zeros(g.shape[0])
    for t in INT4_TARGETS:
        torch.mul(g, inv * t, out=c).round_().clamp_(-8, 7)
        sums = torch.bmm(both, c[:, :, None])[:, :, 0]
        d = sums[:, 0] / sums[:, 1].clamp(min=1)  # argmin_d |x - d c|^2
        score = sums[:, 0] * d  # |x|^2 - |x - d c|^2: larger is better
        better = score > best
        best, best_d = torch.where(better, score, best), torch.where(better, d, best_d)
    return best_d


class Int4Linear(PackedLinear):
    """`y = x W^T + b` with W as 4-bit codes and one f16 scale per 32 inputs of a row (b stays fp32);
    layout in the module docstring."""

    precision = "int4"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        codes, scales = int4_pack(weight)
        self.register_buffer("weight", codes)
        self.register_buffer("scale", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        b = self.weight[rows]
        n, G = b.shape[0], abi.INT4_GROUP
        b = b.view(n, -1, 1, G)  # (row, block of 64, 1, 32)
        codes = torch.cat([b & 15, b >> 4], dim=2).view(n, -1, G).float() - 8  # (row, group, 32)
        return (codes * self.scale[rows].float()[:, :, None]).view(n, self.in_features)


_PACKED = {"bf16": Bf16Linear, "f16": F16Linear, "int8": Int8Linear, "int4": Int4Linear}


def head_precision(precision: str) -> str:
    """The packed head's precision in a model whose blocks are `precision`."""
    return HEAD_PRECISION.get(precision, precision)


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
        raise ValueError(f"{precision} packing starts from an fp32 model, got {model.wte.weight.dtype}")
    # Refusals (a range the precision cannot hold) come before anything changes; then each block is
    # packed in turn, so only one block's two copies are ever held at once.
    for i, block in enumerate(model.h):
        check_block_range(block, precision, f"h.{i}")
    check_range(model.head_weight, head_precision(precision), "the head")
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


def check_block_range(block: nn.Module, precision: str, name: str = "a block") -> None:
    """ValueError unless `precision` holds every weight of `block`'s four linear layers."""
    for parent, linear in LINEARS:
        check_range(getattr(getattr(block, parent), linear).weight, precision, f"{name}.{parent}.{linear}")


@torch.no_grad()
def pack_block(block: nn.Module, precision: str) -> None:
    """Store one block's four linear layers in `precision` (in place; a loader packs each block as soon
    as its fp32 tensors are in, so the whole model never exists in fp32). A weight out of the precision's
    range is refused before any layer of the block changes."""
    if precision == "fp32":
        return
    check_block_range(block, precision)
    for parent, name in LINEARS:
        linear = getattr(getattr(block, parent), name)
        setattr(getattr(block, parent), name, packed(precision, linear.weight, linear.bias))


@torch.no_grad()
def pack_head(model: GPT2, precision: str) -> None:
    """The head in `precision` (a tied head gets its own packed copy of `wte`); records the precision."""
    if precision != "fp32":
        model.lm_head = packed(head_precision(precision), model.head_weight, None)
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
