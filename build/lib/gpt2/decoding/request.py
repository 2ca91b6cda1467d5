"""One generation request, checked once: the same request type and the same limits for `generate`, the
batching scheduler and the app.

`Request.create` turns what a caller sent (sliders send 40.0 for 40, clients send seeds as strings) into
a frozen `Request`, or raises ValueError with a message meant for the person who sent it. `Limits` is the
one table of bounds: the library allows what the model can do (`LIBRARY`); a public server narrows it
(`SERVING`, which the app's sliders read too, so the UI and the API cannot disagree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

from .sampling import MAX_REPETITION_PENALTY, MAX_SEED, MAX_TEMPERATURE, SamplingParams, resolve_seed

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class Limits:
    """Inclusive bounds for each argument (`top_p` must also be > 0; `top_k` 0 means off)."""

    max_new_tokens: tuple[int, int] = (1, 8192)
    temperature: tuple[float, float] = (0.0, MAX_TEMPERATURE)
    top_k: tuple[int, int] = (0, 50257)
    top_p: tuple[float, float] = (0.0, 1.0)
    repetition_penalty: tuple[float, float] = (1.0, MAX_REPETITION_PENALTY)
    n: tuple[int, int] = (1, 4)  # samples decoded side by side from one prompt
    max_prompt_chars: int = 1_000_000

    def bounds(self, name: str) -> tuple[float, float]:
        return getattr(self, name)


LIBRARY = Limits()
SERVING = Limits(
    max_new_tokens=(1, 1024),
    temperature=(0.0, 2.0),
    top_k=(0, 200),
    top_p=(0.05, 1.0),
    repetition_penalty=(1.0, 2.0),
    max_prompt_chars=20_000,  # ~5k tokens; the model sees at most the last 1024 of them anyway
)
INTEGER_ARGS = ("max_new_tokens", "top_k", "n")


def check_number(name: str, value: object, limits: Limits = LIBRARY) -> float | int:
    """`value` as a number within `limits` (an int for the integer arguments; 40.0 is accepted as 40)."""
    # bool is an int subclass; "True" as a temperature is a client bug, not a number.
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    lo, hi = limits.bounds(name)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (JSON allows 10**400)
        raise ValueError(
            f"{name} must be between {lo:g} and {hi:g}, got a {len(str(value))}-digit number"
        ) from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    if not lo <= number <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {number:g}")
    if name in INTEGER_ARGS:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {number:g}")
        return int(number)
    return number


def normalize_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """Stop strings as a tuple (a single string is one stop string; empty ones are dropped)."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    stop = [s for s in stop if s]
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    if any(len(s) > MAX_STOP_LENGTH for s in stop):
        raise ValueError(f"each stop string must be at most {MAX_STOP_LENGTH} characters")
    return tuple(stop)


@dataclass(frozen=True)
class Request:
    """A checked request: prompt text, how many tokens, how to sample, the seed actually used, where to
    stop, and how many samples (sample i draws with seed + i, so it is exactly what a request with that
    seed gives on its own)."""

    prompt: str
    max_new_tokens: int
    sampling: SamplingParams
    seed: int
    stop: tuple[str, ...] = ()
    n: int = 1

    @classmethod
    def create(
        cls,
        prompt: object,
        *,
        max_new_tokens: object = 50,
        temperature: object = 1.0,
        top_k: object = 0,
        top_p: object = 1.0,
        repetition_penalty: object = 1.0,
        seed: object = None,
        stop: object = None,
        n: object = 1,
        limits: Limits = LIBRARY,
    ) -> Request:
        """Check every argument against `limits`; ValueError says which one and why."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > limits.max_prompt_chars:
            raise ValueError(
                f"prompt is too long: {len(prompt):,} characters (at most {limits.max_prompt_chars:,}; "
                "GPT-2 sees only its last 1024 tokens)"
            )
        values = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            n=n,
        )
        checked = {name: check_number(name, value, limits) for name, value in values.items()}
        if checked["top_p"] <= 0:
            raise ValueError(
                f"top_p must be greater than 0 and at most 1 (1 = off), got {checked['top_p']:g}"
            )
        n_samples = int(checked["n"])
        seed_used = resolve_seed(seed)  # reported back, so any result can be reproduced
        if seed_used + n_samples - 1 > MAX_SEED:
            raise ValueError(f"seed + number of samples - 1 must be at most {MAX_SEED}")
        return cls(
            prompt=prompt,
            max_new_tokens=int(checked["max_new_tokens"]),
            sampling=SamplingParams(
                checked["temperature"], int(checked["top_k"]), checked["top_p"], checked["repetition_penalty"]
            ),
            seed=seed_used,
            stop=normalize_stop(stop),
            n=n_samples,
        )
