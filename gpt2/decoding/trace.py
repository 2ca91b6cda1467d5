"""Looking inside one forward pass: where each head looked, what every layer would have predicted, and how
much each block wrote into the residual stream.

    trace(model, ids, position)    one token: every head's attention from it, the logit lens after the
                                   embeddings and after each block (top tokens and probabilities), and the
                                   size of each block's attention and MLP writes
    lens_grid(model, ids, last)    the classic logit-lens picture: for each of the last `last` tokens and
                                   every layer, that layer's top guess for the next token and its probability

Both run the specification's own forward pass (`GPT2.forward` with a probe) once over the tokens the
model sees, at whatever precision the model was loaded with, and change nothing in it. The logit lens
puts a residual stream through the final LayerNorm and the head, as the model does with its last one, so
the last row of the lens is exactly the model's next-token distribution.

Which tokens the model sees follows generation's rule: at most `n_ctx` tokens, the ones ending at the
token traced (what the model had when it predicted the next one; later tokens cannot change it: the
attention is causal). `offset` says where that window starts in `ids` (0 unless the text is longer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import GPT2, attention_weights
from ..tokenizer import Tokenizer
from .probs import token_text

LENS_TOP = 5  # tokens per layer in a trace's logit lens
GRID_LAST = 128  # tokens in the lens grid, at most


@dataclass
class Trace:
    """One token's view of the model (see the module docstring); tensors are fp32 on the CPU."""

    ids: list[int]  # the text's token ids (all of them)
    position: int  # the traced token, an index into `ids`
    offset: int  # the first token the model saw (attention index 0 is ids[offset])
    attention: torch.Tensor  # (n_layer, n_head, position - offset + 1): each row sums to 1
    lens_ids: torch.Tensor  # (n_layer + 1, LENS_TOP): after the embeddings, then after each block
    lens_probs: torch.Tensor  # (n_layer + 1, LENS_TOP)
    writes: torch.Tensor  # (n_layer, 2): L2 norms of what attention and the MLP added at `position`

    def to_dict(self, tokenizer: Tokenizer) -> dict:
        """The JSON `/inspect` returns (README.md, "Using the API")."""
        return {
            "tokens": [token_text(tokenizer, t) for t in self.ids],
            "position": self.position,
            "offset": self.offset,
            "attention": self.attention.tolist(),
            "lens": [
                [{"token": t, "text": token_text(tokenizer, t), "prob": p} for t, p in zip(ids, probs)]
                for ids, probs in zip(self.lens_ids.tolist(), self.lens_probs.tolist())
            ],
            "writes": [{"attn": a, "mlp": m} for a, m in self.writes.tolist()],
        }


@dataclass
class LensGrid:
    """The logit lens over the last tokens of a text: rows are layers (0 = the embeddings), columns tokens."""

    ids: list[int]
    start: int  # ids[start:] are the columns
    top_ids: torch.Tensor  # (n_layer + 1, columns): each layer's most likely next token
    top_probs: torch.Tensor  # (n_layer + 1, columns)

    def to_dict(self, tokenizer: Tokenizer) -> dict:
        return {
            "tokens": [token_text(tokenizer, t) for t in self.ids[self.start :]],
            "start": self.start,
            "top": [[token_text(tokenizer, t) for t in row] for row in self.top_ids.tolist()],
            "top_ids": self.top_ids.tolist(),
            "prob": self.top_probs.tolist(),
        }


