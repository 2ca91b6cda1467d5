"""Every declared request parameter (`gpt2.decoding.params`) through every door of the running app: the
three endpoints, the UI's Generate handler, MCP, share links, an older REST client that sends fewer
inputs, the API page and README's table. Nothing here names a parameter: each test runs over the
declarations, with the example value each declaration carries."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from gradio_client import Client
from helpers.app_server import MODEL_NAME, rest_call, serve, shared_weights_dir
from helpers.models import ROOT
from helpers.params import EXAMPLES, SAMPLING
from test_clients import mcp

import app
from gpt2 import generate
from gpt2.decoding.params import PARAMS, REQUEST, SAMPLES, SAMPLES_DEFAULT, SERVER, params
from gpt2.serving import ModelRegistry
from ui import api, share

PROMPT = "Every effort moves you"
BASE = dict(prompt=PROMPT, max_new_tokens=12, seed=21)
READS = {"generate": lambda out: out, "generate_with_probs": lambda out: out["text"]}
READS["generate_samples"] = lambda out: out[0]  # sample 0 uses the seed itself


@pytest.fixture(scope="module")
def server(tmp_path_factory, bpe_dir):
    registry = ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir))
    built = app.build_app(registry, yield_interval=0.0)
    with serve(built.blocks, mcp_server=True) as url:
        yield SimpleNamespace(url=url, app=built, registry=registry, client=Client(url, verbose=False))


def library_text(server, **values) -> str:
    """What `generate` gives for these API values (the others at the API's defaults)."""
    api = {p.name: p.api for p in params(REQUEST) if p.name != "prompt"}
    model = server.registry.get(MODEL_NAME)
    return "".join(generate(model, server.registry.tokenizer, **{**api, **values}))


@pytest.mark.parametrize("name", SAMPLING)
def test_each_sampling_parameter_reaches_every_endpoint(server, name):
    setting = {name: EXAMPLES[name]}
    want = library_text(server, **BASE, **setting)
    assert want != library_text(server, **BASE)  # the value matters
    for endpoint, read in READS.items():
        assert read(server.client.predict(**BASE, **setting, api_name=f"/{endpoint}")) == want, endpoint


def test_every_parameter_through_the_ui_handler(server):
    """The page's Generate handler, as its event calls it: the controls' values by parameter name."""
    handler = next(f.fn for f in server.app.blocks.fns.values() if f.name == "ui_generate")
    page = server.app.page
    values = {**EXAMPLES, "seed": str(EXAMPLES["seed"]), "n": 1}  # the Seed box holds text
    updates = list(handler(1, **values))
    request = {k: v for k, v in EXAMPLES.items() if k not in ("model", "n")}
    assert updates[-1][page.text]["value"] == EXAMPLES["prompt"] + library_text(server, **request)
    assert updates[-1][page.seed_used] == str(EXAMPLES["seed"])


def test_every_parameter_through_mcp(server):
    sent = {p.name: EXAMPLES[p.name] for p in params(REQUEST, SERVER)}

    async def call(session):
        return await session.call_tool("generate", sent)

    (result,) = mcp(server, call)
    assert not result.isError, result.content
    assert [c.text for c in result.content] == [server.client.predict(**sent, api_name="/generate")]


def test_every_parameter_round_trips_through_a_share_link(server):
    shared = share.parse_query(share.link_query(EXAMPLES), server.registry)
    assert shared.notes == []
    assert shared.values == {**EXAMPLES, "seed": str(EXAMPLES["seed"])}  # as the controls take them
    assert list(share.FIELDS) == [p.name for p in PARAMS]


def test_the_api_page_lists_every_parameter_with_its_type_and_default(server):
    info = server.client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint in api.ENDPOINTS:
        listed = info[f"/{endpoint.name}"]["parameters"]
        taken = [p for p in PARAMS if p.scope != SAMPLES or endpoint.samples]
        assert [q["parameter_name"] for q in listed] == [p.name for p in taken]
        defaults = {p.name: p.api for p in taken} | {"model": MODEL_NAME, "n": SAMPLES_DEFAULT}
        for q, p in zip(listed, taken):
            assert q["parameter_has_default"] == (p.name != "prompt")
            if q["parameter_has_default"]:
                assert q["parameter_default"] == defaults[p.name], p.name
            if p.number:
                assert q["python_type"]["type"] == p.type.__name__


def test_an_older_rest_client_sends_fewer_inputs(server):
    """Inputs are positional in REST calls: a client written before a parameter was added sends fewer,
    and the missing trailing ones take their defaults."""
    values = [PROMPT, 12, 1.0, 40, 1.0, 1.0, 21]  # up to the seed: no stop, no model, nothing newer
    events = rest_call(server.url, values)
    assert events[-1] == ("complete", [library_text(server, **BASE)])
    events = rest_call(server.url, [PROMPT], "generate_samples")  # only the prompt: all defaults, 2 samples
    assert events[-1][0] == "complete" and len(events[-1][1][0]) == SAMPLES_DEFAULT


@pytest.mark.parametrize("count", [0, len(PARAMS) + 1])
def test_a_wrong_number_of_inputs_is_told_the_parameters(server, count):
    events = rest_call(server.url, [PROMPT, *[None] * (count - 1)] if count else [])
    names = [p.name for p in params(REQUEST, SERVER)]
    assert events[-1][0] == "error"
    message = events[-1][1]["error"]
    assert f"/generate takes 1 to {len(names)} inputs" in message and f"(got {count})" in message
    assert f"in this order: prompt, then optionally {', '.join(names[1:])}" in message
    assert server.client.predict(PROMPT, max_new_tokens=2, seed=1, api_name="/generate")


def test_readme_lists_every_parameter():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert api.parameter_table() in readme, "README.md's table: paste ui.api.parameter_table()\n" + (
        api.parameter_table()
    )
