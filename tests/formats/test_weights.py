"""The weights/ format: save → load round trip, and clear errors for files that do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import TINY, random_model
from safetensors.torch import load_file, save_file

from gpt2 import GPT2Config, list_models, load_model, read_metadata, save_model


def test_round_trip_is_exact(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "gpt2-tiny.safetensors", name="tiny", source="test")
    meta = read_metadata(path)
    assert meta["config"] == TINY and meta["name"] == "tiny" and meta["source"] == "test"
    loaded = load_model(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    idx = torch.randint(0, TINY.n_vocab, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(idx), tiny_model(idx))
    assert "wte.weight" in load_file(path) and "lm_head.weight" not in load_file(path)


def test_untied_head_round_trip(tmp_path):
    model = random_model(GPT2Config(n_ctx=32, n_embd=32, n_head=2, n_layer=1, tied_head=False), seed=4)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors", name="untied"))
    assert loaded.lm_head is not None
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_half_precision_storage_loads_as_requested_dtype(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "m.safetensors", name="bf16", dtype=torch.bfloat16)
    assert load_file(path)["wte.weight"].dtype == torch.bfloat16
    assert load_model(path).wte.weight.dtype == torch.float32
    assert load_model(path, dtype=torch.bfloat16).wte.weight.dtype == torch.bfloat16


def _tamper(src, dst, edit):
    tensors = load_file(src)
    edit(tensors)
    save_file(tensors, dst, metadata=read_metadata_raw(src))


def read_metadata_raw(path):
    meta = read_metadata(path)
    return {k: v for k, v in meta.items() if k != "config"}


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.pop("h.1.mlp.c_fc.bias"), "missing \\['h.1.mlp.c_fc.bias'\\]"),
        (lambda t: t.update({"h.9.ln_1.weight": torch.ones(64)}), "unexpected \\['h.9.ln_1.weight'\\]"),
        (lambda t: t.update({"h.0.attn.c_attn.weight": torch.ones(64, 192)}), "h.0.attn.c_attn.weight"),
    ],
)
def test_mismatched_files_are_rejected_by_name(tiny_model, tmp_path, edit, message):
    good = save_model(tiny_model, tmp_path / "good.safetensors", name="t")
    bad = tmp_path / "bad.safetensors"
    _tamper(good, bad, edit)
    with pytest.raises(ValueError, match=message):
        load_model(bad)


def test_not_a_weights_file(tmp_path, tiny_model):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="not a gpt2-handbuilt"):
        load_model(plain)
    good = save_model(tiny_model, tmp_path / "gpt2-good.safetensors", name="good")
    truncated = tmp_path / "gpt2-cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ValueError):
        load_model(truncated)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.safetensors")
    # list_models skips the broken files and finds the good one by its metadata name
    assert list_models(tmp_path) == {"good": good.resolve()}


def test_bad_hparams_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(
        {"x": torch.zeros(1)},
        path,
        metadata={"format": "gpt2-handbuilt", "format_version": "1", "hparams": json.dumps({"n_embd": 8})},
    )
    with pytest.raises(ValueError, match="hparams"):
        load_model(path)


def test_config_sizes_and_validation():
    assert GPT2Config.from_name("124M").num_parameters() == 124_439_808
    assert GPT2Config.from_name("1558M").num_parameters() == 1_557_611_200
    assert GPT2Config.from_hparams(
        {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1024, "n_head": 16, "n_layer": 24}
    ) == GPT2Config.from_name("355M")
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        GPT2Config.from_name("7B")
    with pytest.raises(ValueError, match="divisible"):
        GPT2Config(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="missing"):
        GPT2Config.from_hparams({"n_embd": 8})
