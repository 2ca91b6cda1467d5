"""A real browser against the real app: headless Chromium (Debian's) driven by Playwright.

Screenshots are kept under artifacts/ (git-ignored) for CI to upload. Run as a script to take the README
screenshot with real weights:

    PYTHONPATH=.:tests python tests/test_browser.py --weights weights/ --out docs/screenshot.png
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pytest
from app_server import serve, shared_weights_dir

import app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PROMPT = "Every effort moves you"

pytestmark = pytest.mark.browser


def launch_browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def output_text(page) -> str:
    return page.input_value("#output textarea")


def set_slider(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


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
            page.goto(url)
            page.wait_for_selector("#generate")
            page.fill("#prompt textarea", PROMPT)
            set_slider(page, "max_new_tokens", 1024)  # long enough that Stop has something to stop
            page.click("#generate")

            # The text grows in several steps while coloured tokens appear beside it.
            seen: list[str] = []
            coloured = 0
            deadline = time.monotonic() + 60
            while len(seen) < 4 and time.monotonic() < deadline:
                text = output_text(page)
                if text.startswith(PROMPT) and len(text) > len(PROMPT) and (not seen or text != seen[-1]):
                    seen.append(text)
                    coloured = max(coloured, page.locator("#tokens span.tok.gen").count())
                time.sleep(0.03)
            assert len(seen) >= 3, f"output did not grow in steps: {seen}"
            for a, b in zip(seen, seen[1:]):
                assert b.startswith(a) and len(b) > len(a)
            assert coloured >= 1
            style = page.locator("#tokens span.tok.gen").first.get_attribute("style")
            assert "hsla(" in style  # coloured by probability
            assert "generating" in page.inner_text("#status")
            page.locator("#tokens span.tok.gen").nth(1).hover()  # shows the alternatives
            assert page.locator("#tokens span.tok.gen").nth(1).locator(".tip").is_visible()
            page.screenshot(path=str(ARTIFACTS / "browser-streaming.png"))

            page.click("#stop")
            time.sleep(1.0)
            after_stop = output_text(page)
            time.sleep(1.0)
            assert output_text(page) == after_stop, "text kept growing after Stop"
            assert "finished (length)" not in page.inner_text("#status")
            assert len(after_stop) >= len(seen[-1])
            page.screenshot(path=str(ARTIFACTS / "browser-stopped.png"))
        finally:
            browser.close()


def take_screenshot(weights: str, out: str, tokens: int = 60, hover: int = 8) -> None:
    """Serve the app with `weights`, generate from the first example and save a screenshot."""
    from app_server import free_port  # noqa: F401  (sets NO_PROXY for Gradio's start-up check)
    from playwright.sync_api import sync_playwright

    demo = app.build_demo(app.ModelRegistry.from_path(weights))
    with serve(demo) as url, sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.goto(url)
        page.wait_for_selector("#generate")
        page.fill("#prompt textarea", PROMPT)
        set_slider(page, "max_new_tokens", tokens)
        page.fill("#seed textarea, #seed input", "42")
        page.click("#generate")
        page.wait_for_function(
            "document.querySelector('#status').innerText.includes('finished')", timeout=120_000
        )
        page.locator("#tokens span.tok.gen").nth(hover).hover()
        time.sleep(0.3)
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
