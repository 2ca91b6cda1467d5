"""One browser tab's view of its latest generation, kept in the tab's gr.State between updates.

Each sample's coloured tokens are rendered once, as they arrive, so an update costs only the new tokens;
and the token view can switch to another sample at any time, mid-stream too (the sample selector sets
`chosen` on this same object, which the running stream reads at its next update).

The token view's tokens are `ids()`: the prompt's, then the chosen sample's generated ones, in the order
the page shows them, so a tap on the i-th token is token i (the Inside view traces these very ids, not a
re-encoding of the text: BPE does not always give a generated sequence back). `branch` makes the prompt
that continues the text from one of a generated token's alternatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpt2.serving import Progress

from . import render


class LiveView:
    def __init__(self, chosen: int = 0) -> None:
        self.chosen = chosen  # which sample the token view shows (0-based)
        self.spans: list[list[str]] = []  # per sample, one rendered span per generated token
        self.prompt_part = ""
        self.progress: Progress | None = None
        self.overview_of: tuple | None = None  # (model, ids) whose overview the page shows

    def update(self, p: Progress) -> None:
        if not self.spans:
            self.spans = [[] for _ in range(p.request.n)]
            self.chosen = min(self.chosen, p.request.n - 1)
        for spans, tokens in zip(self.spans, p.tokens):
            spans.extend(render.token_span(t) for t in tokens[len(spans) :])
        if p.prompt is not None and not self.prompt_part:
            self.prompt_part = render.prompt_spans(p.prompt)
        self.progress = p

    def choose(self, sample: object) -> None:
        """Show sample `sample` (1-based, as the selector numbers them) if this generation has it."""
        if isinstance(sample, (int, float)) and 1 <= sample <= max(1, len(self.spans)):
            self.chosen = int(sample) - 1

    def tokens_html(self) -> str:
        return render.tokens_html(self.prompt_part, self.spans[self.chosen] if self.spans else [])

    def summary_html(self) -> str:
        return render.summary_html(self.progress, self.chosen)

    @property
    def model(self) -> str | None:
        return self.progress.model if self.progress is not None else None

    def ids(self) -> list[int]:
        """The token ids the token view shows: the prompt's, then the chosen sample's generated ones."""
        p = self.progress
        if p is None or p.prompt is None:  # (the prompt is scored with the first token)
            return []
        return [t.token for t in p.prompt.tokens] + [t.token for t in p.tokens[self.chosen]]

    def branch(
        self, position: object, token: object, token_bytes: Callable[[int], bytes]
    ) -> tuple[str, int, str]:
        """The prompt that continues the chosen sample from alternative `token` of its generated token at
        `position` (an index into `ids()`): the prompt as it was typed, the generated text before that
        token, then the alternative's text; the seed that sample was drawn with; and the text of the token
        the alternative replaces. ValueError if
        `position` is not a generated token or `token` is not one of the alternatives it lists."""
        p = self.progress
        n_prompt = len(p.prompt.tokens) if p is not None and p.prompt is not None else 0
        generated = p.tokens[self.chosen] if p is not None else []
        if type(position) is not int or not n_prompt <= position < n_prompt + len(generated):
            raise ValueError(f"token {str(position)[:20]} is not a generated token of this text")
        before, there = generated[: position - n_prompt], generated[position - n_prompt]
        if token not in [a.token for a in there.alternatives]:
            raise ValueError(f"{str(token)[:20]} is not one of the alternatives listed for token {position}")
        data = b"".join(token_bytes(t.token) for t in before) + token_bytes(token)
        # A token may hold part of a character: the text is cut at a token, as the page shows it.
        prompt = p.request.prompt + data.decode("utf-8", errors="replace")
        return prompt, p.request.seed + self.chosen, there.text


@dataclass(frozen=True)
class Snapshot:
    """What Back restores: the view of the generation a branch left, and the prompt and seed boxes."""

    view: LiveView
    prompt: str
    seed: str
