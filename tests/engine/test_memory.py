"""Weights in huge pages (gpt2/engine/memory.py): same values and logits, 2 MB-aligned, advised."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from helpers.models import TINY, random_model

from gpt2 import load_model, save_model
from gpt2.engine import memory

needs_thp = pytest.mark.skipif(not memory.available(), reason="no transparent huge pages on this system")


def mapping_flags(ptr: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds address `ptr` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    return set()


@needs_thp
def test_loaded_weights_are_placed_in_advised_huge_pages(tmp_path):
    model = random_model(TINY, seed=4)
    path = tmp_path / "tiny.safetensors"
    save_model(model, path, name="tiny")
    for precision in ("fp32", "int8"):
        loaded = load_model(path, precision=precision)
        sizes = {t: t.numel() * t.element_size() for t in (*loaded.parameters(), *loaded.buffers())}
        big = [t for t, n in sizes.items() if n >= 1 << 20]
        assert big and loaded.runtime.huge_page_bytes == sum(sizes[t] for t in big)
        for t in big:
            assert t.data_ptr() % memory.HUGE_PAGE == 0 and "hg" in mapping_flags(t.data_ptr())
        # small tensors are left where they were: not in a mapping of ours (whether the heap around them is
        # advised is up to whatever else ran in this process: torch, llama.cpp and glibc share it)
        small = loaded.h[0].ln_1.weight
        assert small.data_ptr() not in memory._HUGE and small.data_ptr() % memory.HUGE_PAGE != 0
    idx = torch.randint(0, TINY.n_vocab, (1, 12))
    gc.collect()  # the mappings live as long as the tensors, not the objects that made them
    with torch.no_grad():
        assert torch.equal(load_model(path, engine=False)(idx), model(idx))


def test_placing_keeps_values_and_tying():
    model = random_model(TINY, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tied = model.wte.weight
    moved = memory.place(model)
    assert model.wte.weight is tied  # the same parameter, new memory
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert moved == (tied.numel() * 4 if memory.available() else 0)  # only wte is >= 1 MB in TINY


def test_nothing_moves_where_thp_is_off(monkeypatch):
    monkeypatch.setattr(memory, "thp_mode", lambda: "never")
    model = random_model(TINY, seed=6)
    ptr = model.wte.weight.data_ptr()
    assert memory.place(model) == 0 and model.wte.weight.data_ptr() == ptr
