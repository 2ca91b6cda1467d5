"""`gpt2.serving.budget`: the estimate of what a model holds against real loaded models, the plan that
unloads least recently used idle models or refuses, and where the free memory is read from."""

from __future__ import annotations

import pytest
from helpers.models import random_model

from gpt2 import PRECISIONS, GPT2Config, KVCache, prepare
from gpt2.serving import budget
from gpt2.serving.budget import Held, MemoryBudget, Need, NotEnoughMemoryError, kv_bytes, weight_bytes

GB = 10**9
# Wide enough that int8's per-row scales (left out of the estimate) are as small a share as in GPT-2.
CONFIG = GPT2Config(n_vocab=4096, n_ctx=256, n_embd=256, n_head=4, n_layer=2)


def held_bytes(model) -> int:
    """What a loaded model's tensors occupy (a tied weight once)."""
    seen = {}
    for t in (*model.parameters(), *model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("tied", [True, False])
def test_the_estimate_is_what_a_loaded_model_holds(precision, tied):
    config = GPT2Config(**{**CONFIG.to_hparams(), "tied_head": tied})
    model = prepare(random_model(config), precision, engine=False)
    assert weight_bytes(config, precision) == pytest.approx(held_bytes(model), rel=0.01)


def test_the_kv_budget_is_what_the_cache_holds_at_that_length():
    cache = KVCache(CONFIG, batch_size=8, max_len=CONFIG.n_ctx)
    cache.ensure(192)
    assert kv_bytes(CONFIG, slots=8, positions=192) == 2 * cache.k.numel() * cache.k.element_size()
    assert kv_bytes(CONFIG, slots=1, positions=10**6) == kv_bytes(CONFIG, slots=1, positions=CONFIG.n_ctx)


def test_gpt2_xl_in_int8_needs_what_the_docs_say():
    """README: 1558M's fp32 file is 6.2 GB; int8 is a quarter of the blocks plus the fp32 embeddings."""
    xl = GPT2Config.from_name("1558M")
    assert weight_bytes(xl, "fp32") == pytest.approx(6.23 * GB, rel=0.01)
    assert 1.8 * GB < weight_bytes(xl, "int8") < 2.0 * GB


def budget_with(free_gb: float, reserve_gb: float = 0.0) -> MemoryBudget:
    return MemoryBudget(free=lambda: int(free_gb * GB), reserve=int(reserve_gb * GB))


NEED = Need(weights=2 * GB, kv=1 * GB)


def test_a_model_that_fits_unloads_nothing():
    held = [Held("a", Need(GB, GB), busy=False)]
    assert budget_with(5).plan("new", NEED, held) == []  # 5 free - a's KV room (1) = 4 >= 3


def test_least_recently_used_idle_models_are_unloaded_until_it_fits():
    held = [
        Held("old", Need(GB, 0), False),
        Held("busy", Need(4 * GB, 0), True),
        Held("mid", Need(GB, 0), False),
    ]
    assert budget_with(1.5).plan("new", NEED, held) == ["old", "mid"]  # 1.5 + 1 + 1 >= 3; busy stays
    assert budget_with(2.5).plan("new", NEED, held) == ["old"]
    assert budget_with(2.5, reserve_gb=0.6).plan("new", NEED, held) == ["old", "mid"]
    assert budget_with(3).plan("new", NEED, held, pending=int(0.5 * GB)) == ["old"]  # a load in flight


def test_a_model_that_cannot_fit_is_refused_and_nothing_is_unloaded():
    held = [Held("old", Need(GB, 0), False), Held("GPT-2 Medium", Need(4 * GB, 0), True)]
    with pytest.raises(NotEnoughMemoryError) as info:
        budget_with(0.5).plan("GPT-2 XL · 1558M · int4", NEED, held)
    message = str(info.value)
    assert message.startswith("not enough memory to load GPT-2 XL · 1558M · int4 (needs ~3.0 GB")
    assert "1.5 GB free" in message and "try again when GPT-2 Medium is idle" in message
    assert "\n" not in message


def test_no_reading_means_no_refusal():
    assert MemoryBudget(free=lambda: None).plan("new", Need(10**15, 0), []) == []


def test_free_memory_reads_cgroup_v2_and_meminfo(tmp_path, monkeypatch):
    group = tmp_path / "cgroup" / "app.slice"
    group.mkdir(parents=True)
    (tmp_path / "self-cgroup").write_text("0::/app.slice\n")
    (tmp_path / "meminfo").write_text("MemTotal: 16000000 kB\nMemAvailable:  9000000 kB\n")
    monkeypatch.setattr(budget, "CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(budget, "PROC_CGROUP", tmp_path / "self-cgroup")
    monkeypatch.setattr(budget, "MEMINFO", tmp_path / "meminfo")
    (group / "memory.max").write_text("max\n")  # no limit: what the kernel says is available
    (group / "memory.current").write_text("3000000000\n")
    assert budget.free_memory() == 9_000_000 * 1024
    (group / "memory.max").write_text("4000000000\n")  # a limit: its room, page cache counted as free
    (group / "memory.stat").write_text("anon 2500000000\ninactive_file 500000000\n")
    assert budget.free_memory() == 4_000_000_000 - 3_000_000_000 + 500_000_000
    (tmp_path / "meminfo").write_text("MemAvailable: 100000 kB\n")  # the smaller of the two
    assert budget.free_memory() == 100_000 * 1024
    monkeypatch.setattr(budget, "MEMINFO", tmp_path / "missing")
    monkeypatch.setattr(budget, "PROC_CGROUP", tmp_path / "missing")
    assert budget.free_memory() is None
