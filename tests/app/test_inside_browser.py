"""The Inside view and branching in a real browser (headless Chromium): tap a token and the layer chart,
the heatmap and the overview are drawn from the numbers the library gives; choosing a head colours the
text by its weights; each picture exports as a PNG and as its JSON; an alternative continues the text,
streamed, Back returns, and the share link reproduces the branch; on a 390 px phone in dark mode nothing
scrolls sideways and the text reads. Screenshots go to artifacts/inside-*.png."""

from __future__ import annotations

import json
import re
import struct
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers.app_server import APP_CONFIG
from test_browser import ARTIFACTS
from test_ui_browser import (
    DESKTOP,
    PHONE,
    WAIT_MS,
    open_page,
    output_text,
    same_text,
    served_app,  # noqa: F401  (the fixture `served`: the app and a browser)
    wait_finished,
)

from gpt2 import lens_grid, trace

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PROMPT = "Every effort moves you"
ARGS = {"prompt": PROMPT, "seed": 3, "max_new_tokens": 10}
TOKENS = "#tokens .tokens > .tok"


def library(served):
    """The served model and its tokenizer."""
    registry = served.app.registry
    return registry.get(registry.default), registry.tokenizer


def generation_ids(served, **args) -> list[int]:
    """The token ids the page shows for a generation: the prompt's, then the generated ones."""
    out = served.client.predict(**args, api_name="/generate_with_probs")
    return [t["token"] for t in out["prompt"]["tokens"]] + [t["token"] for t in out["tokens"]]


def generate(served, viewport: dict, query: dict, **context):
    page = open_page(served, viewport, query, **context)
    page.set_default_timeout(WAIT_MS)
    page.click("#generate")
    wait_finished(page)
    return page


def tap(page, position: int, selector: str = TOKENS) -> None:
    """Tap a token and wait until the Inside view shows it."""
    page.locator(selector).nth(position).click()
    page.wait_for_function(
        "p => document.querySelector('#inside .inside-head')?.innerText.startsWith(`Inside token ${p},`)",
        arg=position,
    )


def saved(page, selector: str):
    """Click an export button; the download's suggested name and bytes."""
    with page.expect_download() as info:
        page.click(selector)
    download = info.value
    return download.suggested_filename, open(download.path(), "rb").read()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])


def test_a_tap_draws_the_inside_of_that_token_and_each_picture_exports(served):
    page = generate(served, DESKTOP, ARGS)
    ids = generation_ids(served, **ARGS)
    model, tok = library(served)
    want = trace(model, ids, 6).to_dict(tok)
    tap(page, 6)
    layers, heads = APP_CONFIG.n_layer, APP_CONFIG.n_head
    assert page.locator("#inside .row").count() == layers + 1  # the embeddings, then every block
    assert page.locator("#inside .cell").count() == layers * heads
    guesses = page.eval_on_selector_all(
        "#inside .row text:nth-of-type(2)", "els => els.map(e => e.textContent)"
    )
    assert guesses == [f"“{top[0]['text']}”" for top in want["lens"]]  # (tokens this short are not clipped)

    # Choose a head: the text up to the token, each token shaded by that head's weight on it.
    page.locator("#inside .cell[data-layer='0'][data-head='4']").click()
    page.wait_for_selector("#inside .head-text")
    shades = page.eval_on_selector_all(
        "#inside .head-text .att", "els => els.map(e => e.getAttribute('style'))"
    )
    weights = want["attention"][0][4]
    assert len(shades) == 7 == len(weights)
    alphas = [float(re.search(r"([\d.]+)\)$", s).group(1)) for s in shades]
    assert alphas == pytest.approx([0.04 + 0.9 * w / max(weights) for w in weights], abs=1e-3)
    page.screenshot(path=str(ARTIFACTS / "inside-desktop.png"), full_page=True)

    name, data = saved(page, "#inside section[data-picture='layers'] [data-save='png']")
    width, height = png_size(data)
    assert name == "gpt2-token-6-layers.png" and width == 720 and height > 100  # drawn at twice 360
    name, data = saved(page, "#inside section[data-picture='attention'] [data-save='png']")
    assert name == "gpt2-token-6-attention.png" and min(png_size(data)) > 50
    name, data = saved(page, "#inside section[data-picture='layers'] [data-save='json']")
    assert name == "gpt2-token-6.json" and json.loads(data) == want

    # The overview of the whole text, once per text; a tap on one of its columns looks inside that token.
    page.wait_for_function(
        f"document.querySelectorAll('#overview .cell').length === {(layers + 1) * len(ids)}"
    )
    name, data = saved(page, "#overview [data-save='json']")
    assert name == "gpt2-overview.json" and json.loads(data) == lens_grid(model, ids).to_dict(tok)
    name, data = saved(page, "#overview [data-save='png']")
    assert name == "gpt2-overview.png" and png_size(data)[0] > 2 * 58 * len(ids)
    tap(page, 2, "#overview .col")
    assert page.locator("#inside .head-text .att").count() == 3  # the chosen head stays chosen


