"""The UI in a real browser (headless Chromium via Playwright): the phone layout, share links and
several samples side by side. Every wait is on a state of the page or the server, never a fixed sleep.

Screenshots go to artifacts/ (git-ignored) for CI to keep.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from gradio_client import Client
from helpers.app_server import serve, shared_weights_dir
from helpers.params import EXAMPLES
from test_browser import ARTIFACTS, CHROMIUM, launch_browser

import app
from gpt2.decoding.params import PARAMS, Slider

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PROMPT = "Every effort moves you"
WAIT_MS = 120_000  # generous: the test machine is shared and busy
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="module", name="served")
def served_app(tmp_path_factory, bpe_dir):
    """The app as served, on 127.0.0.1, and a Chromium to drive it (other browser modules import it)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    registry = app.ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    built = app.build_app(registry)  # as served: ~15 updates a second
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(built.blocks) as url, sync_playwright() as pw:
        browser = launch_browser(pw)
        try:
            yield SimpleNamespace(url=url, app=built, browser=browser, client=Client(url, verbose=False))
        finally:
            browser.close()


def api_text(served, prompt: str = PROMPT, **args) -> str:
    return served.client.predict(prompt=prompt, **args, api_name="/generate")


def same_text(a: str) -> str:
    # A browser's text and textarea values turn a carriage return into a newline.
    return a.replace("\r\n", "\n").replace("\r", "\n")


def open_page(served, viewport: dict, query: dict | None = None, **context):
    page = served.browser.new_context(viewport=viewport, **context).new_page()
    page.goto(served.url + (f"?{urlencode(query)}" if query else ""))
    page.wait_for_selector("#generate")
    if query and "prompt" in query:  # the link's values are set by the server just after the page loads
        page.wait_for_function(
            "p => document.querySelector('#prompt textarea')?.value === p",
            arg=query["prompt"],
            timeout=WAIT_MS,
        )
    return page


def wait_finished(page) -> None:
    page.wait_for_function(
        "document.querySelector('#status')?.innerText.includes('finished')", timeout=WAIT_MS
    )


def output_text(page) -> str:
    return same_text(page.input_value("#output textarea"))


UNCOVERED = """sel => {
    const el = document.querySelector(sel);
    if (!el) return false;
    const r = el.getBoundingClientRect();
    const inside = r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth;
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return inside && r.width > 0 && (hit === el || el.contains(hit));
}"""


def uncovered(page, selector: str) -> bool:
    """Becomes visible inside the viewport and on top at its centre (nothing, e.g. an open sidebar, covers
    it) without any click; False if that does not happen within the wait."""
    try:
        page.wait_for_function(UNCOVERED, arg=selector, timeout=WAIT_MS)
    except Exception:  # Playwright's TimeoutError
        return False
    return True


def test_phone_shows_prompt_and_generate_first_and_desktop_keeps_the_sidebar(served):
    args = dict(max_new_tokens=6, seed=3)
    page = open_page(served, PHONE)
    # The settings sidebar covers a phone's whole page when open: it must start closed there.
    assert "open" not in page.get_attribute("#settings", "class").split()
    assert uncovered(page, "#prompt textarea") and uncovered(page, "#generate")
    page.screenshot(path=str(ARTIFACTS / "ui-phone.png"))
    # Generate works there (settings from a link: they are one tap away, but this test taps nothing else).
    page = open_page(served, PHONE, {"prompt": PROMPT, **args})
    assert uncovered(page, "#generate")
    page.click("#generate")
    wait_finished(page)
    assert output_text(page) == same_text(PROMPT + api_text(served, **args))
    page.screenshot(path=str(ARTIFACTS / "ui-phone-generated.png"), full_page=True)

    page = open_page(served, DESKTOP)
    page.wait_for_selector("#settings.open", timeout=WAIT_MS)  # wide screen: settings open beside the page
    page.wait_for_function(  # the sidebar's slide-in has ended: the page sits to its right
        "document.querySelector('#prompt').getBoundingClientRect().left"
        " >= document.querySelector('#settings').getBoundingClientRect().right",
        timeout=WAIT_MS,
    )
    assert uncovered(page, "#prompt textarea") and uncovered(page, "#generate")
    assert uncovered(page, "#max_new_tokens input[type=number]")
    page.screenshot(path=str(ARTIFACTS / "ui-desktop.png"))


