"""Every client Gradio offers, against the running app (fixture model, 127.0.0.1): the JavaScript client
(@gradio/client under node), an MCP client (the `mcp` package, streamable HTTP), and the README's curl
example. Each must give exactly the Python client's text for the same parameters and seed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client import Client
from helpers.app_server import MODEL_NAME, serve, shared_weights_dir

import app
from gpt2.decoding.params import REQUEST, SAMPLES, SAMPLES_DEFAULT, SERVER
from gpt2.decoding.params import params as declared

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "clients" / "js"
PROMPT = "Every effort moves you"
ARGS = dict(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=123)


@pytest.fixture(scope="module")
def server(tmp_path_factory, bpe_dir):
    registry = app.ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    # An update per token (yield_interval 0), so streaming is observable with a fast model.
    with serve(app.build_demo(registry, yield_interval=0.0), mcp_server=True) as url:
        yield SimpleNamespace(url=url, client=Client(url, verbose=False))


def python_text(server, prompt: str = PROMPT, **kwargs) -> str:
    return server.client.predict(prompt, **kwargs, api_name="/generate")


# ----------------------------------------------------------------------------------------------------------
# JavaScript: clients/js/generate.mjs with the version pinned in clients/js/package-lock.json


@pytest.fixture(scope="module")
def js_client():
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm are not installed (apt-get install nodejs npm); .ci/run installs them")
    # `npm ci` installs exactly the locked @gradio/client (CI runs it too; here it is a quick no-op check).
    done = subprocess.run(
        [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return node


def run_js(node: str, url: str, prompt: str, **params) -> subprocess.CompletedProcess:
    argv = [node, str(JS_DIR / "generate.mjs"), url, prompt]
    for name, value in params.items():
        argv += [f"--{name}", str(value)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_js_client_streams_generate(server, js_client):
    done = run_js(js_client, server.url, PROMPT, **ARGS)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[-1]["done"] is True
    updates = list(dict.fromkeys(line["text"] for line in lines[:-1]))
    assert len(updates) >= 3, updates  # streamed, not one final answer
    for a, b in zip(updates, updates[1:]):
        assert b.startswith(a) and len(b) > len(a)
    want = python_text(server, **ARGS)
    assert lines[-1]["text"] == updates[-1] == want and want


def test_js_client_reports_the_apps_error(server, js_client):
    done = run_js(js_client, server.url, PROMPT, max_new_tokens=5000)
    assert done.returncode == 1
    assert "max_new_tokens must be between 1 and 1024" in done.stderr and done.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------
# MCP: the `mcp` package's own client over streamable HTTP (what Claude Desktop, Cursor... speak)


async def _mcp_session(url: str, calls):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        return [await call(session) for call in calls]


def mcp(server, *calls):
    return asyncio.run(asyncio.wait_for(_mcp_session(f"{server.url}gradio_api/mcp/", calls), timeout=120))


def test_mcp_lists_and_calls_generate(server):
    async def list_tools(session):
        return (await session.list_tools()).tools

    async def generate(session):
        return await session.call_tool("generate", {"prompt": PROMPT, **ARGS})

    async def bad(session):
        return await session.call_tool("generate", {"prompt": PROMPT, "max_new_tokens": 0})

    tools, result, refused = mcp(server, list_tools, generate, bad)
    by_name = {t.name: t for t in tools}
    assert {"generate", "generate_with_probs"} <= set(by_name), sorted(by_name)
    for tool in ("generate", "generate_with_probs", "generate_samples"):  # every parameter, with its default
        schema = by_name[tool].inputSchema
        taken = [p for p in declared() if p.scope != SAMPLES or tool == "generate_samples"]
        assert list(schema["properties"]) == [p.name for p in taken], tool
        assert schema.get("required") == ["prompt"]
        for p in taken[1:]:
            prop = schema["properties"][p.name]
            assert prop["description"].startswith(p.doc)
            if p.number:
                assert prop["type"] == {int: "integer", float: "number"}[p.type]
            default = SAMPLES_DEFAULT if p.scope == SAMPLES else p.api
            if default:  # (Gradio's MCP schema leaves out a default of 0: the description says what 0 does)
                assert prop["default"] == default
    assert not result.isError
    texts = [c.text for c in result.content if c.type == "text"]
    assert texts == [python_text(server, **ARGS)] and texts[0]
    assert refused.isError and "max_new_tokens must be between 1 and 1024" in refused.content[0].text


# ----------------------------------------------------------------------------------------------------------
# curl: README.md's example, run as written (only the host and the model name changed)


def readme_curl_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    example = next((b for b in blocks if "gradio_api/call/generate" in b and "curl" in b), None)
    assert example is not None, "README.md has no curl example for /gradio_api/call/generate"
    return example


def adapt(example: str, url: str) -> tuple[str, list]:
    """The example pointed at the test server and its fixture model; also the inputs it sends."""
    example = example.replace("http://127.0.0.1:7860/", url)
    body = re.search(r"-d '(\{.*?\})'", example, flags=re.S)
    assert body, "the README's curl example has no -d '{...}' body"
    data = json.loads(body.group(1))["data"]
    data[-1] = MODEL_NAME  # README: openai-community/gpt2; this server has the fixture
    example = example.replace(body.group(0), f"-d '{json.dumps({'data': data})}'")
    return example, data


def sse_events(stream_text: str) -> list[tuple[str, object]]:
    events, name = [], None
    for line in stream_text.splitlines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def run_with_urllib(url: str, data: list) -> str:
    """What the two curl commands do, for a machine without curl."""
    post = urllib.request.Request(
        f"{url}gradio_api/call/generate",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(post, timeout=60) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/generate/{event_id}", timeout=120) as r:
        return r.read().decode()


def test_readme_curl_example(server):
    example, data = adapt(readme_curl_example(), server.url)
    if shutil.which("curl"):
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        script = "set -eo pipefail\n" + example
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        stream = done.stdout
    else:
        stream = run_with_urllib(server.url, data)
    events = sse_events(stream)
    generating = [d[0] for e, d in events if e == "generating"]
    complete = [d[0] for e, d in events if e == "complete"]
    assert len(set(generating)) >= 3  # streamed
    names = [p.name for p in declared(REQUEST, SERVER)]
    want = python_text(server, **dict(zip(names, data)))
    assert complete == [want] and want
