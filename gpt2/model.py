"""GPT-2 written out by hand: LayerNorm, tanh-GELU, causal self-attention, MLP, pre-LN blocks, tied head.

Module names mirror OpenAI's checkpoint (`wte, wpe, h[i].ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
mlp.c_proj, ln_f`) so that converting a checkpoint is a rename, a transpose of the conv1d weights and a
shape check. Linear weights are stored the PyTorch way, `[out_features, in_features]`.

Two ways in:

    GPT2.forward(idx)         the specification: logits for whole sequences, no state
    GPT2.step(tokens, ...)    the one inference step: tokens of any sequences held in a `KVCache`, at any
                              positions (a prompt, one decode step, a batch of them); the native engine
                              runs it when one is bound (`gpt2.engine`), these same modules otherwise

What a model runs with (precision, engine, name, memory placement) is `model.runtime`, set at load time
by `gpt2.engine.prepare`; none of it changes the math here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

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
    seven the formula takes written out; tests/spec/test_model.py holds it to the formula above."""
    return F.gelu(x, approximate="tanh")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v (in that order)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(
        self, x: torch.Tensor, cache: CachedLayer | None = None, probe: Probe | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if probe is not None:
            probe.attention(q, k)
        if cache is None:
            # softmax(q k^T / sqrt(hs), causal) v — `attention_weights` spells the weights out; torch's
            # fused kernel computes the same without materialising them (tests hold the two equal).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            y = cache.attend(q, k, v)  # (B, nh, T, hs): each token over its own sequence's cached prefix
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


def attention_weights(q: torch.Tensor, k: torch.Tensor, first: int = 0) -> torch.Tensor:
    """GPT-2's attention weights, written out: softmax over keys of q·k / sqrt(hs), each query seeing the
    keys up to its own position. `q` `(..., T, hs)` are queries `first..first+T-1` of a sequence whose
    keys `k` `(..., S, hs)` start at position 0. Returns `(..., T, S)`; each row sums to 1."""
    T, S = q.shape[-2], k.shape[-2]
    att = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (..., T, S)
    visible = (
        torch.arange(S, device=q.device)[None, :] <= torch.arange(first, first + T, device=q.device)[:, None]
    )
    return F.softmax(att.masked_fill(~visible, float("-inf")), dim=-1)


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
        self, x: torch.Tensor, cache: CachedLayer | None = None, probe: Probe | None = None
    ) -> torch.Tensor:
        a = self.attn(self.ln_1(x), cache, probe)  # what attention writes into the residual stream
        x = x + a
        m = self.mlp(self.ln_2(x))  # what the MLP writes
        if probe is not None:
            probe.block(a, m, x + m)
        return x + m


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
        self.runtime = Runtime()
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
        (an untied checkpoint's, or the packed copy a packed load makes of the tied one)."""
        return F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to(), .float(), .cuda() ... may replace the tensors the engine points at: it must be bound again.
        self.runtime.engine = None
        return super()._apply(fn, recurse)

    def forward(self, idx: torch.Tensor, probe: Probe | None = None) -> torch.Tensor:
        """Logits `(B, T, n_vocab)` for token ids `idx` `(B, T)`, positions 0..T-1: the specification.

        `probe` (optional) is shown what the model computes on the way: the embeddings, each block's
        queries and keys, and what its attention and MLP write into the residual stream
        (`gpt2.decoding.trace` looks inside with it). It changes nothing.
        """
        if idx.dim() != 2 or not 0 < idx.shape[1] <= self.config.n_ctx:
            raise ValueError(
                f"idx must be (B, T) with 1 <= T <= {self.config.n_ctx}, got shape {tuple(idx.shape)}"
            )
        pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        if probe is not None:
            probe.embedded(x)
        for block in self.h:
            x = block(x, probe=probe)
        return self.head(self.ln_f(x))  # (B, T, n_vocab)

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
        `logits_from..n-1`. Every argument is checked here (`check_step`), before anything runs.
        """
        n = check_step(self.config, tokens, positions, slots, cache, logits_from)
        cache.ensure(int(positions.max()) + 1)
        engine = self.runtime.engine
        if engine is not None and engine.takes(n, slots):
            return engine.step(tokens, positions, slots, cache, logits_from)
        x = (self.wte(tokens) + self.wpe(positions))[None]  # (1, n, C): all tokens as one row
        layout = cache.layout(slots, positions)
        for i, block in enumerate(self.h):
            x = block(x, cache.layer(i, layout))
        return self.head(self.ln_f(x[0, logits_from:])).float()  # (n - logits_from, n_vocab)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """A cache with `batch_size` slots for this model (fp32 keys/values for fp32 and packed models)."""
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)


class Probe(Protocol):
    """What `GPT2.forward` shows an observer (see `gpt2.decoding.trace`)."""

    def embedded(self, x: torch.Tensor) -> None: ...  # (B, T, C): token + position embeddings

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> None: ...  # (B, nh, T, hs) each

    def block(
        self, attn: torch.Tensor, mlp: torch.Tensor, x: torch.Tensor
    ) -> None: ...  # writes, stream after


# ------------------------------------------------------------------------------------ inference state


@dataclass
class Runtime:
    """How a model is run, outside its math: set by `gpt2.engine.prepare` and the loaders."""

    precision: str = "fp32"  # how the linear layers are stored (gpt2.engine.precision)
    engine: Any = None  # the native engine bound to these weights (gpt2.engine.binding.Engine), or None
    name: str | None = None  # the display name it was loaded under
    huge_page_bytes: int = 0  # weight bytes placed in huge pages at load (gpt2.engine.memory)


class KVCache:
    """Keys and values for every layer, `slot` by slot: each slot holds one sequence.

    Buffers are `(n_layer, slots, n_head, capacity, head_dim)`. They start small and grow with the text
    (a step that writes past `capacity` first grows it, by half again, in whole chunks, up to `max_len`):
    8 slots of GPT-2 XL at the full 1024 positions would be 5 GB in fp32 before the first token, and most
    texts are a few hundred tokens. Growing copies the filled positions once into the larger buffers.
    Who owns which slot, and how far each is filled, is the caller's to track (`gpt2.decoding`).
    """

    CHUNK = 64  # positions: capacity is always a multiple of this (or max_len)

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
        self.shape = (config.n_layer, batch_size, config.n_head, 0, config.head_dim)
        self.dtype, self.device = dtype, device
        self.max_len = max_len  # the most positions a slot may hold
        self.k = self.v = torch.empty(self.shape, dtype=dtype, device=device)
        self.ensure(1)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def ensure(self, length: int) -> None:
        """Room for positions `0..length-1` in every slot (`length <= max_len`), keeping what is there."""
        if length <= self.capacity:
            return
        grown = max(length, self.capacity * 3 // 2)
        grown = min(self.max_len, -(-grown // self.CHUNK) * self.CHUNK)
        L, B, H, _, D = self.shape
        k = torch.zeros((L, B, H, grown, D), dtype=self.dtype, device=self.device)
        v = torch.zeros_like(k)
        k[:, :, :, : self.capacity] = self.k
        v[:, :, :, : self.capacity] = self.v
        self.k, self.v = k, v

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def layout(self, slots: torch.Tensor, positions: torch.Tensor) -> StepLayout:
        return StepLayout(slots, positions)

    def layer(self, i: int, layout: StepLayout) -> CachedLayer:
        return CachedLayer(self.k[i], self.v[i], layout)


class StepLayout:
    """Where a step's tokens go: slots, positions, and the runs of one slot's consecutive positions."""

    def __init__(self, slots: torch.Tensor, positions: torch.Tensor) -> None:
        self.slots, self.positions = slots, positions
        slot_list, pos_list = slots.tolist(), positions.tolist()
        self.runs: list[tuple[int, int]] = []  # [a, b): tokens a..b-1 are one slot's consecutive positions
        a = 0
        for i in range(1, len(slot_list) + 1):
            if i == len(slot_list) or slot_list[i] != slot_list[i - 1] or pos_list[i] != pos_list[i - 1] + 1:
                self.runs.append((a, i))
                a = i
        # One token for each of several distinct slots: a batched decode step, attended in one call.
        self.one_per_slot = len(self.runs) > 1 and len(set(slot_list)) == len(slot_list)
        self.starts = [pos_list[a] for a, _ in self.runs]
        self.run_slots = [slot_list[a] for a, _ in self.runs]


class CachedLayer:
    """One layer's keys and values for one step: write the step's, attend over each token's prefix."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, layout: StepLayout) -> None:
        self.k, self.v, self.layout = k, v, layout  # (slots, nh, max_len, hs) each

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`q, k, v` `(1, nh, n, hs)` for the step's n tokens → attention output `(1, nh, n, hs)`."""
        lay = self.layout
        self.k[lay.slots, :, lay.positions] = k[0].transpose(0, 1)  # (n, nh, hs) into their slots
        self.v[lay.slots, :, lay.positions] = v[0].transpose(0, 1)
        if lay.one_per_slot:
            S = int(lay.positions.max()) + 1
            visible = torch.arange(S, device=q.device)[None, :] <= lay.positions[:, None]  # (n, S)
            keys, values = self.k[lay.slots, :, :S], self.v[lay.slots, :, :S]  # (n, nh, S, hs)
            y = F.scaled_dot_product_attention(
                q[0].transpose(0, 1)[:, :, None], keys, values, attn_mask=visible[:, None, None]
            )
            return y[:, :, 0].transpose(0, 1)[None]  # (n, nh, 1, hs) -> (1, nh, n, hs)
        out = []
        for (a, b), slot, start in zip(lay.runs, lay.run_slots, lay.starts):
            S = start + b - a
            keys, values = self.k[slot : slot + 1, :, :S], self.v[slot : slot + 1, :, :S]  # (1, nh, S, hs)
            if b - a == 1:  # one query sees every key (is_causal would align it to key 0)
                out.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, values))
            elif b - a == S:  # a whole prompt from position 0
                out.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, values, is_causal=True))
            else:  # a chunk after a cached prefix: the mask is offset by the prefix length
                mask = causal_mask(b - a, S, q.device)
                out.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, values, attn_mask=mask))
        return torch.cat(out, dim=2)


def causal_mask(T: int, S: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, S) boolean mask, True where query i (at absolute position S - T + i) may see key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def check_step(
    config: GPT2Config,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cache: KVCache,
    logits_from: int,
) -> int:
    """Validate `GPT2.step`'s arguments, once, before any of them reaches torch indexing or the C engine."""
    for name, t in (("tokens", tokens), ("positions", positions), ("slots", slots)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be a 1-D integer tensor")
    n = tokens.shape[0]
    if n == 0 or positions.shape[0] != n or slots.shape[0] != n:
        raise ValueError(
            f"tokens, positions and slots must have the same length >= 1, got {n}, "
            f"{positions.shape[0]}, {slots.shape[0]}"
        )
    if isinstance(logits_from, bool) or not isinstance(logits_from, int) or not 0 <= logits_from <= n:
        raise ValueError(f"logits_from must be in 0..{n}, got {logits_from!r}")
    if (
        not isinstance(cache, KVCache)
        or cache.k.shape[0] != config.n_layer
        or cache.k.shape[2] != config.n_head
    ):
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
