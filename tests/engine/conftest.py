"""Fixtures of the engine's tests."""

from __future__ import annotations

import pytest
from helpers.engine import with_engine

from gpt2 import GPT2


@pytest.fixture(scope="module")
def wide_in(wide_model):
    """`with_engine(wide_model, precision)`, packed once per precision for a module's tests (which only
    read the model)."""
    made: dict[str, GPT2] = {}

    def get(precision: str = "fp32") -> GPT2:
        if precision not in made:
            made[precision] = with_engine(wide_model, precision)
        return made[precision]

    return get
