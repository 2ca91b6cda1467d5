"""One browser tab's view of its latest generation, kept in the tab's gr.State between updates.

Each sample's coloured tokens are rendered once, as they arrive, so an update costs only the new tokens;
and the token view can switch to another sample at any time, mid-stream too (the sample selector sets
`chosen` on this same object, which the running stream reads at its next update).
"""

from __future__ import annotations

from gpt2.serving import Progress

from . import render


class LiveView:
    def __init__(self, chosen: int = 0) -> None:
        self.chosen = chosen  # which sample the token view shows (0-based)
        self.spans: list[list[str]] = []  # per sample, one rendered span per generated token
        self.prompt_part = ""
        self.progress: Progress | None = None

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
