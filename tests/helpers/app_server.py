"""Launching the real app for tests: a converted fixture model in a temporary weights/ folder, served
in-process on 127.0.0.1 (so tests can also look at the server's model, e.g. count its forward calls)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import requests

os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gpt2 import GPT2Config, save_model  # noqa: E402
from helpers.models import random_model  # noqa: E402

# 768 wide like GPT-2 124M (so speed and numerics are realistic per layer), one layer, short context.
APP_CONFIG = GPT2Config(n_ctx=256, n_layer=1)
MODEL_NAME = "fixture"


def make_weights_dir(directory: Path, bpe_dir: Path, config: GPT2Config = APP_CONFIG) -> Path:
    """A weights/ folder as the converter leaves it: one model file plus GPT-2's BPE files."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(random_model(config, seed=3), directory / f"gpt2-{MODEL_NAME}.safetensors", name=MODEL_NAME)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_dir / name, directory / name)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(demo, **launch):
    """Launch a built demo on a free local port; yield its URL; close it afterwards. `launch`: more
    arguments for `demo.launch` (e.g. mcp_server=True)."""
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **launch
    )
    try:
        yield url
    finally:
        demo.close()


def shared_weights_dir(tmp_path_factory, bpe_dir: Path) -> Path:
    """One fixture weights/ folder per test session, shared by the app and browser test modules."""
    directory = tmp_path_factory.getbasetemp() / "app-weights"
    if not (directory / f"gpt2-{MODEL_NAME}.safetensors").is_file():
        make_weights_dir(directory, bpe_dir)
    return directory


def rest_call(url: str, data: list | str, api_name: str = "generate") -> list[tuple[str, object]]:
    """Gradio's plain HTTP API, as curl uses it: POST the inputs (`data`: a list, or the body as JSON
    text), then read the event stream; its (event, data) pairs."""
    body = data if isinstance(data, str) else json.dumps({"data": data})
    r = requests.post(
        f"{url}gradio_api/call/{api_name}", data=body, headers={"Content-Type": "application/json"}
    )
    r.raise_for_status()
    event_id = r.json()["event_id"]
    events, name = [], None
    with requests.get(f"{url}gradio_api/call/{api_name}/{event_id}", stream=True, timeout=60) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events
