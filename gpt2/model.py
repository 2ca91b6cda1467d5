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
        xf = x.float()
        mean = xf.mean(dim=-1, keepdim=True)
        var = (xf - mean).pow(2).mean(dim=-1, keepdim=True)  # biased, like tf.reduce_mean
        y = (xf - mean) * torch.rsqrt(var + LN_EPS)
        return (y * self.weight.float() + self.bias.float()).to(x.dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU in the tanh form GPT-2 was trained with (not the erf form)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


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

    def set_attention_impl(self, impl: str) -> None:
        if impl not in ("sdpa", "math"):
            raise ValueError(f"attention impl must be 'sdpa' or 'math', got {impl!r}")
        for block in self.h:
            block.attn.impl = impl

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
        x = self.ln_f(x)
        return F.linear(x, self.head_weight)  # (B, T, n_vocab)

    def decode_rows(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, rows: torch.Tensor
    ) -> torch.Tensor:
        """Batched one-token decode for independent sequences sharing one multi-slot cache.

        `tokens`, `positions` and `rows` are `(B,)`: token b is at absolute position `positions[b]` of
        the sequence held in cache slot `rows[b]`. Returns logits `(B, n_vocab)`. `cache.length` is not
        used here: each slot's length is its row's position + 1, tracked by the caller (the scheduler).
        """
        if not (tokens.shape == positions.shape == rows.shape) or tokens.dim() != 1:
            raise ValueError("tokens, positions and rows must be 1-D and of equal length")
        if int(positions.max()) >= cache.max_len:
            raise ValueError(f"position {int(positions.max())} is beyond the cache length {cache.max_len}")
        S = int(positions.max()) + 1
        mask = torch.arange(S, device=tokens.device)[None, :] <= positions[:, None]  # (B, S)
        mask = mask[:, None, None, :]  # (B, 1, 1, S)
        x = (self.wte(tokens) + self.wpe(positions))[:, None, :]  # (B, 1, C)
        for i, block in enumerate(self.h):
            x = block.forward_rows(x, cache.k[i], cache.v[i], rows, positions, mask)
        x = self.ln_f(x)
        return F.linear(x, self.head_weight)[:, 0, :]  # (B, n_vocab)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)

    def prefill(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run a whole prompt `(B, T)` into an empty (or partly filled) cache; logits of the last position."""
        return self(idx, cache, last_only=True)[:, -1, :]  # (B, n_vocab)

    def decode_one(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per row `(B,)` or `(B, 1)` after the cached prefix; its logits `(B, n_vocab)`."""
        return self(token.view(-1, 1), cache, last_only=True)[:, -1, :]
