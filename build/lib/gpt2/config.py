"""Model hyper-parameters: OpenAI's four released sizes and anything an hparams.json describes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class GPT2Config:
    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    # OpenAI's checkpoints tie the output head to `wte`; fine-tuned ports (e.g. the book's GPTModel)
    # may bring a head of their own, which must then be kept.
    tied_head: bool = True

    def __post_init__(self) -> None:
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPT2Config.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str) -> GPT2Config:
        """One of OpenAI's released sizes: "124M", "355M", "774M" or "1558M"."""
        try:
            return cls(**SIZES[name])
        except KeyError:
            raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {', '.join(SIZES)}") from None

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> GPT2Config:
        """Build from an OpenAI `hparams.json` dict (extra keys are ignored, missing ones are an error)."""
        required = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
        missing = [k for k in required if k not in hparams]
        if missing:
            raise ValueError(f"hparams is missing {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in hparams.items() if k in known})

    def to_hparams(self) -> dict[str, Any]:
        return asdict(self)

    def num_parameters(self) -> int:
        """Parameter count as OpenAI counts it (tied head counted once)."""
        d, v, L = self.n_embd, self.n_vocab, self.n_layer
        per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
        head = 0 if self.tied_head else v * d
        return v * d + self.n_ctx * d + L * per_layer + 2 * d + head


SIZES: dict[str, dict[str, int]] = {
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=36),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48),
}
