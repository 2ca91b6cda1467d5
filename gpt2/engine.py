"""The native decode engine bound to a `GPT2`: `attach(model)` makes `model.step` run in C.

The engine (`gpt2/native.py`, `gpt2/csrc/decode.c`) reads the model's own tensors through pointers —
the fp32 `nn.Linear` weights, or the bf16/int8 storage `gpt2.precision.quantize` put in their place —
so nothing is copied and the model stays the one specification. `GPT2.step` hands a call to the engine
when `Engine.takes` it: every batched decode step (one token for each of several rows) and prompts of up
to `PROMPT_MAX[precision]` tokens. Longer prompts are compute-bound and take PyTorch's path, where GEMMs
win: torch's for fp32 layers, the engine's own (`native.linear`) for bf16/int8 layers.
`attach` is explicit (`gpt2.load_model` does it by default); moving the model (`.to(...)`) detaches it.
"""

from __future__ import annotations

import warnings

import torch

from . import native
from .model import GPT2, KVCache

# Prompts up to this many tokens run in the engine (its kernels read each weight once for all rows);
# longer ones through GEMMs, which win once the matmuls are compute-bound. Crossovers measured on
# 124M shapes, 2 threads (prefill ms engine/torch). AVX-512 (EPYC with avx512_bf16): fp32 32 tokens 50/51,
# 64: 89/77; bf16 20: 24/26, 32: 36/32; int8 64: 47/60, 128: 94/98. AVX2 (EPYC Zen 3): fp32 64: 189/216,
# 128: 375/348; bf16 128: 325/412, 256: 602/519; int8 512: 947/1295 (torch widens int8 weights per call).
# Again on AVX2 after torch's path stopped widening the head whole: bf16 192: 447/507, 256: 617/583; int8
# 512: 843/1154, 768: 1561/1529, 1000: 2146/2171 (a tie from ~700 tokens on). AVX-512's bf16 figure was
# measured with the vdpbf16ps kernel, since replaced by the faster widening one: 24 is conservative there.
# Since PyTorch's path sends packed layers to the engine's GEMM (gpt2/precision.py), AVX2: bf16 64: 160/164,
# 96: 222/219, 128: 289/273; int8 512: 1014/1013, 768: 1616/1682, 1000: 2468/2325 (a tie: left as it was).
# AVX-512 (Xeon, Sapphire Rapids class): bf16 64: 66/75, 96: 98/92; int8 192: 159/159, 256: 215/209.
PROMPT_MAX = {
    512: {"fp32": 32, "bf16": 80, "int8": 192},
    256: {"fp32": 96, "bf16": 80, "int8": 1024},
}
HEAD_DIMS = (16, 32, 48, 64)


class Engine:
    """A `native.NativeModel` over one `GPT2`'s tensors (see the module docstring)."""

    def __init__(self, model: GPT2) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise RuntimeError(f"the native decode engine cannot run this model: {reason}")
        self.precision = model.precision
        self.prompt_max = PROMPT_MAX[native.build_info()["isa"]][self.precision]
        self.native = native.NativeModel(self.precision, model.config, **native_spec(model))

    def takes(self, n: int, slots: torch.Tensor) -> bool:
        """Whether the engine should run a step of `n` tokens: a prompt up to `prompt_max`, or one token
        per slot (a decode step, batched or not)."""
        return n <= self.prompt_max or len(set(slots.tolist())) == n

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache,
        logits_from: int,
    ) -> torch.Tensor:
        return self.native.forward(tokens, positions, slots, cache.k, cache.v, logits_from=logits_from)


def native_spec(model: GPT2) -> dict:
    """`native.NativeModel`'s tensors for `model`: its own weights (row-major `[out, in]`, in the storage
    of its precision, int8 with per-row scales), fp32 vectors — views, not copies."""

    def linear(module: torch.nn.Module) -> tuple:
        bias = None if module.bias is None else module.bias.detach().float().contiguous()
        return (module.weight.detach().contiguous(), getattr(module, "scale", None), bias)

    def norm(ln: torch.nn.Module) -> tuple:
        return (ln.weight.detach().float().contiguous(), ln.bias.detach().float().contiguous())

    layers = [
        dict(
            attn=linear(b.attn.c_attn),
            proj=linear(b.attn.c_proj),
            fc=linear(b.mlp.c_fc),
            mlp=linear(b.mlp.c_proj),
            ln_1=norm(b.ln_1),
            ln_2=norm(b.ln_2),
        )
        for b in model.h
    ]
    head = (model.wte.weight.detach(), None, None) if model.lm_head is None else linear(model.lm_head)
    return dict(
        wte=model.wte.weight.detach(),
        wpe=model.wpe.weight.detach(),
        layers=layers,
        ln_f=norm(model.ln_f),
        head=head,
    )


def unsupported_reason(model: GPT2) -> str | None:
    """Why the engine cannot run `model` on this machine (None when it can)."""
    c = model.config
    if model.wte.weight.device.type != "cpu":
        return f"the model is on {model.wte.weight.device}, the engine runs on the CPU"
    if model.wte.weight.dtype != torch.float32:
        return f"the model computes in {model.wte.weight.dtype}; the engine takes fp32, bf16 or int8 weights"
    if c.head_dim not in HEAD_DIMS or c.n_embd % 64:
        return (
            f"head size {c.head_dim} / width {c.n_embd} (needs a head size in {HEAD_DIMS}, width % 64 == 0)"
        )
    return native.unavailable_reason(model.precision)


def attach(model: GPT2, required: bool = False) -> str | None:
    """Bind the engine to `model` (in place). Returns None when attached, else the reason it is not
    (a RuntimeError instead when `required`)."""
    reason = unsupported_reason(model)
    if reason is None:
        model.engine = Engine(model)
        return None
    model.engine = None
    if required:
        raise RuntimeError(f"the native decode engine cannot run this model: {reason}")
    return reason


def describe(model: GPT2) -> str:
    """One line for logs: which path decodes this model, and why when it is not the engine."""
    pages = ", weights in 2 MB pages" if model.huge_page_bytes else ""
    if model.engine is not None:
        return f"native engine (gpt2/csrc/decode.c), {model.precision}{pages}"
    reason = unsupported_reason(model) or "not attached"
    return f"PyTorch, {model.precision}{pages} ({reason})"


def warn_without_engine(model: GPT2, reason: str) -> None:
    """bf16/int8 exist to be fast; on PyTorch's path they are not (weights are widened per call). Say so."""
    if model.precision != "fp32":
        warnings.warn(
            f"precision {model.precision!r} runs on PyTorch's path here ({reason}): correct, but slower than "
            "fp32; the native engine is what makes it fast",
            RuntimeWarning,
            stacklevel=3,
        )
