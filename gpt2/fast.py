"""The fast inference path: the same GPT-2, its weights stored once for the CPU's fastest kernels.

Batch-1 decoding is memory-bandwidth bound: every token reads every weight once, so tokens/s is set by
how many bytes a token touches and how close each matmul comes to the machine's bandwidth, plus the
per-op dispatch cost of ~200 small ops a token. `FastGPT2` attacks all three:

- decode steps (and prompts of a few dozen tokens) run in the native engine (`gpt2/native.py`,
  `gpt2/csrc/decode.c`) where it builds for this CPU: one C call a step, kernels that stream the
  weights at memory speed, batched rows bit-identical to each row alone;
- longer prompts, and every step where the engine is unavailable, run through torch: oneDNN's
  `_linear_pointwise` (weights pre-packed with `mkldnn._reorder_linear_weight` when torch also decodes,
  where its one-row matmul reads a blocked weight far faster than `F.linear`), fused GELU and residual
  adds, q/k/v as views of one matmul, the KV cache written in place, attention over the filled prefix,
  the head on the last position only;
- precision modes cut the bytes: "fp32" (exact), "bf16" (half), "int8" (weight-only, per-output-channel
  scales; the tied 50257×768 head included).

The math is unchanged: LayerNorm (eps 1e-5, biased variance), tanh-GELU and scaled dot-product attention;
`tests/test_fast.py` and `tests/test_native.py` check both paths against the hand-written `GPT2` and
Hugging Face's. The residual stream, LayerNorm and KV cache stay fp32 in every mode.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from . import native as native_engine
from .config import GPT2Config
from .model import GPT2, LN_EPS, KVCache, causal_mask

PRECISIONS = ("fp32", "bf16", "int8")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Above this many rows an int8 matmul dequantizes its weight and runs the bf16 GEMM (see PackedLinear).
INT8_GEMV_MAX_ROWS = 16
# Prompts up to this many tokens go through the native engine in one call (its kernels read each weight
# once for all rows); longer ones through oneDNN's GEMM, which wins once the matmuls are compute-bound.
# Crossovers measured on 124M shapes, 2 threads (prefill ms native/oneDNN): fp32 32 tokens 50/51,
# 64: 89/77; bf16 20: 24/26, 32: 36/32; int8 64: 47/60, 128: 94/98 (its GEMM dequantizes first).
NATIVE_PROMPT_MAX = {"fp32": 32, "bf16": 24, "int8": 128}


def _torch_bf16() -> bool:
    """True where torch's CPU kernels have native bf16 dot products (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_supported() -> bool:
    """True where the bf16 and int8 modes run at speed: the native engine runs both (any CPU with AVX2 +
    FMA or AVX-512, and a C compiler), or torch has native bf16 dot products (AVX512-BF16 or AMX)."""
    return (native_engine.available("bf16") and native_engine.available("int8")) or _torch_bf16()


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve_precision(precision: str) -> str:
    """Validate a precision name. bf16/int8 are used where they run at speed (`bf16_supported`); elsewhere
    torch would only emulate bf16, slower than fp32, so they fall back to fp32 with a RuntimeWarning that
    says why (Python shows it once per calling line)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and not bf16_supported():
        why = native_engine.unavailable_reason(precision) or "not available"
        warnings.warn(
            f"precision {precision!r} needs the native engine (here: {why}) or native bf16 in torch "
            "(avx512_bf16/AMX), which this CPU lacks; using fp32",
            RuntimeWarning,
            stacklevel=2,
        )
        return "fp32"
    return precision


class PackedLinear:
    """`y = x @ W.T + b` with W stored the fastest way for its precision; optional fused GELU / residual.

    fp32 and bf16 use oneDNN (prepacked unless `prepack=False`, which keeps the row-major weight the
    native engine reads; `F.linear` where oneDNN is missing or the tensors are not on the CPU); int8
    stores W as int8 with one scale per output row (symmetric, absmax/127, kept in bf16 as torch's
    kernel wants, and in fp32 for the native engine) and multiplies with bf16 activations in torch.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str, prepack: bool = True
    ) -> None:
        weight = weight.detach()
        self.out_features, self.in_features = weight.shape
        self.precision = precision
        self.act_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        self.onednn = False
        if precision == "int8":
            w = weight.float()
            # The kernel wants the scales in the activations' dtype: round them first and quantize
            # against the rounded values, so dequantizing uses exactly the scale the codes were made with.
            self.scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(self.act_dtype)  # (out,)
            codes = torch.round(w / self.scale.float()[:, None]).clamp(-127, 127)
            self.weight = codes.to(torch.int8).contiguous()
        else:
            w = weight.to(_DTYPES[precision]).contiguous()
            # oneDNN's bf16 matmul exists only where the CPU has bf16 dot products; elsewhere (bf16 served
            # by the native engine on AVX2) the rare torch-side bf16 matmul is F.linear's.
            native_dtype = precision == "fp32" or _torch_bf16()
            self.onednn = w.device.type == "cpu" and _onednn_available() and native_dtype
            # Prepacked, the batch-size hint (1) picks oneDNN's blocked layout for one-row decoding. When
            # the native engine decodes, the weight stays row-major (it reads that layout, and oneDNN's
            # many-row GEMM for prompts is as fast on it), so one copy serves both.
            if self.onednn and prepack:
                w = torch.ops.mkldnn._reorder_linear_weight(w, 1)
            self.weight = w
            self.scale = None
        self.bias = None if bias is None else bias.detach().to(self.act_dtype).contiguous()
        # fp32 copies of the small vectors, for the native engine (exactly the values above).
        self.bias_f32 = None if bias is None else self.bias.float().contiguous()
        self.scale_f32 = None if self.scale is None else self.scale.float().contiguous()

    def nbytes(self) -> int:
        """Bytes one call reads from weights, bias and scales (what bandwidth accounting needs)."""
        n = (
            self.out_features
            * self.in_features
            * (1 if self.precision == "int8" else 2 if self.precision == "bf16" else 4)
        )
        n += 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        n += 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return n

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        x = x.to(self.act_dtype)
        if self.onednn:
            if gelu:
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu", [], "tanh")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if self.precision == "int8":
            x2 = x.reshape(-1, self.in_features)
            if x2.shape[0] > INT8_GEMV_MAX_ROWS:
                # A long prompt: the int8 kernel dequantizes inside its inner loop, which is fine for
                # one row but compute-bound for many (a 1000-token prefill ran 3x slower than bf16).
                # Dequantize once per call instead and use the bf16 GEMM.
                w = (self.weight.to(self.act_dtype) * self.scale[:, None]).to(self.act_dtype)
                y = F.linear(x2, w)
            else:
                y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
            y = y.view(*x.shape[:-1], self.out_features)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = F.linear(x, self.weight, self.bias)
        return F.gelu(y, approximate="tanh") if gelu else y

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual + self(x)`, fused into the matmul where the kernel can (fp32 oneDNN)."""
        if self.onednn and self.act_dtype == residual.dtype:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        return residual + self(x)


class _FastBlock:
    def __init__(self, block: Any, precision: str, n_head: int, prepack: bool = True) -> None:
        self.ln_1 = (block.ln_1.weight.detach().float(), block.ln_1.bias.detach().float())
        self.ln_2 = (block.ln_2.weight.detach().float(), block.ln_2.bias.detach().float())
        self.c_attn = PackedLinear(block.attn.c_attn.weight, block.attn.c_attn.bias, precision, prepack)
        self.c_proj = PackedLinear(block.attn.c_proj.weight, block.attn.c_proj.bias, precision, prepack)
        self.c_fc = PackedLinear(block.mlp.c_fc.weight, block.mlp.c_fc.bias, precision, prepack)
        self.mlp_proj = PackedLinear(block.mlp.c_proj.weight, block.mlp.c_proj.bias, precision, prepack)
        self.n_head = n_head

    def linears(self) -> list[PackedLinear]:
        return [self.c_attn, self.c_proj, self.c_fc, self.mlp_proj]

    def native_spec(self) -> dict:
        """This block's tensors as `native.NativeModel` takes them (row-major weights, fp32 vectors)."""

        def lin(p: PackedLinear) -> tuple:
            return (p.weight, p.scale_f32, p.bias_f32)

        spec = dict(attn=lin(self.c_attn), proj=lin(self.c_proj), fc=lin(self.c_fc), mlp=lin(self.mlp_proj))
        return dict(spec, ln_1=self.ln_1, ln_2=self.ln_2)

    def __call__(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int
    ) -> torch.Tensor:
        B, T, C = x.shape
        h = F.layer_norm(x, (C,), *self.ln_1, LN_EPS)
        qkv = self.c_attn(h).float()  # (B, T, 3C): q, k, v side by side (fp32 like the cache)
        # One view splits heads for all three: (3, B, nh, T, hs), no copies.
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        S = start + T
        k_cache[:, :, start:S] = k  # in-place write into the pre-allocated cache
        v_cache[:, :, start:S] = v
        keys, values = k_cache[:, :, :S], v_cache[:, :, :S]  # the filled prefix only
        if T == 1:  # one query sees every cached key: no mask
            y = F.scaled_dot_product_attention(q, keys, values)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal_mask(T, S, q.device))
        y = y.transpose(1, 2).reshape(B, T, C)
        x = self.c_proj.add_to(y, x)
        h = F.layer_norm(x, (C,), *self.ln_2, LN_EPS)
        return self.mlp_proj.add_to(self.c_fc(h, gelu=True), x)


class FastGPT2:
    """Inference-only GPT-2 built from a `GPT2`'s weights in one precision: "fp32", "bf16" or "int8".

    Same interface as `GPT2` for generation: `new_cache`, `prefill`, `decode_one`, `forward`/`__call__`
    (logits always come back as fp32). The source model is not modified; the packed weights are a copy,
    so rebuild (or use `runner_for`, which notices) after changing the model's weights.
    """

    def __init__(self, model: GPT2, precision: str = "fp32", native: bool | None = None) -> None:
        if not isinstance(model, GPT2):
            raise TypeError(f"FastGPT2 wraps a gpt2.GPT2, got {type(model).__name__}")
        self.precision = resolve_precision(precision)
        self.config: GPT2Config = model.config
        self.device = model.wte.weight.device
        # The native engine (gpt2/csrc/decode.c) runs decode steps where it is built for this CPU;
        # native=None means "if available", True insists (an error says why not), False never.
        usable = self.device.type == "cpu" and self.config.head_dim in (16, 32, 48, 64)
        usable = usable and self.config.n_embd % 64 == 0 and native_engine.available(self.precision)
        if native and not usable:
            reason = native_engine.unavailable_reason(self.precision) or "this model's shapes or device"
            raise RuntimeError(f"the native decode engine cannot run here: {reason}")
        use_native = usable if native is None else bool(native and usable)
        # The KV cache stays fp32 in every mode: at chat-length contexts it is a few MB a token next to
        # 100+ MB of weights, and CPU attention over a bf16 cache measured ~5x slower per call (75 vs
        # 15 us at T=1, x12 layers) besides rounding keys and values.
        self.cache_dtype = torch.float32
        with torch.no_grad():
            self.wte = model.wte.weight.detach().float().contiguous()
            self.wpe = model.wpe.weight.detach().float().contiguous()
            prepack = not use_native
            self.blocks = [_FastBlock(b, self.precision, self.config.n_head, prepack) for b in model.h]
            self.ln_f = (model.ln_f.weight.detach().float(), model.ln_f.bias.detach().float())
            self.head = PackedLinear(model.head_weight, None, self.precision, prepack)
        self.native: native_engine.NativeModel | None = None
        if use_native:
            self.native = native_engine.NativeModel(
                self.precision,
                self.config,
                self.wte,
                self.wpe,
                [b.native_spec() for b in self.blocks],
                self.ln_f,
                (self.head.weight, self.head.scale_f32, None),
            )

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        return KVCache(self.config, batch_size, max_len, dtype=self.cache_dtype, device=self.device)

    def weight_bytes_per_token(self) -> int:
        """Weight bytes one decode step reads: every matmul weight (head included), LayerNorms, two
        embedding rows. The KV cache comes on top (`kv_bytes_per_token`)."""
        C = self.config.n_embd
        n = sum(lin.nbytes() for b in self.blocks for lin in b.linears()) + self.head.nbytes()
        n += (2 * len(self.blocks) + 1) * 2 * C * 4  # LayerNorm gains and biases (fp32)
        return n + 2 * C * 4  # one row of wte and one of wpe

    def kv_bytes_per_token(self, context: int) -> int:
        """KV-cache bytes one decode step reads when `context` positions are filled."""
        c = self.config
        return 2 * c.n_layer * context * c.n_embd * torch.empty((), dtype=self.cache_dtype).element_size()

    @torch.no_grad()
    def forward(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """Logits `(B, T, n_vocab)` (fp32) for `idx` `(B, T)`, continuing `cache` if given (as `GPT2`)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if cache is None:
            cache = self.new_cache(B, max_len=T)
        start = cache.length
        if T == 0 or start + T > cache.max_len:
            raise ValueError(f"{start} cached + {T} new tokens do not fit the context of {cache.max_len}")
        if cache.k.dtype != self.cache_dtype or cache.batch_size != B:
            raise ValueError(f"cache must be {self.cache_dtype} with batch size {B}; use new_cache()")
        x = F.embedding(idx, self.wte) + self.wpe[start : start + T]  # (B, T, C)
        return self._run(x, cache, start, last_only)

    __call__ = forward

    def _run(self, x: torch.Tensor, cache: KVCache, start: int, last_only: bool) -> torch.Tensor:
        for block, (k_cache, v_cache) in zip(self.blocks, cache.layers):
            x = block(x, k_cache, v_cache, start)
        cache.length = start + x.shape[1]
        if last_only:
            x = x[:, -1:]
        x = F.layer_norm(x, (self.config.n_embd,), *self.ln_f, LN_EPS)
        return self.head(x).float()

    def prefill(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run a prompt `(B, T)` into `cache`; logits `(B, n_vocab)` of the last position."""
        short = idx.dim() == 2 and idx.shape[0] == 1 and idx.shape[1] <= NATIVE_PROMPT_MAX[self.precision]
        if self.native is not None and short:
            start, T = cache.length, idx.shape[1]
            self._check_native(cache, start + T)
            positions = torch.arange(start, start + T)
            logits = self.native.forward(
                idx[0], positions, torch.zeros(T, dtype=torch.int64), cache.k, cache.v, logits_from=T - 1
            )
            cache.length = start + T
            return logits
        return self.forward(idx, cache, last_only=True)[:, -1]

    def _check_native(self, cache: KVCache, end: int) -> None:
        if end > cache.max_len:
            raise ValueError(f"{end} positions do not fit the cache of {cache.max_len}")
        if cache.k.dtype != self.cache_dtype:
            raise ValueError(f"cache must be {self.cache_dtype}; use new_cache()")

    @torch.no_grad()
    def decode_one(self, token: torch.Tensor | int, cache: KVCache) -> torch.Tensor:
        """One new token per row after the cached prefix; logits `(B, n_vocab)` (fp32)."""
        start = cache.length
        if start >= cache.max_len:
            raise ValueError(f"the cache is full ({cache.max_len} positions)")
        if self.native is not None:
            self._check_native(cache, start + 1)
            B = cache.batch_size
            tokens = torch.tensor([token]) if isinstance(token, int) else token.view(-1)
            if tokens.shape[0] != B:
                raise ValueError(f"{tokens.shape[0]} tokens for a cache of batch size {B}")
            logits = self.native.forward(tokens, torch.full((B,), start), torch.arange(B), cache.k, cache.v)
            cache.length = start + 1
            return logits
        if isinstance(token, int):
            if cache.batch_size != 1:
                raise ValueError("an int token needs a batch-1 cache")
            # Python-int indexing: two cheap row views instead of an index tensor and a gather.
            x = (self.wte[token] + self.wpe[start]).view(1, 1, -1)
        else:
            x = (F.embedding(token.view(-1), self.wte) + self.wpe[start]).unsqueeze(1)  # (B, 1, C)
        return self._run(x, cache, start, last_only=True)[:, -1]

    @torch.no_grad()
    def decode_rows(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, rows: torch.Tensor
    ) -> torch.Tensor:
        """`GPT2.decode_rows` on the packed weights: token b at `positions[b]` of the sequence held in
        cache slot `rows[b]`, each row seeing only its own prefix. Logits `(B, n_vocab)`, fp32."""
        if not (tokens.shape == positions.shape == rows.shape) or tokens.dim() != 1:
            raise ValueError("tokens, positions and rows must be 1-D and of equal length")
        if int(positions.max()) >= cache.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond the cache length {cache.max_len}")
        if self.native is not None:
            self._check_native(cache, 1)
            if int(rows.min()) < 0 or int(rows.max()) >= cache.batch_size:
                raise ValueError(f"rows must be cache slots 0..{cache.batch_size - 1}")
            return self.native.forward(tokens, positions, rows, cache.k, cache.v)
        B, C, nh = tokens.shape[0], self.config.n_embd, self.config.n_head
        S = int(positions.max()) + 1
        mask = (torch.arange(S, device=tokens.device)[None, :] <= positions[:, None])[:, None, None, :]
        x = (F.embedding(tokens, self.wte) + self.wpe[positions]).unsqueeze(1)  # (B, 1, C)
        # Rows that are one block of slots (the scheduler hands out the lowest free slots) are read
        # through a slice, a view; any other set is gathered, which copies every row's keys and values.
        r0 = int(rows[0])
        block_rows = bool(torch.equal(rows, torch.arange(r0, r0 + B, device=rows.device)))
        for block, (k_cache, v_cache) in zip(self.blocks, cache.layers):
            h = F.layer_norm(x, (C,), *block.ln_1, LN_EPS)
            q, k, v = block.c_attn(h).float().view(B, 1, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
            k_cache[rows, :, positions] = k[:, :, 0]  # (B, nh, hs) into each row's own slot
            v_cache[rows, :, positions] = v[:, :, 0]
            if block_rows:
                keys, values = k_cache[r0 : r0 + B, :, :S], v_cache[r0 : r0 + B, :, :S]  # (B, nh, S, hs)
            else:
                keys, values = k_cache[rows, :, :S], v_cache[rows, :, :S]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = block.c_proj.add_to(y.transpose(1, 2).reshape(B, 1, C), x)
            h = F.layer_norm(x, (C,), *block.ln_2, LN_EPS)
            x = block.mlp_proj.add_to(block.c_fc(h, gelu=True), x)
        x = F.layer_norm(x, (C,), *self.ln_f, LN_EPS)
        return self.head(x).float()[:, 0]


_RUNNER_LOCK = threading.Lock()


def _weights_key(model: GPT2) -> tuple:
    # data_ptr catches replaced tensors, _version catches in-place updates (load_state_dict, copy_).
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def runner_for(model: GPT2 | FastGPT2) -> GPT2 | FastGPT2:
    """The fastest exact runner for `model`: itself if already a `FastGPT2`, else a `FastGPT2` in the
    model's own dtype (fp32 → "fp32", bf16 → "bf16"), built once and kept on the model until its
    weights change. Models in other dtypes or not on the CPU run as they are."""
    if isinstance(model, FastGPT2):
        return model
    dtype, device = model.wte.weight.dtype, model.wte.weight.device
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return model
    if dtype == torch.bfloat16 and not bf16_supported():
        return model
    precision = "fp32" if dtype == torch.float32 else "bf16"
    key = (precision, _weights_key(model))
    with _RUNNER_LOCK:
        cached = model.__dict__.get("_fast_runner")
        if cached is None or cached[0] != key:
            cached = (key, FastGPT2(model, precision))
            model.__dict__["_fast_runner"] = cached  # plain attribute: not a submodule, not in state_dict
        return cached[1]


def load_model_for_inference(path: str, precision: str = "fp32") -> FastGPT2:
    """Load a weights file (see `gpt2.weights.load_model`) straight into a `FastGPT2` of `precision`.

    The fp32 model is only a stepping stone: once packed, nothing keeps it (the packed copy shares the
    fp32 embedding tables with it), so serving int8 holds ~0.3 GB for the 124M model instead of 0.5.
    """
    from .weights import load_model  # here, not at the top: weights imports model, keep fast light

    return FastGPT2(load_model(path), resolve_precision(precision))
