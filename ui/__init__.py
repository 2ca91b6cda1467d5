"""The app's presentation: HTML rendering, static CSS, share links, the page's words and scripts
(app.py wires them to Gradio); and its start-up before Gradio is imported (`startup`)."""

from pathlib import Path


def script(name: str) -> str:
    """A JavaScript file of this folder (e.g. `open_settings.js`), for Gradio's `js=` / `js_on_load=`."""
    return (Path(__file__).parent / name).read_text()


# Gradio's queue loop wakes every 1 ms to look for new events, and every 10 ms for progress bars (this app
# shows none). On a 2-core machine each wake-up preempts one of the two decoding threads and the other
# waits for it at the engine's next barrier: one HTTP stream ran at 0.84x the library's own speed, and
# 0.91x polling every 20 ms (docs/serving.md). The cost: a new request waits up to 20 ms to start.
QUEUE_POLL_S = 0.02
PROGRESS_POLL_S = 0.5
# After every finished request Gradio rebuilds its monitoring summary (a pandas DataFrame of up to 10,000
# past events): 22 ms of CPU at 1,000 events, 49 ms at 10,000, taken from the requests still decoding.
# Every 50 requests keeps the summary (Gradio's /monitoring page) nearly fresh for a 50th of the cost.
ANALYTICS_EVERY = 50


def quiet_queue(demo) -> None:
    """Make `demo`'s queue (after `demo.queue(...)`) poll and summarise at the rates above. Gradio has no
    options for these, so this sets attributes of its private queue object (one of them spelled as Gradio
    spells it); tests/app/test_app.py checks they exist in the pinned Gradio, and any other version that lacks
    them only gets a warning."""
    import os
    import warnings

    queue = getattr(demo, "_queue", None)
    settings = {"sleep_when_free": QUEUE_POLL_S, "progress_update_sleep_when_free": PROGRESS_POLL_S}
    if "GRADIO_ANALYTICS_CACHE_FREQUENCY" not in os.environ:  # Gradio's own knob for it wins
        settings["ANAYLTICS_CACHE_FREQUENCY"] = ANALYTICS_EVERY
    for name, value in settings.items():
        if queue is None or not isinstance(getattr(queue, name, None), type(value)):
            warnings.warn(f"Gradio's queue has no {name}: it keeps its own setting", stacklevel=2)
            continue
        setattr(queue, name, value)