def test_an_alternative_continues_the_text_back_returns_and_the_link_reproduces_it(served):
    args = {**ARGS, "max_new_tokens": 40}
    page = generate(served, DESKTOP, args, permissions=["clipboard-read", "clipboard-write"])
    before = output_text(page)
    token = page.locator(TOKENS).nth(7)  # the fourth generated token
    tap(page, 7)
    token.click()  # its panel stays open while a button in it has the focus
    alternative = token.locator("button.alt").first
    chosen = alternative.inner_text()
    page.evaluate(
        """() => { window.texts = []; const box = document.querySelector('#output textarea');
        setInterval(() => { if (window.texts.at(-1) !== box.value) window.texts.push(box.value); }, 20); }"""
    )
    alternative.click()
    page.wait_for_selector("#branched:has-text('Branched at token 7')")
    prompt = same_text(page.input_value("#prompt textarea"))
    assert prompt.startswith(PROMPT) and prompt.endswith(chosen) and prompt != before[: len(prompt)]
    page.wait_for_function(
        "p => document.querySelector('#output textarea').value.startsWith(p)"
        " && document.querySelector('#status').innerText.includes('finished')",
        arg=prompt,
    )
    text = output_text(page)
    grew = [t for t in page.evaluate("window.texts") if t.startswith(prompt) and len(t) > len(prompt)]
    assert len(set(grew)) >= 3, grew  # streamed as usual, not one final answer
    same = served.client.predict(prompt, max_new_tokens=40, seed=3, api_name="/generate")
    assert text == same_text(prompt + same)  # the same settings and seed, from the new prompt
    page.screenshot(path=str(ARTIFACTS / "inside-branched.png"))

    # The share link is the branch: its prompt and seed give the same text in a fresh page.
    page.click("#copy-link")
    page.wait_for_function("document.querySelector('#link textarea, #link input')?.value.includes('seed=3')")
    link = page.input_value("#link textarea, #link input")
    assert same_text(parse_qs(urlsplit(link).query)["prompt"][0]) == prompt
    other = page.context.new_page()
    other.goto(link)
    other.wait_for_function("p => document.querySelector('#prompt textarea')?.value.length > 0")
    other.click("#generate")
    wait_finished(other)
    assert output_text(other) == text

    page.click("#back")
    page.wait_for_function("t => document.querySelector('#output textarea').value === t", arg=before)
    assert same_text(page.input_value("#prompt textarea")) == PROMPT
    assert page.input_value("#seed textarea, #seed input") == "3"
    page.locator("#back").wait_for(state="hidden")


def relative_luminance(rgb: str) -> float:
    channels = [float(c) / 255 for c in re.findall(r"[\d.]+", rgb)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


FITS = """() => [...document.querySelectorAll('#inside .pic, #overview .pic, #tokens')]
    .every(e => e.getBoundingClientRect().right <= innerWidth + 0.5)"""
COLOURS = """() => {
    const s = getComputedStyle(document.querySelector('#inside .inside-view'));
    const svg = document.querySelector('#inside svg');
    return [s.color, svg.style.color, svg.querySelector('rect').getAttribute('fill')];
}"""


def test_on_a_phone_in_dark_mode_it_fits_and_reads(served):
    page = generate(served, PHONE, {**ARGS, "__theme": "dark"})
    tap(page, 8)
    page.wait_for_selector("#overview svg")
    page.locator("#inside .cell").nth(2).click()
    page.wait_for_selector("#inside .head-text")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways page
    assert page.evaluate(FITS)
    # The overview keeps its size and scrolls inside its own box.
    assert page.evaluate("(e => e.scrollWidth > e.clientWidth)(document.querySelector('#overview .scroll'))")
    for button in page.locator("#inside button, #overview button").all():  # usable tap targets
        box = button.bounding_box()
        assert box["height"] >= 32 and box["width"] >= 44, button.inner_text()
    text, svg_text, svg_background = page.evaluate(COLOURS)
    assert text == svg_text  # the pictures use the theme's text colour
    lighter, darker = sorted([relative_luminance(text), relative_luminance(svg_background)], reverse=True)
    assert darker < 0.1 and (lighter + 0.05) / (darker + 0.05) >= 7  # dark, and readable on it
    page.screenshot(path=str(ARTIFACTS / "inside-phone-dark.png"), full_page=True)
