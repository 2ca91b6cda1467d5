"""A real browser against the real app: headless Chromium (Debian's) driven by Playwright.

Screenshots are kept under artifacts/ (git-ignored) for CI to upload. Run as a script to take the README
screenshot with real weights:

    PYTHONPATH=.:tests python tests/app/test_browser.py --weights weights/ --out docs/screenshot.png
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from helpers.app_server import serve, shared_weights_dir
from playwright.sync_api import expect

import app

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PROMPT = "Every effort moves you"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def launch_browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# Waits are on states the page reaches (text changed, element visible, status says so), with generous
# limits: on a busy machine everything is slower, but a state that never comes still fails the test.
STATE_TIMEOUT_MS = 120_000
OUTPUT = "#output textarea"


def output_text(page) -> str:
    return page.input_value(OUTPUT)


def wait_for_new_output(page, previous: str) -> str:
    """The output's next value after `previous` (once it holds more than the prompt)."""
    page.wait_for_function(
        """([sel, prompt, prev]) => {
            const v = document.querySelector(sel)?.value ?? "";
            return v.length > prompt.length && v.startsWith(prompt) && v !== prev;
        }""",
        arg=[OUTPUT, PROMPT, previous],
        timeout=STATE_TIMEOUT_MS,
    )
    return output_text(page)


def wait_for_quiet_output(page, quiet_ms: int) -> str:
    """The output once it has not changed for `quiet_ms` (updates already on their way have landed)."""
    page.wait_for_function(
        """([sel, quiet]) => {
            const v = document.querySelector(sel)?.value ?? "";
            const now = performance.now();
            if (window.__lastOutput !== v) { window.__lastOutput = v; window.__changedAt = now; }
            return now - window.__changedAt >= quiet;
        }""",
        arg=[OUTPUT, quiet_ms],
        polling=50,
        timeout=STATE_TIMEOUT_MS,
    )
    return output_text(page)


def set_slider(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value), timeout=STATE_TIMEOUT_MS)


@pytest.fixture(scope="module")
def url(tmp_path_factory, bpe_dir):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    registry = app.ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    with serve(app.build_demo(registry)) as url:  # the app as served: ~15 updates a second
        yield url


def test_browser_streams_colours_tokens_and_stops(url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(STATE_TIMEOUT_MS)  # clicks too: a busy renderer answers late
            page.goto(url)
            expect(page.locator("#generate")).to_be_enabled(timeout=STATE_TIMEOUT_MS)
            page.fill("#prompt textarea", PROMPT)
            set_slider(page, "max_new_tokens", 1024)  # long enough that Stop has something to stop
            page.click("#generate")

            # The text grows in several steps while coloured tokens appear beside it.
            seen: list[str] = []
            statuses: list[str] = []
            for _ in range(4):
                seen.append(wait_for_new_output(page, seen[-1] if seen else ""))
                statuses.append(page.inner_text("#status"))
            for a, b in zip(seen, seen[1:]):
                assert b.startswith(a) and len(b) > len(a), (a, b)
            assert "generating" in statuses[0], statuses  # it was still running while the text grew
            tokens = page.locator("#tokens span.tok.gen")
            expect(tokens.nth(1)).to_be_attached(timeout=STATE_TIMEOUT_MS)
            assert "hsla(" in tokens.first.get_attribute("style")  # coloured by probability
            tokens.nth(1).hover()  # shows the alternatives
            expect(tokens.nth(1).locator(".tip")).to_be_visible(timeout=STATE_TIMEOUT_MS)
            page.screenshot(path=str(ARTIFACTS / "browser-streaming.png"))

            page.click("#stop-button")
            # Updates came ~15 times a second before Stop: wait until they stop (an update already on
            # its way may still land), then a negative check, which needs a window of time to watch.
            after_stop = wait_for_quiet_output(page, quiet_ms=1000)
            page.wait_for_timeout(2000)
            assert output_text(page) == after_stop, "text kept growing after Stop"
            assert "finished (length)" not in page.inner_text("#status")
            assert len(after_stop) >= len(seen[-1])
            page.screenshot(path=str(ARTIFACTS / "browser-stopped.png"))
        finally:
            browser.close()


def take_screenshot(weights: str, out: str, tokens: int = 60, hover: int = 8) -> None:
    """Serve the app with `weights`, generate from the first example and save a screenshot."""
    from helpers.app_server import free_port  # noqa: F401  (sets NO_PROXY for Gradio's start-up check)
    from playwright.sync_api import sync_playwright

    demo = app.build_demo(app.ModelRegistry.from_path(weights))
    with serve(demo) as url, sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.set_default_timeout(STATE_TIMEOUT_MS)
        page.goto(url)
        expect(page.locator("#generate")).to_be_enabled(timeout=STATE_TIMEOUT_MS)
        page.fill("#prompt textarea", PROMPT)
        set_slider(page, "max_new_tokens", tokens)
        page.fill("#seed textarea, #seed input", "42")
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("finished", timeout=STATE_TIMEOUT_MS)
        token = page.locator("#tokens span.tok.gen").nth(hover)
        token.hover()
        expect(token.locator(".tip")).to_be_visible(timeout=STATE_TIMEOUT_MS)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Take the README screenshot of the running app.")
    ap.add_argument("--weights", default=str(ROOT / "weights"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--tokens", type=int, default=60)
    args = ap.parse_args()
    take_screenshot(args.weights, args.out, args.tokens)
    print(args.out)
