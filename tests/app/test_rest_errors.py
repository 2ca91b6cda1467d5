"""Gradio's REST doors answer a malformed call in words, over real HTTP: a body that is not the call's JSON
object is a 400 with one line saying what to send, an unknown endpoint a 404 naming the real ones, and the
server keeps serving."""

from __future__ import annotations

import pytest
import requests
from helpers.app_server import rest_call, serve, shared_weights_dir

import app

JSON = {"Content-Type": "application/json"}
FIX = 'send a JSON object like {"data": ["The lighthouse"]} with Content-Type: application/json'


@pytest.fixture(scope="module")
def url(tmp_path_factory, bpe_dir):
    built = app.build_app(shared_weights_dir(tmp_path_factory, bpe_dir))
    with serve(built.blocks) as url:
        yield url
    built.server.close()


BODIES = [
    ("not json", JSON, "the request body is not JSON (Expecting value at character 0)"),
    ('{"data": ["Once"', JSON, "the request body is not JSON ("),
    ("", JSON, "the request body is empty"),
    ('{"data": "Once"}', JSON, "invalid request body at body.data: Input should be a valid list"),
    ('["Once"]', JSON, "invalid request body at body: Input should be a valid dictionary"),
    # curl -d without -H sends a form: the body is not read as JSON at all
    (
        '{"data": ["Once"]}',
        {},
        "the request body must be JSON (it was sent as application/x-www-form-urlencoded)",
    ),
]


@pytest.mark.parametrize("door", ["call", "run"])
@pytest.mark.parametrize("body,headers,reason", BODIES, ids=[b[0][:12] or "empty" for b in BODIES])
def test_a_body_that_is_not_the_calls_json_is_a_400_in_one_line(url, door, body, headers, reason):
    if not headers:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(f"{url}gradio_api/{door}/generate", data=body.encode(), headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail.startswith(reason) and detail.endswith(FIX) and "\n" not in detail


def test_an_unknown_endpoint_is_a_404_naming_the_real_ones(url):
    r = requests.post(f"{url}gradio_api/call/nope", json={"data": ["Once"]}, timeout=30)
    assert r.status_code == 404
    known = "/generate, /generate_with_probs, /generate_samples, /inspect"
    assert r.json() == {"detail": f"no endpoint /nope here; the endpoints are {known}"}


def test_the_clients_routes_keep_gradios_answers_and_the_server_keeps_serving(url):
    r = requests.post(f"{url}gradio_api/queue/join", data=b"not json", headers=JSON, timeout=30)
    assert r.status_code == 422  # Gradio's own clients never send this; their route is left as it is
    events = rest_call(url, ["Once upon a time", 5])
    assert events[-1][0] == "complete" and events[-1][1][0]