class _Recorder:
    """A `gpt2.model.Probe` that keeps only what a trace needs: the residual stream at `columns`, and at
    `position` (if given) the attention weights and the blocks' writes."""

    def __init__(self, columns: slice, position: int | None) -> None:
        self.columns, self.position = columns, position
        self.streams: list[torch.Tensor] = []  # (columns, C) after the embeddings, then each block
        self.weights: list[torch.Tensor] = []  # (n_head, position + 1) per block
        self.writes: list[tuple[float, float]] = []

    def embedded(self, x: torch.Tensor) -> None:
        self.streams.append(x[0, self.columns].float())

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> None:
        p = self.position
        if p is not None:  # the one query row, over keys 0..p: (n_head, 1, p + 1)
            self.weights.append(attention_weights(q[0, :, p : p + 1], k[0, :, : p + 1], first=p)[:, 0])

    def block(self, attn: torch.Tensor, mlp: torch.Tensor, x: torch.Tensor) -> None:
        self.streams.append(x[0, self.columns].float())
        if self.position is not None:
            p = self.position
            self.writes.append((float(attn[0, p].float().norm()), float(mlp[0, p].float().norm())))


def _checked_ids(model: GPT2, ids: list[int]) -> list[int]:
    if not isinstance(ids, (list, tuple)) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in ids
    ):
        raise ValueError("token ids must be a list of integers")
    if not ids:
        raise ValueError("there are no tokens to trace (an empty text is <|endoftext|> alone)")
    bad = [t for t in ids if not 0 <= t < model.config.n_vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{model.config.n_vocab - 1})")
    return list(ids)


def _lens(model: GPT2, streams: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `top` next-token probabilities of each residual stream `(..., C)` through ln_f and the head."""
    logits = model.head(model.ln_f(streams)).float()  # (..., V)
    probs, ids = torch.softmax(logits, dim=-1).topk(top, dim=-1)
    return ids, probs


def _forward(model: GPT2, window: list[int], recorder: _Recorder) -> None:
    device = model.wte.weight.device
    with torch.no_grad():
        model(torch.tensor([window], device=device), probe=recorder)


def trace(model: GPT2, ids: list[int], position: int = -1) -> Trace:
    """What the model computed at token `position` of `ids` (-1: the last): see the module docstring.
    A position outside `ids` is a ValueError."""
    ids = _checked_ids(model, ids)
    if isinstance(position, bool) or not isinstance(position, int) or not -len(ids) <= position < len(ids):
        raise ValueError(
            f"position must be a token index from 0 to {len(ids) - 1} (or -1 for the last), got {position!r}"
        )
    position %= len(ids)
    offset = max(0, position + 1 - model.config.n_ctx)
    recorder = _Recorder(slice(position - offset, position - offset + 1), position - offset)
    _forward(model, ids[offset : position + 1], recorder)
    streams = torch.stack(recorder.streams)[:, 0]  # (n_layer + 1, C)
    with torch.no_grad():
        lens_ids, lens_probs = _lens(model, streams, LENS_TOP)
    return Trace(
        ids=ids,
        position=position,
        offset=offset,
        attention=torch.stack(recorder.weights).cpu(),
        lens_ids=lens_ids.cpu(),
        lens_probs=lens_probs.cpu(),
        writes=torch.tensor(recorder.writes),
    )


def lens_grid(model: GPT2, ids: list[int], last: int = GRID_LAST) -> LensGrid:
    """Each layer's top next-token guess for the last `last` tokens of `ids` (see the module docstring)."""
    ids = _checked_ids(model, ids)
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= model.config.n_ctx:
        raise ValueError(f"last must be between 1 and {model.config.n_ctx}, got {last!r}")
    offset = max(0, len(ids) - model.config.n_ctx)
    window = ids[offset:]
    columns = min(last, len(window))
    recorder = _Recorder(slice(len(window) - columns, len(window)), None)
    _forward(model, window, recorder)
    top_ids, top_probs = [], []
    with torch.no_grad():
        for stream in recorder.streams:  # one layer at a time: (columns, V) logits, not (layers, columns, V)
            i, p = _lens(model, stream, 1)
            top_ids.append(i[:, 0])
            top_probs.append(p[:, 0])
    return LensGrid(ids, len(ids) - columns, torch.stack(top_ids).cpu(), torch.stack(top_probs).cpu())