def test_share_link_reproduces_the_text_and_copy_link_round_trips(served):
    # A link with a seed: Generate gives what the API gives for the same parameters.
    page = open_page(served, DESKTOP, {"prompt": PROMPT, "seed": 7, "max_new_tokens": 5})
    page.wait_for_function("document.querySelector('#max_new_tokens input[type=number]')?.value === '5'")
    assert page.input_value("#seed textarea, #seed input") == "7"
    page.click("#generate")
    wait_finished(page)
    assert output_text(page) == same_text(PROMPT + api_text(served, max_new_tokens=5, seed=7))

    # Without a seed the text is random; Copy link carries the seed that was used, so it comes back.
    query = {"prompt": "The lighthouse keeper", "max_new_tokens": 6, "temperature": 1.5, "top_k": "x"}
    context = dict(permissions=["clipboard-read", "clipboard-write"])
    page = open_page(served, DESKTOP, query, **context)
    notes = page.locator("#link-notes")
    notes.wait_for(state="visible", timeout=WAIT_MS)
    assert "top_k ignored: top_k must be a number" in notes.inner_text()
    page.click("#generate")
    wait_finished(page)
    first = output_text(page)
    seed = page.input_value("#seed-used textarea, #seed-used input")
    assert seed.isdigit() and first.startswith("The lighthouse keeper")
    page.click("#copy-link")
    link_box = page.locator("#link textarea, #link input")
    link_box.wait_for(state="visible", timeout=WAIT_MS)
    page.wait_for_function(
        "document.querySelector('#link textarea, #link input')?.value.includes('seed=')", timeout=WAIT_MS
    )
    link = link_box.input_value()
    assert link.startswith(served.url) and f"seed={seed}" in link and "temperature=1.5" in link
    assert "top_k=40" in link  # the ignored value fell back to the default, and the link says so
    page.wait_for_function(
        "t => navigator.clipboard.readText().then(c => c === t)", arg=link, timeout=WAIT_MS
    )

    again = page.context.new_page()
    again.goto(link)
    again.wait_for_function(
        "document.querySelector('#prompt textarea')?.value === 'The lighthouse keeper'", timeout=WAIT_MS
    )
    assert again.input_value("#seed textarea, #seed input") == seed
    again.click("#generate")
    wait_finished(again)
    assert output_text(again) == first
    assert first == same_text(
        query["prompt"] + api_text(served, query["prompt"], max_new_tokens=6, temperature=1.5, seed=int(seed))
    )


def test_a_link_with_every_parameter_sets_every_control_and_gives_the_apis_text(served):
    """Each declared parameter, set by a share link, reaches its control and, through Generate, the text."""
    values = {**EXAMPLES, "n": 1}  # one sample: the text box
    page = open_page(served, DESKTOP, values)
    for p in PARAMS:
        if isinstance(p.control, Slider):
            page.wait_for_function(
                "([sel, v]) => Number(document.querySelector(sel)?.value) === v",
                arg=[f"#{p.name} input[type=number]", values[p.name]],
                timeout=WAIT_MS,
            )
    page.click("#generate")
    wait_finished(page)
    sent = {k: v for k, v in values.items() if k != "n"}
    assert output_text(page) == same_text(values["prompt"] + api_text(served, **sent))


