"""`/inspect` through every door of the running app (the Python and JavaScript clients, plain HTTP as
curl sends it, MCP and README's examples): exactly the library's `Trace.to_dict` for the same model and
text, the same numbers as Hugging Face's model on the same weights, and a clear error for every bad
input."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers.app_server import APP_CONFIG, MODEL_NAME, rest_call, serve, shared_weights_dir
from helpers.models import ROOT
from helpers.reference import hf_from_ours
from test_clients import JS_DIR, adapt, js_client, mcp, sse_events  # noqa: F401 (js_client: a fixture)

import app
from gpt2 import trace
from gpt2.decoding.params import INSPECT_PARAMS, SERVING
from gpt2.decoding.sequence import prompt_ids
from gpt2.serving import ModelRegistry
from ui import api

CLIENTS_PAGE = "docs/clients-and-hub.md"  # /inspect's table and its Python and curl examples
TEXT = "Every effort moves you"


@pytest.fixture(scope="module")
def server(tmp_path_factory, bpe_dir):
    registry = ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    built = app.build_app(registry)
    with serve(built.blocks, mcp_server=True) as url:
        yield SimpleNamespace(url=url, app=built, registry=registry, client=Client(url, verbose=False))


def library(server, text: str, position: int = -1) -> dict:
    """What the library says for this text, tokenized as generation tokenizes a prompt."""
    tok = server.registry.tokenizer
    return trace(server.registry.get(MODEL_NAME), prompt_ids(tok, text), position).to_dict(tok)


LONG = " ".join(f"word{i}" for i in range(150))  # ~300 tokens: past the fixture's 256-token context


@pytest.mark.parametrize(
    "text,position",
    [(TEXT, 0), (TEXT, 2), (TEXT, -1), ("🙂 <|endoftext|> x", 3), ("", -1), (LONG, -1), (LONG, 280)],
    ids=["first", "middle", "last", "emoji-and-eot-text", "empty", "long-last", "long-280"],
)
def test_inspect_is_the_librarys_trace_over_http(server, text, position):
    want = library(server, text, position)
    got = server.client.predict(text, position, api_name="/inspect")
    assert got == want  # every float exactly: JSON carries Python's floats both ways
    events = rest_call(server.url, [text, position, MODEL_NAME], "inspect")  # as curl sends it
    assert events == [("complete", [want])]
    # The documented shape.
    n_layer, n_head = APP_CONFIG.n_layer, APP_CONFIG.n_head
    p, offset = got["position"], got["offset"]
    assert len(got["attention"]) == n_layer and all(len(a) == n_head for a in got["attention"])
    assert all(len(row) == p - offset + 1 for a in got["attention"] for row in a)
    assert len(got["lens"]) == n_layer + 1 and all(len(top) == 5 for top in got["lens"])
    assert set(got["lens"][0][0]) == {"token", "text", "prob"} and len(got["writes"]) == n_layer
    assert set(got["writes"][0]) == {"attn", "mlp"}
    if text == "":
        assert got["tokens"] == ["<|endoftext|>"] and p == 0  # nothing prepended, nothing else
    if text == LONG:
        assert offset == p + 1 - APP_CONFIG.n_ctx > 0


def test_inspect_equals_hugging_face_on_the_same_weights(server):
    """The served numbers against HF transformers holding the fixture model's weights (its attentions and
    hidden states, the lens through HF's own ln_f and the tied head), at 1e-5."""
    model = server.registry.get(MODEL_NAME)
    hf = hf_from_ours(model, attn_implementation="eager")
    ids = prompt_ids(server.registry.tokenizer, TEXT)
    got = server.client.predict(TEXT, 2, api_name="/inspect")
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    for layer, attention in enumerate(out.attentions):
        want = attention[0, :, 2, :3]
        assert (torch.tensor(got["attention"][layer]) - want).abs().max().item() <= 1e-5
    for layer, h in enumerate(out.hidden_states):
        h = h[0, 2] if layer == APP_CONFIG.n_layer else hf.transformer.ln_f(h[0, 2])
        probs, top = torch.softmax(hf.lm_head(h), dim=-1).topk(5)
        assert [g["token"] for g in got["lens"][layer]] == top.tolist()
        assert (torch.tensor([g["prob"] for g in got["lens"][layer]]) - probs).abs().max().item() <= 1e-5


BAD = [
    (dict(position=4), "position must be a token index from 0 to 3 (or -1 for the last), got 4"),
    (dict(position=-2), "position must be a token index (0 for the first) or -1 for the last, got -2"),
    (dict(position=1.5), "position must be a token index"),
    (dict(position="1"), "position must be a token index"),
    (dict(position=None), "position must be a token index"),
    (dict(model="../../etc/passwd"), "unknown model"),
    (dict(text="x" * (SERVING.max_prompt_chars + 1)), "text is too long"),
    (dict(text=None), "text must be a string"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m.split(",")[0][:30] for _, m in BAD])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(server, bad, message):
    with pytest.raises(AppError, match=re.escape(message)):
        server.client.predict(**{"text": TEXT, **bad}, api_name="/inspect")
    assert server.client.predict(TEXT, api_name="/inspect")["position"] == 3


