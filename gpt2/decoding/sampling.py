"""Turning logits into the next token: repetition penalty, temperature, top-k, top-p, min-p, seeded draws.

Order (as in OpenAI's and Hugging Face's samplers, min-p last): penalty → temperature → top-k → top-p →
min-p → draw.
Randomness only ever comes from a per-request `torch.Generator`, never torch's global RNG, so two
concurrent requests with the same seed each get exactly the text they would get alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .params import BY_NAME, LIBRARY

_SMALL_SUPPORT = 2048  # at most this many kept tokens: sample from their top-k slice
_NUCLEUS_PROBE = 1024  # top-p looks for the nucleus among this many most likely tokens first


@dataclass(frozen=True)
class Kept:
    """The tokens one draw can pick (`ids`, token-id order) and their processed logits (`values`): the
    distribution actually sampled from, without a vocabulary-sized tensor. `processed()` spells it out
    over the whole vocabulary (-inf elsewhere) for whoever inspects it."""

    values: torch.Tensor  # (n,) logits after penalty / temperature / top-k / top-p / min-p
    ids: torch.Tensor  # (n,) ascending token ids
    n_vocab: int

    def processed(self) -> torch.Tensor:
        out = torch.full((self.n_vocab,), float("-inf"), dtype=self.values.dtype, device=self.values.device)
        return out.index_put_((self.ids,), self.values)


@dataclass(frozen=True)
class SamplingParams:
    """How one token is drawn. Each field is a declared parameter (`gpt2.decoding.params`): its default and
    its check (against the library's bounds) come from there."""

    temperature: float = BY_NAME["temperature"].default  # 0 = greedy
    top_k: int = BY_NAME["top_k"].default  # 0 = off
    top_p: float = BY_NAME["top_p"].default  # 1.0 = off
    repetition_penalty: float = BY_NAME["repetition_penalty"].default  # 1.0 = off
    min_p: float = BY_NAME["min_p"].default  # 0 = off

    def __post_init__(self) -> None:
        for f in fields(self):  # checked and normalised (40.0 → 40); frozen: through object.__setattr__
            p = BY_NAME[f.name]
            object.__setattr__(self, f.name, p.check(p, getattr(self, f.name), LIBRARY))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def process(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `(B, V)` of the distribution actually sampled from (-inf outside the kept set).

        `seen` is a boolean `(B, V)` (or `(V,)`) mask of tokens already in the sequence, for the
        repetition penalty (CTRL's rule: positive logits divided by the penalty, negative multiplied).
        For greedy decoding the result keeps only the argmax.
        """
        x = self._penalised(logits, seen)
        if self.greedy:
            keep = torch.zeros_like(x, dtype=torch.bool)
            keep.scatter_(-1, x.argmax(dim=-1, keepdim=True), True)
            return x.masked_fill(~keep, float("-inf"))
        if 0 < self.top_k < x.shape[-1]:  # (before the temperature, which keeps the order)
            kth = torch.topk(x, self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))  # a logit tying the k-th stays
        x = x / self.temperature
        if self.top_p < 1.0:
            x = _top_p(x, self.top_p)
        if self.min_p > 0.0:
            x = x.masked_fill(x < self._min_p_floor(x.max(dim=-1, keepdim=True).values), float("-inf"))
        return x

    def shortlist(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> list[Kept | None]:
        """For each row of `logits` `(B, V)`, the `Kept` tokens of `process(logits, seen)` — found with
        one `topk` over the vocabulary and a few operations on the k values, never a vocabulary-sized
        intermediate (the per-token cost of sampling was a dozen passes over 50257 logits a row).

        Greedy keeps the argmax. With top-k, the k largest penalised logits are the kept set unless a
        logit outside them ties the k-th (then that row gets None, and `process` is the way); top-p then
        keeps the prefix of those k, in descending order, that first reaches p, and min-p the prefix within
        log(min_p) of the first. Every row's result is
        computed from that row alone (the batched `topk` selects exactly), so a row gets the same tokens
        whatever else is in the batch. None for every row when top-k is off (top-p alone: `process`).
        """
        x = self._penalised(logits, seen)
        V = x.shape[-1]
        if self.greedy:
            ids = x.argmax(dim=-1, keepdim=True)  # (B, 1)
            return [Kept(v, i, V) for v, i in zip(x.gather(-1, ids), ids)]
        if not 0 < self.top_k < V:
            return [None] * x.shape[0]
        values, idx = torch.topk(x, self.top_k, dim=-1)  # (B, k), descending
        exact = ((x >= values[:, -1:]).sum(dim=-1) == self.top_k).tolist()
        values = values / self.temperature
        out: list[Kept | None] = []
        for row_values, row_idx, ok in zip(values, idx, exact):
            if not ok:
                out.append(None)
                continue
            if self.top_p < 1.0:
                probs = torch.softmax(row_values, dim=-1)
                keep = (probs.cumsum(dim=-1) - probs) < self.top_p  # the tokens before it do not reach p
                keep[0] = True
                n = int(keep.sum())
                row_values, row_idx = row_values[:n], row_idx[:n]
            if self.min_p > 0.0:  # (descending: the kept tokens are a prefix)
                n = int((row_values >= self._min_p_floor(row_values[0])).sum())
                row_values, row_idx = row_values[:n], row_idx[:n]
            ids, order = row_idx.sort()
            out.append(Kept(row_values[order], ids, V))
        return out

    def _min_p_floor(self, top: torch.Tensor) -> torch.Tensor:
        """Min-p keeps the tokens with probability >= min_p × the largest, that is logits >= the largest
        + log(min_p): compared in logits, so both paths compare the very same numbers (a softmax over the
        vocabulary and one over the shortlist would round differently)."""
        return top + math.log(self.min_p)

    def draw(self, kept: Kept, generator: torch.Generator | None) -> int:
        """One token from a row's `Kept` set (the same draw `choose` makes from its candidates)."""
        if self.greedy:
            return int(kept.ids[0])
        pick = torch.multinomial(torch.softmax(kept.values[None], dim=-1), 1, generator=generator)
        return int(kept.ids[pick[0, 0]])

    def _penalised(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        x = logits.float()
        if self.repetition_penalty != 1.0 and seen is not None:
            penalised = torch.where(x > 0, x / self.repetition_penalty, x * self.repetition_penalty)
            x = torch.where(seen, penalised, x)
        return x

    def candidates(self, processed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The kept tokens of each row as `(logits, token ids)`, both `(B, n)`, in token-id order; None
        when more than a few thousand are kept (then `choose` draws over the whole vocabulary).

        Token-id order, not probability order: a last-bit difference in the logits (a batched matmul
        rounds differently) can then only move a draw that lands right on a boundary, instead of
        swapping two near-equal candidates under the same random number. Rows that keep fewer than
        `n` tokens carry -inf entries (probability 0).
        """
        n_kept = int(torch.isfinite(processed).sum(dim=-1).max())
        if n_kept > _SMALL_SUPPORT:
            return None
        values, idx = processed.topk(n_kept, dim=-1)  # (B, n)
        idx, order = idx.sort(dim=-1)
        return values.gather(-1, order), idx

    def choose(
        self,
        processed: torch.Tensor,
        generator: torch.Generator | None,
        candidates: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Draw one token per row `(B,)` from processed logits (`candidates`: precomputed for them)."""
        if self.greedy:
            return processed.argmax(dim=-1)
        # Draw among the kept tokens only: after top-k/top-p they are usually a few dozen of 50257, and
        # a draw over 50257 probabilities costs ~1 ms a row — more than a batched decode step's share.
        # Same distribution (the dropped tokens have probability 0), one draw per row.
        if candidates is None:
            candidates = self.candidates(processed)
        if candidates is not None:
            values, idx = candidates
            pick = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)  # (B, 1)
            return idx.gather(-1, pick).squeeze(-1)
        probs = torch.softmax(processed, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prepare_sampling(
    params: list[SamplingParams], seen: list[torch.Tensor], rows: list[torch.Tensor]
) -> list[Kept | None]:
    """Each row's `Kept` tokens, the rows that share sampling settings shortlisted in one batched call
    (one `topk` for all of them). `shortlist` computes every row from that row alone, so a row gets
    exactly what it would get by itself. None where the sequence samples alone (its whole-vocabulary path).
    """
    prepared: list[Kept | None] = [None] * len(rows)
    groups: dict[SamplingParams, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p, []).append(i)
    for p, members in groups.items():
        penalised = p.repetition_penalty != 1.0
        try:
            kept = p.shortlist(
                torch.stack([rows[i] for i in members]),
                torch.stack([seen[i] for i in members]) if penalised else None,
            )
        except Exception:  # leave this group to the per-row path, which fails rows one by one
            continue
        for i, row_kept in zip(members, kept):
            prepared[i] = row_kept
    return prepared


def _top_p(x: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probabilities add up to at least p."""
    probs = torch.softmax(x, dim=-1)
    # The nucleus is almost always within the few hundred most likely tokens: look there first (a
    # partial top-k), and sort the whole vocabulary only for a row whose nucleus is wider.
    k = min(x.shape[-1], _NUCLEUS_PROBE)
    top, idx = probs.topk(k, dim=-1)  # (B, k), descending
    if k < x.shape[-1] and not bool((top.sum(dim=-1) >= p).all()):
        top, idx = torch.sort(probs, dim=-1, descending=True)
    # A token is dropped when the tokens before it already reach p; the top token always stays.
    keep_sorted = (top.cumsum(dim=-1) - top) < p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(x, dtype=torch.bool).scatter(-1, idx, keep_sorted)
    return x.masked_fill(~keep, float("-inf"))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
