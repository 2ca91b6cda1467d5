"""Loading a model as the page sees it: the Generate handler streams the load's progress into the status
line until the model is ready, then generates; a failed load is one readable error and the next press
tries again; the selector shows labels and sends names."""

from __future__ import annotations

import threading

import gradio as gr
import pytest
from helpers.app_server import make_weights_dir
from helpers.models import TINY, random_model

import app
from gpt2 import save_model
from gpt2.serving import ModelRegistry
from gpt2.serving import registry as registry_module

INPUTS = dict(prompt="Every effort moves you", max_new_tokens=4, seed="3", n=1)


@pytest.fixture
def built(tmp_path, bpe_dir, monkeypatch):
    """The app over a folder of two models (neither loaded yet), polling loads every 10 ms."""
    folder = make_weights_dir(tmp_path / "weights", bpe_dir)
    save_model(random_model(TINY, seed=4), folder / "gpt2-later.safetensors", name="later")
    monkeypatch.setattr(app, "LOAD_POLL_S", 0.01)
    built = app.build_app(ModelRegistry.from_path(folder), yield_interval=0.0)
    yield built
    built.server.close()


def handler(built):
    return next(f.fn for f in built.blocks.fns.values() if f.name == "ui_generate")


def test_the_status_line_follows_the_load_then_the_text_streams(built, monkeypatch):
    release, real = threading.Event(), registry_module.load_model

    def held(*args, progress, **kwargs):  # the real load, held after its first tensor until released
        def report(done, total):
            progress(done, total)
            release.wait(60)

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(registry_module, "load_model", held)
    page = built.page
    updates = handler(built)(1, **{**INPUTS, "model": "later"})
    lines = []
    while not any(" MB" in line for line in lines):
        lines.append(next(updates)[page.status])
    assert all(line.startswith("⏳ ") for line in lines)
    assert lines[-1].startswith("⏳ loading later · 3M · fp32: ") and lines[-1].endswith(" / 13 MB")
    release.set()
    rest = list(updates)
    status = rest[-1][page.status]
    assert "later · 3M · fp32 on cpu" in status and "finished (length)" in status
    assert (
        rest[-1][page.text]["value"].startswith(INPUTS["prompt"])
        and rest[-1][page.text]["value"] != INPUTS["prompt"]
    )


def test_a_failed_load_is_one_error_and_the_next_press_tries_again(built):
    path = built.registry.sources["later"].origin
    good = path.read_bytes()
    path.write_bytes(good[:1000])
    with pytest.raises(gr.Error) as info:
        list(handler(built)(1, **{**INPUTS, "model": "later"}))
    assert info.value.title == "Model not loaded" and "gpt2-later.safetensors" in info.value.message
    path.write_bytes(good)
    final = list(handler(built)(1, **{**INPUTS, "model": "later"}))[-1]
    assert "finished (length)" in final[built.page.status]


def test_the_selector_shows_labels_and_sends_names(built):
    dropdown = built.page.inputs["model"]
    assert dropdown.choices == [("fixture · 46M · fp32", "fixture"), ("later · 3M · fp32", "later")]
    assert dropdown.value == "fixture"
