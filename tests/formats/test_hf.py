"""`python -m convert --from-hf`: Hugging Face GPT-2 folders written by `save_pretrained` → same logits."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import random_hf_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from convert.__main__ import main
from gpt2.formats.weights import load_model, read_metadata

TOL = 1e-4
DIMS = dict(vocab_size=50257, n_positions=96, n_embd=64, n_head=4, n_layer=6)  # distilgpt2's depth


def hf_model(seed: int, tied: bool = True) -> GPT2LMHeadModel:
    return random_hf_model(seed, tied, **DIMS)


def _compare(path, hf: GPT2LMHeadModel):
    model = load_model(path)
    idx = torch.randint(0, 50257, (2, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(idx), hf(idx).logits
    err = (got - want).abs().max().item()
    assert err <= TOL, f"max |Δ| {err:.3g}"
    assert want.abs().max() > 0.5
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_folder_round_trip(tmp_path, tied, capsys):
    hf = hf_model(1, tied)
    hf.save_pretrained(tmp_path / "distil")
    assert (tmp_path / "distil" / "model.safetensors").is_file()
    out = tmp_path / "weights"
    assert main(["--from-hf", str(tmp_path / "distil"), "--out", str(out)]) == 0
    model = _compare(out / "gpt2-distil.safetensors", hf)
    assert model.config.n_layer == 6 and model.config.n_ctx == 96
    assert model.config.tied_head is tied
    if not tied:
        assert torch.equal(model.lm_head.weight, hf.lm_head.weight)
    assert read_metadata(out / "gpt2-distil.safetensors")["name"] == "distil"
    # No --bpe-dir: the package's own copy of the tokenizer files goes beside the model.
    assert {p.name for p in out.iterdir()} == {"gpt2-distil.safetensors", "encoder.json", "vocab.bpe"}


def test_pytorch_model_bin_with_old_buffers(tmp_path, bpe_dir):
    hf = hf_model(2)
    folder = tmp_path / "old-format"
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    state = dict(hf.state_dict())
    for i in range(6):  # older transformers saved the causal-mask buffers too
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 96, 96))
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    out = tmp_path / "weights"
    assert (
        main(["--from-hf", str(folder), "--out", str(out), "--name", "old", "--bpe-dir", str(bpe_dir)]) == 0
    )
    _compare(out / "gpt2-old.safetensors", hf)
    assert {p.name for p in out.iterdir()} == {"gpt2-old.safetensors", "encoder.json", "vocab.bpe"}


def test_hf_named_pth_through_from_pth(tmp_path):
    hf = hf_model(3)
    torch.save(hf.state_dict(), tmp_path / "hf.pth")
    out = tmp_path / "weights"
    assert main(["--from-pth", str(tmp_path / "hf.pth"), "--n-head", "4", "--out", str(out)]) == 0
    _compare(out / "gpt2-hf.safetensors", hf)


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"model_type": "llama"}, "model_type is 'llama', not \"gpt2\""),
        ({"activation_function": "gelu"}, "activation_function is 'gelu'"),
        ({"activation_function": "relu"}, "activation_function is 'relu'"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon is 1e-06"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is True"),
        ({"n_inner": 100}, "n_inner is 100"),
        ({"vocab_size": 50304}, "vocabulary of 50304 tokens"),
    ],
)
def test_non_gpt2_configs_are_refused(tmp_path, change, expected, capsys):
    folder = tmp_path / "model"
    hf_model(4).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    if "vocab_size" in change:  # tensors consistent with the config: refused for the vocabulary alone
        state = load_file(str(folder / "model.safetensors"))
        state["transformer.wte.weight"] = torch.zeros(change["vocab_size"], 64)
        save_file(state, str(folder / "model.safetensors"))
    out = tmp_path / "weights"
    capsys.readouterr()  # drop save_pretrained's own progress output
    assert main(["--from-hf", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert not out.exists()


def test_bad_folders_are_refused(tmp_path, capsys):
    out = tmp_path / "weights"
    folder = tmp_path / "model"
    hf_model(5).save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    state["transformer.h.3.mlp.c_fc.weight"] = state["transformer.h.3.mlp.c_fc.weight"].t().contiguous()
    save_file(state, str(folder / "model.safetensors"))
    assert main(["--from-hf", str(folder), "--out", str(out)]) == 1
    assert "h.3.mlp.c_fc.weight has shape (256, 64), expected (64, 256)" in capsys.readouterr().err
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["--from-hf", str(folder), "--out", str(out)]) == 1
    assert "is not a readable safetensors file" in capsys.readouterr().err
    (folder / "model.safetensors").unlink()
    assert main(["--from-hf", str(folder), "--out", str(out)]) == 1
    assert "has no model.safetensors or pytorch_model.bin" in capsys.readouterr().err
    (folder / "config.json").unlink()
    assert main(["--from-hf", str(folder), "--out", str(out)]) == 1
    assert "config.json is missing" in capsys.readouterr().err
    assert not out.exists()
