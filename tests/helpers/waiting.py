"""Waiting for something that should happen soon, in tests that drive threads or servers."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT = 30.0  # generous upper bound for anything that should happen "soon"; never a speed assertion


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, poll: float = 0.01) -> bool:
    """True as soon as `predicate()` is true; False if it is still false after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
