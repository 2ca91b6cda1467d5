"""Thread policy between engine calls: PyTorch's own CPU ops on the calling thread alone.

The engine runs a step on its own threads (decode.c says why not OpenMP). Between two decode steps the
decoding code samples a token with a few PyTorch ops over ~50k logits, microseconds of work on one
thread; but PyTorch splits any op over 32k values across its OpenMP threads, and libgomp's threads then
spin for milliseconds (up to 300,000 pauses) waiting for more, on the cores the engine's threads need for
the next step: sampling on two threads made the main thread decode at 23 tok/s instead of 31-33.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

import torch

_openmp_lib: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (libgomp in Linux wheels), found among this process's mappings."""
    global _openmp_lib
    if _openmp_lib is False:
        _openmp_lib = None
        try:
            mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()}
        except OSError:
            mapped = set()
        for path in sorted(p for p in mapped if Path(p).name.startswith(("libgomp", "libiomp", "libomp"))):
            try:
                lib = ctypes.CDLL(path)  # already loaded: the handle torch's ops use
                lib.omp_get_max_threads.restype = ctypes.c_int
                lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            except (OSError, AttributeError):
                continue
            _openmp_lib = lib
            break
    return _openmp_lib


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """PyTorch CPU ops inside run on the calling thread alone (OpenMP's thread count is per thread), for
    the work between two decode steps (see the module docstring)."""
    omp = _openmp()
    if omp is None:
        yield
        return
    torch.get_num_threads()  # torch sets a thread's OpenMP count on its first use: let it, before we do
    before = omp.omp_get_max_threads()
    omp.omp_set_num_threads(1)
    try:
        yield
    finally:
        omp.omp_set_num_threads(before)