def test_rest_calls_with_fewer_inputs_get_the_defaults_and_too_many_are_told_the_order(server):
    assert rest_call(server.url, [TEXT], "inspect") == [("complete", [library(server, TEXT)])]
    events = rest_call(server.url, [TEXT, 1, MODEL_NAME, "extra"], "inspect")
    assert events[-1][0] == "error"
    assert (
        "/inspect takes 1 to 3 inputs, in this order: text, then optionally position, model"
        in (events[-1][1]["error"])
    )


def test_inspect_shares_the_generation_queue_and_is_documented_from_its_declarations(server):
    fns = {f.name: f for f in server.app.blocks.fns.values()}
    model_fns = [fns[name] for name in ("generate", "inspect", "ui_inspect", "ui_overview", "ui_continue")]
    assert {f.concurrency_id for f in model_fns} == {app.CONCURRENCY_ID}
    assert len({f.concurrency_limit for f in model_fns}) == 1
    info = server.client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/inspect"]
    assert [q["parameter_name"] for q in info["parameters"]] == [p.name for p in INSPECT_PARAMS]
    assert [q["parameter_default"] for q in info["parameters"][1:]] == [-1, MODEL_NAME]
    page = (ROOT / CLIENTS_PAGE).read_text(encoding="utf-8")
    assert api.parameter_table(INSPECT_PARAMS) in page, api.parameter_table(INSPECT_PARAMS)


def test_mcp_lists_and_calls_inspect(server):
    async def tools(session):
        return (await session.list_tools()).tools

    async def call(session):
        return await session.call_tool("inspect", {"text": TEXT, "position": 1})

    async def bad(session):
        return await session.call_tool("inspect", {"text": TEXT, "position": 9})

    listed, result, refused = mcp(server, tools, call, bad)
    tool = next(t for t in listed if t.name == "inspect")
    assert list(tool.inputSchema["properties"]) == [p.name for p in INSPECT_PARAMS]
    assert tool.inputSchema.get("required") == ["text"]
    assert tool.inputSchema["properties"]["position"]["description"].startswith(INSPECT_PARAMS[1].doc)
    assert not result.isError
    # Gradio's MCP server writes a tool's dict as a Python literal (str(dict)), as for /generate_with_probs.
    assert ast.literal_eval(result.content[0].text) == library(server, TEXT, 1)
    assert refused.isError and "position must be a token index from 0 to 3" in refused.content[0].text


def run_js_inspect(url: str, *args: object) -> subprocess.CompletedProcess:
    argv = [shutil.which("node"), str(JS_DIR / "inspect.mjs"), url, *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.usefixtures("js_client")  # installs the pinned @gradio/client (or skips without node)
def test_js_client_calls_inspect_and_reports_the_apps_error(server):
    done = run_js_inspect(server.url, TEXT, 2, MODEL_NAME)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == library(server, TEXT, 2)  # every float: JSON both ways
    for position, message in [(9, "position must be a token index from 0 to 3"), ("two", "token index")]:
        refused = run_js_inspect(server.url, TEXT, position)
        assert refused.returncode == 1 and message in refused.stderr and refused.stderr.count("\n") == 1


def readme_block(language: str, needle: str, page: str = "README.md") -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if needle in b]
    assert len(found) == 1, f"{page} should have one {language} example with {needle!r}"
    return found[0]


def test_python_example(server):
    example = readme_block("python", 'api_name="/inspect"', CLIENTS_PAGE)
    example = example.replace("http://127.0.0.1:7860/", server.url)
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    want = library(server, TEXT, 3)
    lines = done.stdout.splitlines()[1:]  # after the client's "Loaded as API: ..."
    assert lines[0] == repr(want["tokens"][3])
    assert lines[1 : 2 + APP_CONFIG.n_layer] == [
        f"{layer} {top[0]['text']!r} {round(top[0]['prob'], 3)}" for layer, top in enumerate(want["lens"])
    ]
    assert json.loads(lines[-1]) == want["attention"][-1][0]


def test_readme_curl_example(server):
    example, data = adapt(readme_block("bash", "gradio_api/call/inspect", CLIENTS_PAGE), server.url)
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl); .ci/run installs it")
    env = dict(os.environ, PATH=os.pathsep.join([str(sys.executable).rsplit("/", 1)[0], os.environ["PATH"]]))
    done = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + example], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sse_events(done.stdout) == [("complete", [library(server, data[0], data[1])])]
