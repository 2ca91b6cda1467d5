"""`gpt2.serving.registry`: models loaded in the background with progress anyone can watch, one load shared
by everyone waiting, failures reported to all and retried, and memory: the least recently used idle model
unloaded (and really freed) to make room, a busy one kept, and a clear refusal when nothing helps."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from helpers.models import TINY, random_model

from gpt2 import save_model
from gpt2.serving import LoadError, MemoryBudget, ModelRegistry, Server
from gpt2.serving import registry as registry_module
from gpt2.serving.budget import kv_bytes, weight_bytes

NAMES = ("a", "b", "c")
NEED = weight_bytes(TINY, "fp32") + kv_bytes(TINY, slots=1, positions=64)


@pytest.fixture
def folder(tmp_path):
    for seed, name in enumerate(NAMES):
        save_model(random_model(TINY, seed=seed), tmp_path / f"gpt2-{name}.safetensors", name=name)
    return tmp_path


def registry_for(folder, capacity: float = 100.0) -> ModelRegistry:
    """A registry whose process has room for `capacity` models' needs: its free memory is that, less the
    weights of the models loaded now (as the kernel would count it)."""

    def free() -> int:
        return int(capacity * NEED) - weight_bytes(TINY, "fp32") * sum(map(registry.is_loaded, NAMES))

    budget = MemoryBudget(free=free, reserve=0, slots=1, positions=64)
    registry = ModelRegistry.from_path(folder, precision="fp32", budget=budget)
    return registry


def test_a_load_runs_in_the_background_and_reports_its_progress(folder):
    registry = registry_for(folder)
    state = registry.load("b")
    assert state is not None and registry.load("b") is state  # joined, not started twice
    assert state.wait(60) and state.error is None and state.stage == "ready"
    assert state.done == state.total > 0  # bytes of the file read, of all of them
    assert state.line() == "b · 3M · fp32 is ready" and registry.is_loaded("b")
    assert registry.load("b") is None and registry.get("b") is registry.get("b")
    assert registry.label("b") == "b · 3M · fp32"


def test_everyone_waiting_shares_one_load(folder, monkeypatch):
    registry, calls, release = registry_for(folder), [], threading.Event()
    real = registry_module.load_model

    def gated(*args, progress, **kwargs):  # the real load, held after its first tensor until released
        calls.append(args)

        def report(done, total):
            progress(done, total)
            release.wait(60)

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(registry_module, "load_model", gated)
    got = []
    waiters = [threading.Thread(target=lambda: got.append(registry.get("a"))) for _ in range(3)]
    for w in waiters:
        w.start()
    state = registry.load("a")
    while state.stage != "load" or not state.done:
        assert not state.wait(0.01)
    assert state.line().startswith("loading a · 3M · fp32: ") and state.line().endswith(" MB")
    release.set()
    for w in waiters:
        w.join(60)
    assert len(calls) == 1 and len(got) == 3 and got[0] is got[1] is got[2]


def test_a_failed_load_is_reported_to_everyone_and_tried_again(folder):
    registry = registry_for(folder)
    path = folder / "gpt2-c.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated after it was listed
    errors = []

    def ask():
        try:
            registry.get("c")
        except LoadError as exc:
            errors.append(str(exc))

    waiters = [threading.Thread(target=ask) for _ in range(2)]
    for w in waiters:
        w.start()
    for w in waiters:
        w.join(60)
    assert len(errors) == 2 and all("gpt2-c.safetensors" in e and "\n" not in e for e in errors)
    assert not registry.is_loaded("c")
    path.write_bytes(good)
    assert registry.get("c").runtime.name == "c"  # the next request loads it


@pytest.mark.slow
def test_the_least_recently_used_idle_model_is_unloaded_and_freed(folder):
    registry = registry_for(folder, capacity=2.5)
    server = Server(registry, max_batch=1)  # its hook drops what it keeps of an unloaded model
    assert registry.budget.slots == 1
    a = weakref.ref(registry.get("a"))
    registry.get("b")
    registry.get("a")  # now b is the least recently used
    registry.get("c")
    assert [registry.is_loaded(n) for n in NAMES] == [True, False, True]
    registry.get("b")  # a was used before c: a goes
    assert [registry.is_loaded(n) for n in NAMES] == [False, True, True]
    gc.collect()
    assert a() is None  # unloaded means freed, engine and all
    server.close()


def test_a_model_in_use_is_kept_and_a_model_that_cannot_fit_is_refused(folder):
    registry = registry_for(folder, capacity=2.5)
    with registry.using("a"), registry.using("b"):
        with pytest.raises(LoadError) as info:
            registry.get("c")
        message = str(info.value)
        assert message.startswith("not enough memory to load c · 3M · fp32 (needs ~13 MB: 13 MB of weights, ")
        assert "a KV cache for 1 text of 64 tokens; " in message
        assert "try again when a and b are idle" in message
        assert registry.is_loaded("a") and registry.is_loaded("b") and not registry.is_loaded("c")
    with registry.using("a"):
        registry.get("c")  # b is idle now: it makes room
        assert [registry.is_loaded(n) for n in NAMES] == [True, False, True]
