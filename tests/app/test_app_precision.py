"""The app's --precision: the registry serves packed bf16/int8 models, plain and batched, with the text the
library gives for that precision."""

from __future__ import annotations

import warnings

import pytest
from helpers.app_server import MODEL_NAME, shared_weights_dir

from gpt2 import generate, load_model
from gpt2.serving import ModelRegistry, Server, make_request

KW = dict(max_new_tokens=24, temperature=0.9, top_k=40, top_p=1.0, repetition_penalty=1.0, seed=11)
PROMPT = "Every effort moves you"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_registry_serves_packed_precision(tmp_path_factory, bpe_dir, precision):
    weights = shared_weights_dir(tmp_path_factory, bpe_dir)
    registry = ModelRegistry.from_path(weights, precision=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # where the engine cannot run this precision
        want_model = load_model(registry.sources[MODEL_NAME].origin, precision=precision)
        model = registry.get(MODEL_NAME)
    assert model.runtime.precision == precision and registry.label(MODEL_NAME).endswith(f" · {precision}")
    want = "".join(generate(want_model, registry.tokenizer, PROMPT, **KW))
    request, name = make_request(registry, PROMPT, *KW.values(), None, MODEL_NAME)
    texts = []
    for max_batch in (1, 4):  # one sequence at a time, and through the batching scheduler
        server = Server(registry, max_batch=max_batch, interval=0)
        try:
            texts.append(list(server.stream(request, name))[-1].text)
        finally:
            server.close()
    assert texts == [want, want] and want


def test_unknown_precision_is_refused(tmp_path_factory, bpe_dir):
    with pytest.raises(ValueError, match="precision"):
        ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir), precision="fp8")
