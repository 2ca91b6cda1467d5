"""The engine bound to one model: `NativeModel` holds pointers to a `GPT2`'s own tensors, `Engine` is what
`GPT2.step` hands a step to.

The engine reads the model's tensors in place (the fp32 `nn.Linear` weights, or the packed storage
`gpt2.engine.precision` put in their place), so nothing is copied and the model stays the one
specification. `GPT2.step` checks a step's values (token ids, positions, slots: `gpt2.model.check_step`);
this module checks what C cannot see: every weight's dtype and shape once, at binding, and per call the
types, lengths and memory layout of the tensors whose pointers cross. C checks the values again and
answers with a code (`abi.ERRORS`) rather than touch memory it should not. ctypes releases the GIL
during the call, and the library runs the step on its own threads.
"""

from __future__ import annotations

import ctypes

import torch

from . import abi, build

# Prompts up to this many tokens run in the engine (its kernels read each weight once for all rows);
# longer ones through GEMMs, which win once the matmuls are compute-bound. Crossovers measured on
# 124M shapes, 2 threads (prefill ms engine/torch). AVX-512 (EPYC with avx512_bf16): fp32 32 tokens 50/51,
# 64: 89/77; bf16 20: 24/26, 32: 36/32; int8 64: 47/60, 128: 94/98. AVX2 (EPYC Zen 3): fp32 64: 189/216,
# 128: 375/348; bf16 128: 325/412, 256: 602/519; int8 512: 947/1295 (torch widens int8 weights per call).
# Again on AVX2 after torch's path stopped widening the head whole: bf16 192: 447/507, 256: 617/583; int8
# 512: 843/1154, 768: 1561/1529, 1000: 2146/2171 (a tie from ~700 tokens on). AVX-512's bf16 figure was
# measured with the vdpbf16ps kernel, since replaced by the faster widening one: 24 is conservative there.
# Since PyTorch's path sends packed layers to the engine's GEMM (gpt2/engine/precision.py), AVX2: bf16 64:
# 160/164, 96: 222/219, 128: 289/273; int8 512: 1014/1013, 768: 1616/1682, 1000: 2468/2325 (a tie: left as
# it was). AVX-512 (Xeon, Sapphire Rapids class): bf16 64: 66/75, 96: 98/92; int8 192: 159/159, 256: 215/209.
# f16 and int4 (Xeon, Emerald Rapids class): f16 64: 102/120, 80: 115/114, 96: 131/128; int4 64: 99/106,
# 80: 161/139; its x86-64-v3 build: f16 64: 135/150, 96: 204/199; int4 48: 140/133 (docs/engine.md).
PROMPT_MAX = {
    512: {"fp32": 32, "bf16": 80, "f16": 80, "int8": 192, "int4": 64},
    256: {"fp32": 96, "bf16": 80, "f16": 80, "int8": 1024, "int4": 40},
}
HEAD_DIMS = (16, 32, 48, 64)


