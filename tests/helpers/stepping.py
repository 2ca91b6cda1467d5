"""Prefill and decode as free functions over `GPT2.step` (what tests need; the library drives `step`
through `gpt2.decoding`). Positions are explicit: a cache does not know how far a slot is filled."""

from __future__ import annotations

import torch

from gpt2 import GPT2, KVCache


def prefill(model: GPT2, idx: torch.Tensor, cache: KVCache, start: int = 0) -> torch.Tensor:
    """Row b of `idx` `(B, T)` into slot b at positions start..; the logits of each row's last `(B, V)`."""
    B, T = idx.shape
    positions = torch.arange(start, start + T)
    out = [model.step(idx[b], positions, torch.full((T,), b), cache, logits_from=T - 1) for b in range(B)]
    return out[0] if B == 1 else torch.cat(out)  # (one row: no op a forked child could not run)


def decode_one(model: GPT2, token: torch.Tensor | int, cache: KVCache, position: int) -> torch.Tensor:
    """One token per row `(B,)` (or an int for one row), row b in slot b at `position`; logits `(B, V)`."""
    tokens = torch.tensor([token]) if isinstance(token, int) else token.reshape(-1)
    B = tokens.shape[0]
    return model.step(tokens, torch.full((B,), position), torch.arange(B), cache)


def decode_rows(model: GPT2, tokens, positions, cache: KVCache, slots) -> torch.Tensor:
    """One token for each of several slots at their own positions (a batched decode step)."""
    return model.step(tokens, positions, slots, cache)
