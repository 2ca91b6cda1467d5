"""One generation request, checked once: the same request type and the same limits for `generate`, the
batching scheduler and the app.

`Request.create` turns what a caller sent (sliders send 40.0 for 40, clients send seeds as strings) into
a frozen `Request`, or raises ValueError with a message meant for the person who sent it. The arguments,
their defaults and their checks are the declared parameters (`gpt2.decoding.params`); the bounds are
`LIBRARY` (what the model can do) or, on a public server, `SERVING` (which the app's sliders read too,
so the UI and the API cannot disagree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .params import LIBRARY, MAX_SEED, REQUEST, SAMPLES, Limits, params, takes
from .sampling import SamplingParams

SAMPLING = tuple(f.name for f in fields(SamplingParams))  # the parameters that say how a token is drawn


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
    @takes(REQUEST, SAMPLES)
    def create(cls, prompt: object, *, limits: Limits = LIBRARY, **options: object) -> Request:
        """Check every argument against `limits`; ValueError says which one and why."""
        values = {"prompt": prompt, **options}
        checked = {p.name: p.check(p, values[p.name], limits) for p in params(REQUEST, SAMPLES)}
        # The seed actually used is reported back, so any result can be reproduced.
        if checked["seed"] + checked["n"] - 1 > MAX_SEED:
            raise ValueError(f"seed + number of samples - 1 must be at most {MAX_SEED}")
        sampling = SamplingParams(**{name: checked.pop(name) for name in SAMPLING})
        return cls(sampling=sampling, **checked)

    def values(self) -> dict[str, object]:
        """The checked value of each request parameter, by its declared name (sampling ones included)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sampling"} | asdict(
            self.sampling
        )