RECORD_GROWTH = """() => {
    // Every length each sample's column shows, as the page changes (the test cannot poll fast enough).
    window.sampleLengths = [];
    new MutationObserver(() => {
        document.querySelectorAll('#samples .sample .text').forEach((el, i) => {
            const seen = (window.sampleLengths[i] ||= []);
            if (seen[seen.length - 1] !== el.textContent.length) seen.push(el.textContent.length);
        });
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


STACKED = """() => {
    const s = [...document.querySelectorAll('#samples .sample')].map(e => e.getBoundingClientRect());
    return s.length === 4 && s.every((r, i) => i === 0 || (r.top >= s[i - 1].bottom && r.left === s[0].left));
}"""


def sample_texts(page) -> list[str]:
    return [
        same_text(t)
        for t in page.eval_on_selector_all("#samples .sample .text", "els => els.map(e => e.textContent)")
    ]


def test_four_samples_stream_side_by_side_and_stop_together(served):
    seed, n, tokens = 11, 4, 60
    page = open_page(served, DESKTOP, {"prompt": PROMPT, "seed": seed, "max_new_tokens": tokens, "n": n})
    page.evaluate(RECORD_GROWTH)
    page.click("#generate")
    wait_finished(page)
    page.wait_for_function(
        "document.querySelectorAll('#samples .state').length === 4 && [...document.querySelectorAll("
        "'#samples .state')].every(s => s.innerText.startsWith('finished'))",
        timeout=WAIT_MS,
    )
    assert not page.locator("#output").is_visible()  # n > 1: the columns replace the single text box
    page.screenshot(path=str(ARTIFACTS / "ui-samples-desktop.png"))

    # Four columns side by side, each one grew over time, and each is /generate with seed + i.
    boxes = [page.locator("#samples .sample").nth(i).bounding_box() for i in range(n)]
    assert len({round(b["y"]) for b in boxes}) == 1 and [b["x"] for b in boxes] == sorted(
        b["x"] for b in boxes
    )
    lengths = page.evaluate("window.sampleLengths")
    assert len(lengths) == n
    for i, seen in enumerate(lengths):
        assert len([x for x in seen if x > 0]) >= 2 and seen == sorted(seen), (i, seen)
    texts = sample_texts(page)
    for i, text in enumerate(texts):
        assert text == same_text(api_text(served, max_new_tokens=tokens, seed=seed + i)) and text, i
        assert page.locator(f"#samples button[data-seed='{seed + i}']").count() == 1

    # The token view shows the chosen sample; a sample's button puts its seed into the Seed box.
    page.locator("#pick label", has_text="3").click()
    page.wait_for_function(
        "t => document.querySelector('#tokens .tokens')?.innerText.replaceAll('↵', '').includes(t)",
        arg=texts[2][:30],
        timeout=WAIT_MS,
    )
    page.locator(f"#samples button[data-seed='{seed + 2}']").click()
    page.wait_for_function(
        f"document.querySelector('#seed textarea, #seed input')?.value === '{seed + 2}'", timeout=WAIT_MS
    )

    # On a phone the columns stack.
    page.set_viewport_size(PHONE)
    page.wait_for_function(STACKED, timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / "ui-samples-phone.png"), full_page=True)

    # Stop ends every sample at once: the server's scheduler goes idle and no column changes after.
    page.set_viewport_size(DESKTOP)
    set_number = "#max_new_tokens input[type=number]"
    page.fill(set_number, "1024")
    page.press(set_number, "Enter")
    page.click("#generate")
    page.wait_for_function(
        "[...document.querySelectorAll('#samples .state')].filter(s => s.innerText === 'generating…').length"
        " === 4 && [...document.querySelectorAll('#samples .text')].every(t => t.textContent.length > 0)",
        timeout=WAIT_MS,
    )
    page.click("#stop-button")
    page.wait_for_function(
        "document.querySelector('#status')?.innerText.includes('stopped')", timeout=WAIT_MS
    )
    scheduler = served.app.server.scheduler(served.app.registry.default)
    deadline = time.monotonic() + 30
    while not scheduler.idle:
        assert time.monotonic() < deadline, "the samples kept decoding after Stop"
        time.sleep(0.01)
    # The columns are re-rendered as stopped by the cancelled event's failure handler, a queued event of its
    # own (Gradio's queue picks it up within ui.QUEUE_POLL_S), so wait for it rather than read at once.
    page.wait_for_function(
        "[...document.querySelectorAll('#samples .state')]"
        ".filter(s => s.innerText.toLowerCase().includes('stopped')).length === 4",
        timeout=WAIT_MS,
    )
    assert page.locator("#samples .state", has_text="stopped").count() == n
    stopped = sample_texts(page)
    assert all(0 < len(t) < 1024 * 20 for t in stopped)
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('stopped')")
    assert sample_texts(page) == stopped
