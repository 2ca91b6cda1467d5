"""The app's --precision: the registry serves packed bf16/int8 models through the same code paths,
plain and batched, with the text the library gives for that precision."""

from __future__ import annotations

import warnings

import pytest
from app_server import MODEL_NAME, shared_weights_dir

import app
from gpt2 import generate, load_model
from gpt2.fast import FastGPT2, bf16_supported
from gpt2.scheduler import BatchedSteps

KW = dict(max_new_tokens=24, temperature=0.9, top_k=40, top_p=1.0, repetition_penalty=1.0, seed=11)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_registry_serves_packed_precision(tmp_path_factory, bpe_dir, precision):
    weights = shared_weights_dir(tmp_path_factory, bpe_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fp32 fallback on CPUs without bf16
        registry = app.ModelRegistry.from_path(weights, precision=precision)
        want_model = FastGPT2(load_model(registry.paths[MODEL_NAME]), precision)
    expected_precision = precision if bf16_supported() else "fp32"
    assert registry.precision == expected_precision
    model = registry.get(MODEL_NAME)
    if expected_precision != "fp32":
        assert isinstance(model, FastGPT2) and model.precision == precision
        assert expected_precision in registry.device_label
    want = "".join(generate(want_model, registry.tokenizer, "Every effort moves you", **KW))
    request = app.make_request(registry, "Every effort moves you", *KW.values(), None, MODEL_NAME)
    plain = list(app.stream_generation(registry, request, interval=0))[-1]
    batched_source = BatchedSteps(max_batch=4, max_queue=4)
    try:
        batched = list(app.stream_generation(registry, request, interval=0, step_source=batched_source))[-1]
    finally:
        batched_source.close()
    assert plain.text == want == batched.text and plain.n_new > 0


def test_unknown_precision_is_refused(tmp_path_factory, bpe_dir):
    with pytest.raises(ValueError, match="precision"):
        app.ModelRegistry.from_path(shared_weights_dir(tmp_path_factory, bpe_dir), precision="fp8")