def check_tensor(name: str, t: object, shape: tuple, dtype: torch.dtype) -> None:
    """`t` is a contiguous CPU tensor of `shape` and `dtype` (what a pointer handed to C must be)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"native {name} must be a tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"native {name} must be on the CPU, got {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"native {name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"native {name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"native {name} must be contiguous")


# What a scaled precision's `scale` holds (for messages).
SCALES = {
    "int8": "one fp32 scale per output row",
    "int4": f"f16 scales, one per {abi.INT4_GROUP} inputs of a row",
}


def check_linear(name: str, precision: str, weight, scale, bias, out: int, in_: int) -> None:
    """An `[out, in_]` linear layer's tensors are what C reads for `precision` (`abi.linear_shapes`): the
    weight's and scales' dtypes and shapes, an fp32 bias or none, all contiguous on the CPU."""
    w_shape, s_shape = abi.linear_shapes(precision, out, in_)
    check_tensor(f"{name} weight", weight, w_shape, abi.WEIGHT_DTYPES[precision])
    if (scale is None) != (s_shape is None):
        need = f"need {SCALES[precision]}" if s_shape else "take no scales"
        raise ValueError(f"native {name}: {precision} weights {need}")
    if scale is not None:
        check_tensor(f"{name} scale", scale, s_shape, abi.SCALE_DTYPES[precision])
    if bias is not None:
        check_tensor(f"{name} bias", bias, (out,), torch.float32)


def linear_struct(precision: str, weight, scale, bias, out: int, in_: int) -> abi.Linear:
    """The C view of a linear layer whose tensors passed `check_linear`."""

    def ptr(t: torch.Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    return abi.Linear(ptr(weight), ptr(scale), ptr(bias), out, in_, abi.PRECISION_CODES[precision])


def _index_tensor(name: str, t: object, n: int | None) -> torch.Tensor:
    """A 1-D integer CPU tensor (int64, or widened to it exactly), of length n if given."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"native {name} must be a tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"native {name} must be on the CPU, got {t.device}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"native {name} must be an integer tensor (int64), got {t.dtype}")
    if t.dim() != 1 or t.shape[0] < 1:
        raise ValueError(f"native {name} must be 1-D with at least one entry, got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"native {name} has {t.shape[0]} entries, tokens have {n}")
    return t.to(torch.int64).contiguous()


class NativeModel:
    """The native engine bound to one model's weights (`native_spec`): pointers, no copies.

    `layers` hold `(weight, scale, bias)` triples under attn, proj, fc, mlp and LayerNorm pairs under
    ln_1, ln_2; weights and scales are contiguous tensors in `precision`'s storage (`abi.WEIGHT_DTYPES`,
    `abi.linear_shapes`: fp32, bf16 or f16 `[out, in]`; int8 with fp32 per-row scales; int4 codes
    `[out, in / 2]` with f16 scales per 32 inputs). The head is a triple in `head_precision` (the
    blocks' precision unless given: an int4 model has an int8 head). The tensors must stay alive as long
    as this object: it keeps references to them. Every shape and dtype is checked here against `config`,
    once.
    """

    def __init__(
        self,
        precision: str,
        config,
        wte,
        wpe,
        layers: list[dict],
        ln_f: tuple,
        head: tuple,
        head_precision: str | None = None,
    ) -> None:
        head_precision = precision if head_precision is None else head_precision
        for p in (precision, head_precision):
            if p not in abi.PRECISION_CODES:
                raise ValueError(
                    f"native precision must be one of {', '.join(abi.PRECISION_CODES)}, got {p!r}"
                )
            if not build.available(p):
                raise RuntimeError(f"native engine unavailable: {build.unavailable_reason(p)}")
        C, nh = config.n_embd, config.n_head
        if C % 64 or C % nh or C // nh not in HEAD_DIMS:
            raise ValueError(
                f"native engine needs n_embd a multiple of 64 and head_dim 16/32/48/64, got {config}"
            )
        if len(layers) != config.n_layer:
            raise ValueError(f"native model has {len(layers)} layers, its config says {config.n_layer}")
        self._lib = build.library()
        self.config = config
        self._keep: list[torch.Tensor] = []
        # The MLP's width (4 C in GPT-2), taken from the first fc weight; every layer is checked against it.
        fc_w = layers[0]["fc"][0] if layers else None
        inner = fc_w.shape[0] if isinstance(fc_w, torch.Tensor) and fc_w.dim() == 2 else 4 * C  # [out, ...]
        if inner % 64:
            raise ValueError(f"native engine needs the MLP width to be a multiple of 64, got {inner}")
        self._layers = (abi.Layer * len(layers))()
        for i, d in enumerate(layers):
            ln_1, ln_2 = d["ln_1"], d["ln_2"]
            self._layers[i] = abi.Layer(
                self._keep_ptr(f"h.{i}.ln_1 weight", ln_1[0], (C,)),
                self._keep_ptr(f"h.{i}.ln_1 bias", ln_1[1], (C,)),
                self._keep_ptr(f"h.{i}.ln_2 weight", ln_2[0], (C,)),
                self._keep_ptr(f"h.{i}.ln_2 bias", ln_2[1], (C,)),
                self._linear(precision, f"h.{i}.attn", d["attn"], 3 * C, C),
                self._linear(precision, f"h.{i}.proj", d["proj"], C, C),
                self._linear(precision, f"h.{i}.fc", d["fc"], inner, C),
                self._linear(precision, f"h.{i}.mlp", d["mlp"], C, inner),
            )
        self._model = abi.Model(
            config.n_layer,
            C,
            nh,
            config.n_vocab,
            config.n_ctx,
            self._keep_ptr("wte", wte, (config.n_vocab, C)),
            self._keep_ptr("wpe", wpe, (config.n_ctx, C)),
            self._keep_ptr("ln_f weight", ln_f[0], (C,)),
            self._keep_ptr("ln_f bias", ln_f[1], (C,)),
            self._linear(head_precision, "head", head, config.n_vocab, C),
            self._layers,
        )

    def _keep_ptr(self, name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype = torch.float32) -> int:
        check_tensor(name, t, shape, dtype)
        self._keep.append(t)
        return t.data_ptr()

    def _linear(self, precision: str, name: str, triple: tuple, out: int, in_: int) -> abi.Linear:
        check_linear(name, precision, *triple, out, in_)
        self._keep.extend(t for t in triple if t is not None)
        return linear_struct(precision, *triple, out, in_)

    def _cache(self, k: torch.Tensor, v: torch.Tensor) -> abi.Cache:
        """The C view of a KV cache, after checking its memory is what C will walk: fp32 on the CPU, one
        contiguous head_dim vector per position, (layer, slot, head) blocks that never overlap."""
        c = self.config
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.dtype != torch.float32:
                raise ValueError(f"native decoding needs fp32 CPU caches; {name} is not one")
            if t.dim() != 5 or (t.shape[0], t.shape[2], t.shape[4]) != (c.n_layer, c.n_head, c.head_dim):
                want = f"({c.n_layer}, slots, {c.n_head}, max_len, {c.head_dim})"
                raise ValueError(f"native cache {name} must have shape {want}, got {tuple(t.shape)}")
        if k.shape != v.shape or k.stride() != v.stride():
            raise ValueError("native caches k and v must have the same shape and strides")
        layer, slot, head, pos, dim = k.stride()
        L, S, H, T, D = k.shape
        if dim != 1 or pos != D or head < T * D or slot < H * head or layer < S * slot or T < 1 or S < 1:
            raise ValueError(
                f"native caches need a (layer, slot, head, position)-ordered layout, got strides {k.stride()}"
            )
        return abi.Cache(k.data_ptr(), v.data_ptr(), layer, slot, head, L, S, H, T, D)

    def forward(
        self, tokens, positions, slots, k: torch.Tensor, v: torch.Tensor, logits_from: int = 0
    ) -> torch.Tensor:
        """Run tokens (each at its position, in its cache slot) through the model, writing their keys and
        values into `k`/`v` (`(n_layer, slots, n_head, max_len, head_dim)` fp32, or a slot view of one);
        logits `(n - logits_from, n_vocab)` fp32 for tokens `logits_from` onwards. The values (ids,
        positions, slots in range) are `GPT2.step`'s to check, and C's: a refusal is a ValueError."""
        tokens = _index_tensor("tokens", tokens, None)
        n = tokens.shape[0]
        positions = _index_tensor("positions", positions, n)
        slots = _index_tensor("slots", slots, n)
        if isinstance(logits_from, bool) or not isinstance(logits_from, int) or not 0 <= logits_from <= n:
            raise ValueError(f"native logits_from must be an int in [0, {n}], got {logits_from!r}")
        cache = self._cache(k, v)
        logits = torch.empty(n - logits_from, self.config.n_vocab, dtype=torch.float32)
        rc = self._lib.gpt2_forward(
            ctypes.byref(self._model),
            ctypes.byref(cache),
            n,
            tokens.data_ptr(),
            positions.data_ptr(),
            slots.data_ptr(),
            logits_from,
            logits.data_ptr() if logits.numel() else None,
            max(1, torch.get_num_threads()),
        )
        if rc != 0:
            raise ValueError(f"native forward refused its arguments: {abi.error_message(rc)}")
        return logits


def native_spec(model) -> dict:
    """`NativeModel`'s arguments after the precision for a `GPT2`: its own weights in the storage of
    their precision (`gpt2.engine.precision`), the head's precision, fp32 vectors — views, not copies."""

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
        head_precision=getattr(model.lm_head, "precision", "fp32"),  # nn.Linear or tied: fp32
    )


class Engine:
    """A `NativeModel` over one `GPT2`'s tensors, as `GPT2.step` uses it (see the module docstring)."""

    def __init__(self, model) -> None:
        self.precision = model.runtime.precision
        self.prompt_max = PROMPT_MAX[build.info()["isa"]][self.precision]
        self.native = NativeModel(self.precision, model.config, **native_spec(model))

    def takes(self, n: int, slots: torch.Tensor) -> bool:
        """Whether the engine should run a step of `n` tokens: a prompt up to `prompt_max`, or one token
        per slot (a decode step, batched or not)."""
        return n <= self.prompt_max or len(set(slots.tolist())) == n

    def step(self, tokens, positions, slots, cache, logits_from: int) -> torch.Tensor:
        return self.native.forward(tokens, positions, slots, cache.k, cache.v, logits_from=logits_from)
