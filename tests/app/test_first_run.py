"""`python app.py` with no arguments on a fresh machine, as a subprocess against a stand-in Hub on 127.0.0.1
serving small random-weight repositories under OpenAI's four names: an empty cache downloads 124M with
huggingface_hub's progress bar and serves it (and the other sizes on first use); a second start loads from
the cache; offline, or with the Hub unreachable, and nothing cached, it says how to get weights and exits
with status 2 within seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from gradio_client import Client
from helpers.app_server import free_port
from helpers.hub_server import FakeHub
from helpers.models import ROOT, random_hf_model

from gpt2.serving import OPENAI_HUB

pytestmark = pytest.mark.slow
DIMS = dict(vocab_size=50257, n_positions=128, n_embd=64, n_head=4, n_layer=2)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in Hub with a small HF-format GPT-2 under each of OpenAI's four names."""
    tmp = tmp_path_factory.mktemp("repos")
    with FakeHub() as server:
        for seed, repo in enumerate(OPENAI_HUB):
            random_hf_model(seed, **DIMS).save_pretrained(tmp / str(seed))
            server.add_repo(repo, {p.name: p.read_bytes() for p in (tmp / str(seed)).iterdir()})
        yield server


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A checkout's app.py and ui/ with an empty weights/ folder (the repository's own may hold models),
    an empty Hugging Face home and an empty engine cache."""
    root = tmp_path_factory.mktemp("fresh")
    shutil.copy(ROOT / "app.py", root / "app.py")
    shutil.copytree(ROOT / "ui", root / "ui", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "weights").mkdir()
    return root


def environment(fresh: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GPT2_", "GRADIO_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        HF_HOME=str(fresh / "hf-home"),
        GPT2_NATIVE_CACHE=str(fresh / "engine-cache"),
        GRADIO_ANALYTICS_ENABLED="False",
        NO_PROXY="localhost,127.0.0.1",
        **extra,
    )
    return env


def run_app(fresh: Path, env: dict[str, str], ask, timeout: float = 300) -> tuple[str, str]:
    """Start `python app.py`, wait until it serves, call `ask(url)`, stop it; its stdout and stderr."""
    port = free_port()
    env = {**env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    out, err = fresh / "stdout.txt", fresh / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=fresh, env=env, stdout=o, stderr=e)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"the app exited ({proc.returncode}):\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the app did not start serving"
            try:
                if requests.get(url, timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.25)
        ask(url)
    finally:
        proc.terminate()
        proc.wait(30)
    return out.read_text(), err.read_text()


def generate(url: str, **kwargs) -> str:
    return Client(url, verbose=False).predict(
        "Once upon a time", max_new_tokens=6, seed=1, **kwargs, api_name="/generate"
    )


def test_a_fresh_machine_downloads_serves_and_then_uses_the_cache(hub, fresh):
    env = environment(fresh, HF_ENDPOINT=hub.url)
    texts = {}

    def ask(url: str) -> None:
        texts["124M"] = generate(url)
        texts["XL"] = generate(url, model="openai-community/gpt2-xl")  # listed, loaded on first use

    out, err = run_app(fresh, env, ask)
    assert texts["124M"] and texts["XL"], (out, err)
    # huggingface_hub's own progress bar: the file, its size, 100%
    assert "model.safetensors: 100%" in err and "MB" in err, err[-2000:]
    assert "decode engine: compiling it for this CPU" in out  # an empty engine cache: built at start-up
    for label in ("GPT-2 · 124M · fp32", "GPT-2 Medium · 355M", "GPT-2 Large · 774M", "GPT-2 XL · 1558M"):
        assert label in out, out
    assert "ready" in out and "decode engine: native engine" in out, out
    fetched = hub.fetched()
    assert "/openai-community/gpt2/resolve/main/model.safetensors" in fetched
    assert "/openai-community/gpt2-xl/resolve/main/model.safetensors" in fetched
    assert not any("gpt2-medium" in p or "gpt2-large" in p for p in fetched)  # never asked for

    hub.requests.clear()
    again = {}
    out, err = run_app(fresh, env, lambda url: again.setdefault("124M", generate(url)))
    assert again["124M"] == texts["124M"]
    assert hub.fetched() == []  # the second start loads from the cache
    assert "compiling" not in out


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE=1", "unreachable HF_ENDPOINT"])
def test_offline_with_nothing_cached_says_how_to_get_weights_and_exits_2(fresh, tmp_path, how):
    if how == "HF_HUB_OFFLINE=1":
        extra = dict(HF_HUB_OFFLINE="1")
    else:
        with FakeHub() as dead:
            extra = dict(HF_ENDPOINT=dead.url)  # nothing listens there once it is stopped
    env = {**environment(fresh, **extra), "HF_HOME": str(tmp_path / "empty")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "app.py"], cwd=fresh, env=env, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert took < 10, f"{took:.1f} s"
    said = " ".join(proc.stderr.split())
    assert said.startswith("GPT-2's weights are not here: hf://openai-community/gpt2: ")
    for words in (
        "python -m convert --model 124M",
        "point --weights (or GPT2_WEIGHTS) at a converted .safetensors file or folder",
        "--weights hf://openai-community/gpt2",
        "HF_HUB_OFFLINE=1",
        "HF_HOME (or wherever HF_HUB_CACHE says)",
        "HF_HUB_OFFLINE is set"
        if extra.get("HF_HUB_OFFLINE")
        else f"cannot reach {extra.get('HF_ENDPOINT')}",
    ):
        assert words in said, said
    assert "Traceback" not in proc.stderr
