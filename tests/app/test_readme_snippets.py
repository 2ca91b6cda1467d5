"""README.md's examples, run as written with only the host changed: the library example against a stand-in
Hub on 127.0.0.1 that serves a small random model as openai-community/gpt2, and the Python and JavaScript
client examples against the app serving that model under that name. Each must give the text the app gives
for the same inputs. (The curl example is run by test_clients.py; /inspect's by its own tests.) Also: the
README's test command is the one CI runs."""

from __future__ import annotations

import ast
import json
import re
import subprocess

import pytest
from gradio_client import Client
from helpers.app_server import serve
from helpers.hub_server import FakeHub, point_hub_at
from helpers.models import ROOT, random_hf_model
from test_clients import js_client  # noqa: F401  (the fixture: @gradio/client installed as locked)

import app
from gpt2.decoding.params import REQUEST, REQUIRED
from gpt2.decoding.params import params as declared

REPO = "openai-community/gpt2"
HOST = "http://127.0.0.1:7860/"
DIMS = dict(vocab_size=50257, n_positions=128, n_embd=64, n_head=4, n_layer=2)
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(language: str, needle: str) -> str:
    """The one fenced `language` block of README.md that contains `needle`."""
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if needle in b]
    assert len(found) == 1, f"README.md should have one {language} example with {needle!r}"
    return found[0]


def run_example(code: str) -> tuple[list[tuple], dict]:
    """Run Python `code` in this process; what it printed (each print's arguments) and its globals."""
    printed: list[tuple] = []
    namespace = {"__name__": "__readme__", "print": lambda *args, **kwargs: printed.append(args)}
    exec(compile(code, "README.md", "exec"), namespace)
    return printed, namespace


def calls(code: str, name: str) -> list[tuple[list, dict]]:
    """The literal arguments of every call of a method or function called `name` in `code`."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == name:
            args = [ast.literal_eval(a) if isinstance(a, ast.Constant) else None for a in node.args]
            found.append((args, {k.arg: ast.literal_eval(k.value) for k in node.keywords}))
    return found


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A stand-in Hub serving a small random GPT-2 as openai-community/gpt2, with huggingface_hub pointed
    at it (and at an empty cache) for this module."""
    folder = tmp_path_factory.mktemp("repo")
    random_hf_model(0, **DIMS).save_pretrained(folder)
    with FakeHub() as server, pytest.MonkeyPatch.context() as mp:
        server.add_repo(REPO, {p.name: p.read_bytes() for p in folder.iterdir()})
        point_hub_at(mp, server.url, tmp_path_factory.mktemp("hf-cache"))
        yield server


@pytest.fixture(scope="module")
def url(hub):
    """The app serving hf://openai-community/gpt2 (its only model) from the stand-in Hub."""
    registry = app.ModelRegistry.from_path(f"hf://{REPO}")
    with serve(app.build_demo(registry, yield_interval=0.0)) as address:
        yield address


def api_text(url: str, prompt: str, **kwargs) -> str:
    return Client(url, verbose=False).predict(prompt, **kwargs, api_name="/generate")


@pytest.mark.slow
def test_library_example(hub, url):
    code = readme_block("python", "import gpt2")
    printed, namespace = run_example(code)
    end = printed.index(())  # the bare print() after the streamed pieces
    text = "".join(args[0] for args in printed[:end])
    # The same request through the app: the example's arguments, the library's defaults for the rest.
    [(args, options)] = calls(code, "generate")
    defaults = {p.name: p.default for p in declared(REQUEST) if p.default is not REQUIRED}
    assert text and text == api_text(url, args[2], **{**defaults, **options})
    lens = printed[end + 1 :]  # a line per layer: the embeddings, then each block
    n_layer = namespace["model"].config.n_layer
    assert [line[0] for line in lens] == list(range(n_layer + 1))
    assert all(isinstance(line[1], str) and line[1][0] in "\"'" and 0 <= line[2] <= 1 for line in lens)


@pytest.mark.slow
def test_python_client_example(url):
    code = readme_block("python", 'api_name="/generate"').replace(HOST, url)
    printed, _ = run_example(code)
    *updates, (samples,) = printed
    [(args, options)] = calls(code, "submit")
    updates = [u[0] for u in updates]
    assert len(updates) >= 3, updates  # streamed
    assert all(b.startswith(a) for a, b in zip(updates, updates[1:]))
    options.pop("api_name")
    assert updates[-1] == api_text(url, args[0], **options) and updates[-1]
    [(args, options)] = calls(code, "predict")
    assert samples == Client(url, verbose=False).predict(*args, **options)
    n, seed, tokens = options["n"], options["seed"], options["max_new_tokens"]
    assert len(samples) == n and samples[1] == api_text(url, args[0], max_new_tokens=tokens, seed=seed + 1)


@pytest.mark.slow
def test_javascript_example(url, js_client, tmp_path):  # noqa: F811
    code = readme_block("js", "@gradio/client").replace(HOST, url)
    (tmp_path / "node_modules").symlink_to(ROOT / "clients" / "js" / "node_modules")
    (tmp_path / "example.mjs").write_text(code)
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=60)
    done = subprocess.run([js_client, "example.mjs"], **run)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r'submit\("/generate", (\{.*?\})\)', code).group(1)
    inputs = json.loads(re.sub(r"(\w+):", r'"\1":', body))
    want = api_text(url, inputs.pop("prompt"), **inputs)
    assert want and done.stdout.endswith(want + "\n")
    assert len(done.stdout) > 2 * (len(want) + 1)  # printed as it streamed, not once at the end


def test_readme_test_command_is_what_ci_runs():
    command = re.search(r"^    (python -m pytest.*)$", README, flags=re.M).group(1)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line.startswith("python -m pytest")] == [command]
