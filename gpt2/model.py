"""GPT-2 written out by hand: LayerNorm, tanh-GELU, causal self-attention, MLP, pre-LN blocks, tied head.

Module names mirror OpenAI's checkpoint (`wte, wpe, h[i].ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
mlp.c_proj, ln_f`) so that converting a checkpoint is a rename, a transpose of the conv1d weights and a
shape check. Linear weights are stored the PyTorch way, `[out_features, in_features]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPT2Config

LN_EPS = 1e-5


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with biased variance and eps 1e-5, as in OpenAI's `norm`."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))  # OpenAI's `g`
        self.bias = nn.Parameter(torch.zeros(n_embd))  # OpenAI's `b`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 even for half-precision weights: a 768-wide mean/variance in bf16 loses
        # digits that the residual stream then carries through every layer.
        # y = (x - mean) / sqrt(var + eps) * g + b, var biased (like tf.reduce_mean): torch's fused
        # layer_norm computes exactly this in one pass over x (the written-out form took ~10 passes).
        xf = x.float()
        y = F.layer_norm(xf, xf.shape[-1:], self.weight.float(), self.bias.float(), LN_EPS)
        return y.to(x.dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU in the tanh form GPT-2 was trained with (not the erf form):

        gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

    computed by torch's fused kernel for that form (`approximate="tanh"`), one pass over x instead of the
    seven the formula takes written out; tests/test_parity.py holds it to the formula above."""
    return F.gelu(x, approximate="tanh")


class KVCache:
    """Pre-allocated keys and values for every layer, filled left to right.

    Buffers are `(n_layer, B, n_head, max_len, head_dim)` and never reallocated: decoding a token writes
    one slot per layer. `length` is how many positions are filled (the same for every row).
    """

    def __init__(
        self,
        config: GPT2Config,
        batch_size: int = 1,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        max_len = config.n_ctx if max_len is None else max_len
        if not 0 < max_len <= config.n_ctx:
            raise ValueError(f"KV cache length must be in 1..{config.n_ctx}, got {max_len}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        # Per-layer (k, v) views made once, so a decode step does not re-slice the buffers per layer.
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def reset(self) -> None:
        # Stale values beyond `length` are never read, so there is nothing to zero.
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v (in that order)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        # "sdpa": torch's fused scaled_dot_product_attention; "math": the explicit masked softmax.
        self.impl = "sdpa"

    def forward(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor | None = None,
        v_cache: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if k_cache is not None:
            k_cache[:, :, start : start + T] = k
            v_cache[:, :, start : start + T] = v
            # Attend over the filled prefix only, not the whole pre-allocated buffer.
            k = k_cache[:, :, : start + T]  # (B, nh, S, hs), S = start + T
            v = v_cache[:, :, : start + T]
        y = self._attend(q, k, v, start)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)

    def forward_rows(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """One new token for each of several independent sequences (continuous batching).

        `x` is `(B, 1, C)`; row b belongs to cache slot `rows[b]` and sits at `positions[b]`. `mask`
        `(B, 1, 1, S)` lets each row see its own filled prefix only, so rows never leak into each other.
        """
        B, _, C = x.shape
        S = mask.shape[-1]
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, 1, C)
        q = q.view(B, 1, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, 1, hs)
        k_cache[rows, :, positions] = k.view(B, self.n_head, self.head_dim)  # slot write, (B, nh, hs)
        v_cache[rows, :, positions] = v.view(B, self.n_head, self.head_dim)
        keys = k_cache[rows, :, :S]  # (B, nh, S, hs)
        values = v_cache[rows, :, :S]  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, nh, 1, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, 1, C))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        T, S = q.shape[2], k.shape[2]
        if self.impl == "math":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, S)
            att = att.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
            return F.softmax(att.float(), dim=-1).to(q.dtype) @ v
        if T == 1:
            # One new query sees every cached key: no mask at all. (is_causal=True here would align the
            # mask to the top-left and let the query see only key 0 — the classic KV-cache bug.)
            return F.scaled_dot_product_attention(q, k, v)
        if S == T:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # Several new queries after a cached prefix: the mask is offset by the prefix length.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device))


