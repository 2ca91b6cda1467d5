"""A model's large tensors in transparent huge pages (Linux), so decoding streams them with fewer TLB misses.

Decoding one token reads every weight once: 500 MB for 124M in fp32, i.e. ~120,000 pages of 4 KB, each a
page-table walk, and the CPU's prefetchers stop at every 4 KB boundary. In 2 MB pages the same stream
crosses 250 boundaries. Measured on the 2-core Zen 3 (one native decode step, 124M shapes, the same
weights in 4 KB and in 2 MB pages, steps alternating in one process): fp32 27.2 -> 25.7 ms, bf16 17.7 ->
15.7 ms, int8 9.2 -> 8.4 ms.

Most Linux systems hand out huge pages only where a program asks (`transparent_hugepage/enabled` =
`madvise`), and neither torch nor glibc asks. `place(model)` copies each CPU tensor of at least 1 MB into
its own 2 MB-aligned anonymous mapping advised `MADV_HUGEPAGE` and points the parameter or buffer at it (one
tensor at a time, so the peak is the model plus its largest tensor). The kernel still decides whether it has
huge pages to give; where THP is off (`never`), or on other systems, nothing is moved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import weakref
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
MIN_BYTES = 1 << 20  # smaller tensors (LayerNorms, biases, scales) are read once per layer from cache
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The kernel's THP policy ("always", "madvise" or "never"); None where there is no such setting."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


def available() -> bool:
    return hasattr(mmap, "MADV_HUGEPAGE") and thp_mode() in ("always", "madvise")


_HUGE: set[int] = set()  # data pointers of the live buffers `empty` made


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; from 1 MB up (where THP is available) in a fresh 2 MB-aligned anonymous
    mapping advised MADV_HUGEPAGE before its first touch, so its page faults can be served with huge pages.
    The tensor keeps the mapping alive, and freeing the tensor gives the memory straight back."""
    n = torch.Size(shape).numel() * dtype.itemsize
    if n < MIN_BYTES or not available():
        return torch.empty(shape, dtype=dtype)
    span = (n + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    buf = mmap.mmap(-1, span + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(buf, dtype=torch.uint8)
    start = (-raw.data_ptr()) % HUGE_PAGE  # a multiple of 4 KB: mappings start on a page
    buf.madvise(mmap.MADV_HUGEPAGE, start, span)
    out = raw[start : start + n].view(dtype).view(shape)
    _HUGE.add(out.data_ptr())
    weakref.finalize(buf, _HUGE.discard, out.data_ptr())
    return out


def place(model: torch.nn.Module) -> int:
    """Move `model`'s CPU tensors of at least 1 MB into huge-page-advised memory (in place, one at a time,
    those already there left alone); returns the bytes in such memory (0 where THP is unavailable).
    Values, shapes, dtypes and tying are unchanged."""
    if not available():
        return 0
    moved = 0
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:  # each tensor once (tied weights included)
            n = t.numel() * t.element_size()
            if t.device.type != "cpu" or n < MIN_BYTES or not t.is_contiguous():
                continue
            if t.data_ptr() not in _HUGE:
                t.data = empty(tuple(t.shape), t.dtype).copy_(t)
            moved += n
    return moved


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; elsewhere nothing).

    Loading frees one large temporary after another (each tensor as read, before packing or placing it),
    and glibc keeps freed blocks below its adaptive mmap threshold (up to 32 MB) in the heap: 130 MB of a
    124M int8 load stayed resident as free heap until trimmed."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)
