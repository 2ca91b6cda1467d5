"""The app's presentation: HTML rendering, static CSS, share links, the page's words and scripts
(app.py wires them to Gradio)."""

from pathlib import Path


def script(name: str) -> str:
    """A JavaScript file of this folder (e.g. `open_settings.js`), for Gradio's `js=` / `js_on_load=`."""
    return (Path(__file__).parent / name).read_text()