def causal_mask(T: int, S: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, S) boolean mask, True where query i (at absolute position S - T + i) may see key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor | None = None,
        v_cache: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), k_cache, v_cache, start)
        return x + self.mlp(self.ln_2(x))

    def forward_rows(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *rows_args
    ) -> torch.Tensor:
        x = x + self.attn.forward_rows(self.ln_1(x), k_cache, v_cache, *rows_args)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        # `_weight=empty` skips nn.Embedding's own init: `_init_weights` below does it (on a real device).
        self.wte = nn.Embedding(
            config.n_vocab, config.n_embd, _weight=torch.empty(config.n_vocab, config.n_embd)
        )
        self.wpe = nn.Embedding(config.n_ctx, config.n_embd, _weight=torch.empty(config.n_ctx, config.n_embd))
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd)
        # Tied: logits = h @ wte.T (OpenAI's checkpoints have no head variable). Untied only when a
        # checkpoint brings its own head.
        self.lm_head = None if config.tied_head else nn.Linear(config.n_embd, config.n_vocab, bias=False)
        self.engine = None  # the native engine bound to these weights, when attached (gpt2/engine.py)
        self.precision = "fp32"  # how the linear layers are stored (gpt2/precision.py)
        self.huge_page_bytes = 0  # weight bytes placed in huge-page memory at load (gpt2/hugepages.py)
        if self.wte.weight.device.type != "meta":
            # On the meta device (shape checks, loading with assign=True) there is nothing to
            # initialise, and torch's meta normal_ costs seconds on first use.
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation; only matters for tests and benchmarks that use random weights.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02 if module.num_embeddings > 2000 else 0.01)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for hidden states `x` `(..., C)`: `x @ wte.T` (tied), or the model's own head module
        (an untied checkpoint's, or the packed copy a bf16/int8 load makes of the tied one)."""
        return F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)

    def set_attention_impl(self, impl: str) -> None:
        if impl not in ("sdpa", "math"):
            raise ValueError(f"attention impl must be 'sdpa' or 'math', got {impl!r}")
        for block in self.h:
            block.attn.impl = impl

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to(), .float(), .cuda() ... may replace the tensors the engine points at: it must be re-attached.
        self.engine = None
        return super()._apply(fn, recurse)

    def forward(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """Logits `(B, T, n_vocab)` for token ids `idx` `(B, T)`.

        With a `cache`, `idx` continues the sequence already in it: positions start at `cache.length`
        and the new keys/values are written into the cache. `last_only` computes the head for the last
        position alone (all that sampling needs), returning `(B, 1, n_vocab)`.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        limit = self.config.n_ctx if cache is None else cache.max_len
        if T == 0 or start + T > limit:
            raise ValueError(f"{start} cached + {T} new tokens do not fit the context of {limit}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for i, block in enumerate(self.h):
            if cache is None:
                x = block(x)
            else:
                x = block(x, cache.k[i], cache.v[i], start)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        return self.head(self.ln_f(x))  # (B, T, n_vocab)

    # ------------------------------------------------------------------ the row-wise step (inference)

    @torch.no_grad()
    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache,
        logits_from: int = 0,
    ) -> torch.Tensor:
        """One forward pass for `n` tokens of any sequences held in a multi-slot `cache`.

        Token i is `tokens[i]` at absolute position `positions[i]` of the sequence in cache slot
        `slots[i]`; its keys/values are written there and it attends to that slot's positions
        `0..positions[i]`. A prompt is one slot's consecutive positions; a batched decode step is one
        token for each of several slots. Returns fp32 logits `(n - logits_from, n_vocab)` for tokens
        `logits_from..n-1`. Prefill, decode and batched decode are all this call: the native engine runs
        it when one is attached (`gpt2.engine`), this module's own layers otherwise.
        """
        n = check_step(self.config, tokens, positions, slots, cache, logits_from)
        if self.engine is not None and self.engine.takes(n, slots):
            return self.engine.step(tokens, positions, slots, cache, logits_from)
        # Runs of one slot's consecutive positions go through the cached-prefix path (a prompt chunk); one
        # token for each of several distinct slots through the masked rows path (a batched decode step).
        runs = _runs(slots.tolist(), positions.tolist())
        if len(runs) > 1 and all(b - a == 1 for a, b in runs) and len(set(slots.tolist())) == n:
            x = self._rows(tokens, positions, slots, cache)  # (n, 1, C)
            return self.head(self.ln_f(x[logits_from:, 0])).float()
        out = []
        for a, b in runs:
            x = self._chunk(tokens[a:b], int(positions[a]), int(slots[a]), cache)  # (1, T, C)
            lo = max(logits_from, a) - a
            if lo < b - a:
                out.append(self.head(self.ln_f(x[0, lo:])).float())
        return torch.cat(out) if out else torch.empty(0, self.config.n_vocab, device=tokens.device)

    def _chunk(self, tokens: torch.Tensor, start: int, slot: int, cache: KVCache) -> torch.Tensor:
        T = tokens.shape[0]
        pos = torch.arange(start, start + T, device=tokens.device)
        x = (self.wte(tokens) + self.wpe(pos))[None]  # (1, T, C)
        for i, block in enumerate(self.h):
            x = block(x, cache.k[i, slot : slot + 1], cache.v[i, slot : slot + 1], start)
        return x

    def _rows(
        self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        S = int(positions.max()) + 1
        mask = torch.arange(S, device=tokens.device)[None, :] <= positions[:, None]  # (n, S)
        mask = mask[:, None, None, :]  # (n, 1, 1, S): each row sees its own filled prefix only
        x = (self.wte(tokens) + self.wpe(positions))[:, None, :]  # (n, 1, C)
        for i, block in enumerate(self.h):
            x = block.forward_rows(x, cache.k[i], cache.v[i], slots, positions, mask)
        return x

    def decode_rows(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, rows: torch.Tensor
    ) -> torch.Tensor:
        """Batched one-token decode for independent sequences sharing one multi-slot cache: `step` with
        one token per slot. Logits `(B, n_vocab)`; `cache.length` is not used (the caller tracks it)."""
        return self.step(tokens, positions, rows, cache)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        # fp32 keys/values for fp32 and packed (bf16/int8) models alike; half-precision models keep theirs.
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)

    def prefill(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run a prompt `(B, T)` into a cache after its `length` filled positions; logits of the last one."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if B != 1:
            return self(idx, cache, last_only=True)[:, -1, :]  # (B, n_vocab)
        start = cache.length
        positions = torch.arange(start, start + T, device=idx.device)
        slots = torch.zeros(T, dtype=torch.long, device=idx.device)
        logits = self.step(idx[0], positions, slots, cache, logits_from=T - 1)
        cache.length = start + T
        return logits

    def decode_one(self, token: torch.Tensor | int, cache: KVCache) -> torch.Tensor:
        """One new token per row `(B,)` after the cached prefix; its logits `(B, n_vocab)`."""
        device = self.wte.weight.device
        tokens = torch.tensor([token], device=device) if isinstance(token, int) else token.reshape(-1)
        B = tokens.shape[0]
        if cache.batch_size != B:
            raise ValueError(f"{B} tokens for a cache of batch size {cache.batch_size}")
        start = cache.length
        positions = torch.full((B,), start, dtype=torch.long, device=device)
        logits = self.step(tokens, positions, torch.arange(B, device=device), cache)
        cache.length = start + 1
        return logits


def _runs(slots: list[int], positions: list[int]) -> list[tuple[int, int]]:
    """Maximal `[a, b)` ranges of tokens that are one slot's consecutive positions."""
    runs, a = [], 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] or positions[i] != positions[i - 1] + 1:
            runs.append((a, i))
            a = i
    return runs


