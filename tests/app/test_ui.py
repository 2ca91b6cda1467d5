"""The UI's pure-Python parts: share links (query parsing with the API's own checks, link building),
the samples view, and the controls' ranges and defaults (the API's)."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import gradio as gr
import pytest
from helpers.app_server import MODEL_NAME, shared_weights_dir

import app
from gpt2.decoding.params import MAX_SEED, PARAMS, SERVING, Slider
from gpt2.serving import DEFAULTS, ModelRegistry, Progress, make_request
from ui import render, share
from ui.live import LiveView


@pytest.fixture(scope="module")
def registry(tmp_path_factory, bpe_dir):
    return ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))


def test_good_values_are_read_as_the_controls_take_them(registry):
    query = (
        "prompt=Hi%20%26%20bye%3D%F0%9F%99%82&max_new_tokens=5&temperature=0.5&top_k=40.0&top_p=0.9"
        f"&repetition_penalty=1.1&seed=%207&stop=%5Cn%5Cn,%20THE%20END&model={MODEL_NAME}&n=3"
    )
    shared = share.parse_query(query, registry)
    assert shared.notes == []
    assert shared.values == {
        "prompt": "Hi & bye=🙂",
        "max_new_tokens": 5,
        "temperature": 0.5,
        "top_k": 40,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
        "seed": "7",
        "stop": r"\n\n, THE END",
        "model": MODEL_NAME,
        "n": 3,
    }
    assert isinstance(shared.values["top_k"], int)


def test_missing_values_keep_their_defaults(registry):
    for query in ("", "prompt=Hello", "seed=&stop=&model=", "view=api&__theme=dark"):
        shared = share.parse_query(query, registry)
        assert shared.notes == [], query
        assert set(shared.values) <= {"prompt"}
    assert share.parse_query("prompt=", registry).values == {"prompt": ""}


BAD = [
    ("max_new_tokens", "0", "max_new_tokens must be between 1 and 1024"),
    ("max_new_tokens", "2000", "max_new_tokens must be between 1 and 1024"),
    ("max_new_tokens", "2.5", "max_new_tokens must be a whole number"),
    ("temperature", "hot", "temperature must be a number, got 'hot'"),
    ("temperature", "nan", "temperature must be a finite number"),
    ("top_k", "201", "top_k must be between 0 and 200"),
    ("top_p", "0", "top_p must be between 0.05 and 1"),
    ("repetition_penalty", "0.5", "repetition_penalty must be between 1 and 2"),
    ("seed", "-1", "seed must be between 0 and"),
    ("seed", "seven", "seed must be a whole number"),
    ("model", "../../etc/passwd", "unknown model"),
    ("n", "5", "n must be between 1 and 4"),
    ("prompt", "x" * (SERVING.max_prompt_chars + 1), "prompt is too long"),
]


@pytest.mark.parametrize("name,text,message", BAD, ids=[f"{n}={t[:8]}" for n, t, _ in BAD])
def test_a_bad_value_is_ignored_with_the_apis_own_message(registry, name, text, message):
    other = "max_new_tokens" if name == "top_k" else "top_k"
    shared = share.parse_query(urlencode([(name, text), (other, "7")]), registry)
    assert shared.values == {other: 7}  # the link's other values still apply
    assert len(shared.notes) == 1
    assert shared.notes[0].startswith(f"{name} ignored: ") and message in shared.notes[0]
    if text == "hot":
        return  # not a number at all: said before the API sees it
    # Otherwise the reason is the API's own, word for word (no second set of rules).
    value = float(text) if name in share.NUMBERS else text
    with pytest.raises(ValueError) as api_error:
        make_request(registry, text, seed=0) if name == "prompt" else make_request(
            registry, "", **{name: value}
        )
    assert shared.notes[0] == f"{name} ignored: {api_error.value}"


def test_other_bad_links(registry):
    shared = share.parse_query("seed=1&seed=2&colour=red&top_k=3", registry)
    assert shared.values == {"top_k": 3}
    assert any(n.startswith("seed ignored: given 2 times") for n in shared.notes)
    assert any("'colour' is not a parameter" in n for n in shared.notes)
    # Each fine alone, but the samples' seeds would run past the largest seed: n is dropped, seed kept.
    shared = share.parse_query(f"seed={MAX_SEED}&n=4", registry)
    assert shared.values == {"seed": str(MAX_SEED)}
    assert shared.notes and "seed + number of samples - 1" in shared.notes[0]


def test_links_round_trip(registry):
    values = {
        "prompt": "Line one\nline two & more = 100% 🙂",
        "max_new_tokens": 37.0,  # sliders send floats
        "temperature": 0.9500000000000001,
        "top_k": 12.0,
        "top_p": 0.35,
        "repetition_penalty": 1.25,
        "seed": "123456789012",
        "stop": r"\n\n, THE END",
        "model": MODEL_NAME,
        "n": 2.0,
    }
    link = share.link("http://host:7860/app/?old=1#top", values)
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://host:7860/app/" and not parts.fragment
    shared = share.parse_query(parts.query, registry)
    assert shared.notes == []
    assert shared.values == {**values, "max_new_tokens": 37, "temperature": 0.95, "top_k": 12, "n": 2}
    # Empty values are left out (the opener keeps the defaults: an empty seed box means a random seed).
    assert share.link_query({"prompt": "a", "seed": "", "stop": "", "model": None}) == "prompt=a"


def test_controls_use_the_apis_ranges_and_defaults(registry):
    built = app.build_app(registry)
    try:
        inputs = built.page.inputs
        assert list(inputs) == list(share.FIELDS)  # a control for every parameter, by name
        assert all(inputs[name].elem_id == name for name in inputs)
        assert {b.elem_id for b in built.blocks.blocks.values()} >= set(inputs)  # all on the page
        sliders = {p.name: inputs[p.name] for p in PARAMS if isinstance(p.control, Slider)}
        assert {"max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "n"} <= set(sliders)
        for name, slider in sliders.items():
            assert isinstance(slider, gr.Slider)
            assert (slider.minimum, slider.maximum) == SERVING.bounds(name)
            assert slider.value == DEFAULTS[name]
        assert inputs["prompt"].max_length == SERVING.max_prompt_chars
    finally:
        built.server.close()


def progress(registry, texts: list[str], done: bool) -> Progress:
    request, name = make_request(registry, "Hi", seed=40, n=len(texts))
    reasons = ["length" if done else None] * len(texts)
    return Progress(request, name, "cpu", 1, texts=texts, finish_reasons=reasons, tokens=[[] for _ in texts])


def test_samples_view_escapes_text_and_labels_each_seed(registry):
    html = render.samples_html(progress(registry, ["<b>a</b>", "generating…", "c"], done=False))
    assert "<b>a</b>" not in html and "&lt;b&gt;a&lt;/b&gt;" in html
    assert [f"data-seed='{s}'" in html for s in (40, 41, 42)] == [True] * 3
    assert html.count("<div class='sample'") == 3 and "--n: 3" in html
    stopped = render.stopped(html)
    assert stopped.count("<span class='state'>stopped</span>") == 3
    assert "generating…</div>" in stopped  # a sample's own text is left alone
    assert "stopped" not in render.stopped(render.samples_html(progress(registry, ["a"], done=True)))


def test_live_view_switches_samples(registry):
    view = LiveView(chosen=5)  # more than this generation has: clamped to its last sample
    view.update(progress(registry, ["a", "b"], done=True))
    assert view.chosen == 1
    view.choose(1)
    assert view.chosen == 0
    for bad in (0, 3, "2", None):
        view.choose(bad)
        assert view.chosen == 0
