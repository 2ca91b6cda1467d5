"""A safetensors file read one tensor at a time, into fresh memory, never mapped.

`safetensors.safe_open` maps the whole file, and every page a tensor is read through stays resident (as
file-backed memory) until the file is closed: loading GPT-2 XL's 6.2 GB fp32 file that way held the whole
file in RSS next to the packed model made from it. Here each tensor is read with `readinto` straight into
a tensor of its own, and the page cache is the kernel's business, not the process's. safetensors still
checks the header (names, dtypes, shapes, offsets inside the file) before anything is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
}
Progress = Callable[[int, int], None]  # (bytes read so far, bytes of all tensors)
Allocate = Callable[[tuple, torch.dtype], torch.Tensor]  # (shape, dtype) -> uninitialised tensor


class TensorFile:
    """The tensors of one safetensors file: names, shapes and dtypes at once, data on `read(name)`."""

    def __init__(self, path: str | os.PathLike[str], progress: Progress | None = None) -> None:
        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:  # checks the header against the file
                self.metadata: dict[str, str] = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{self.path} is not a readable safetensors file: {exc}") from exc
        with open(self.path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        self._data = 8 + size
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise ValueError(
                    f"{self.path}: tensor {name} has dtype {info['dtype']}, which GPT-2 never uses"
                )
            start, end = info["data_offsets"]
            self.entries[name] = (DTYPES[info["dtype"]], tuple(info["shape"]), start, end)
        self.total_bytes = sum(end - start for _, _, start, end in self.entries.values())
        self.bytes_read = 0
        self.progress = progress

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][0]

    def read(self, name: str, into: Allocate | None = None) -> torch.Tensor:
        """Tensor `name`, read from disk into memory of its own (`into(shape, dtype)` allocates it)."""
        dtype, shape, start, end = self.entries[name]
        out = torch.empty(shape, dtype=dtype) if into is None else into(shape, dtype)
        view = memoryview(out.view(torch.uint8).reshape(-1).numpy()) if out.numel() else memoryview(b"")
        with open(self.path, "rb") as f:
            f.seek(self._data + start)
            if f.readinto(view) != end - start:
                raise ValueError(f"{self.path}: tensor {name} is cut short (a truncated file?)")
        self.bytes_read += end - start
        if self.progress is not None:
            self.progress(self.bytes_read, self.total_bytes)
        return out