def check_step(
    config: GPT2Config,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cache: KVCache,
    logits_from: int,
) -> int:
    """Validate `GPT2.step`'s arguments (before any of them reaches torch indexing or the C engine)."""
    for name, t in (("tokens", tokens), ("positions", positions), ("slots", slots)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be a 1-D integer tensor")
    n = tokens.shape[0]
    if n == 0 or positions.shape[0] != n or slots.shape[0] != n:
        raise ValueError(
            f"tokens, positions and slots must have the same length >= 1, got {n}, "
            f"{positions.shape[0]}, {slots.shape[0]}"
        )
    if not isinstance(logits_from, int) or not 0 <= logits_from <= n:
        raise ValueError(f"logits_from must be in 0..{n}, got {logits_from!r}")
    if cache.k.shape[0] != config.n_layer or cache.k.shape[2] != config.n_head:
        raise ValueError("the cache was made for another model")
    checks = (
        (tokens, config.n_vocab, "token id"),
        (positions, cache.max_len, "position"),
        (slots, cache.batch_size, "cache slot"),
    )
    for t, limit, what in checks:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0:
            raise ValueError(f"{what} {lo} is negative")
        if hi >= limit:
            if what == "position":
                raise ValueError(f"tokens up to position {hi} do not fit the cache of {limit} positions")
            raise ValueError(
                f"{what} {hi} is out of range (below {limit}: the cache's slots / the vocabulary)"
            )
    return n
