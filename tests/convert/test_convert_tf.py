"""`python -m convert --source-dir`: real TensorFlow checkpoints in OpenAI's layout → weights/ → same logits.

The reference is Hugging Face's GPT2LMHeadModel filled straight from the TF checkpoint by the test's own
mapping (tests/helpers/tf_checkpoints.py). One checkpoint is full 124M width (768), so a missing transpose of
a square matrix (c_proj) cannot pass; another has 12 layers, so a layer order taken from TF's string-sorted
listing (h0, h1, h10, h11, h2, …) cannot pass either.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers.tf_checkpoints import (
    hf_reference,
    list_variables,
    openai_variable_shapes,
    random_arrays,
    write_checkpoint,
)

from convert.__main__ import main
from gpt2 import read_metadata
from gpt2.formats.weights import load_model
from gpt2.tokenizer import BPE_FILE_SHA256, sha256_file

TOL = 1e-4
WIDE_HP = dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=2)
DEEP_HP = dict(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=12)
SMALL_HP = dict(n_vocab=50257, n_ctx=32, n_embd=32, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def wide_ckpt(tmp_path_factory, bpe_dir):
    return write_checkpoint(
        tmp_path_factory.mktemp("tf") / "wide", WIDE_HP, random_arrays(WIDE_HP, 1), bpe_dir
    )


@pytest.fixture(scope="module")
def wide_out(wide_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    assert main(["--source-dir", str(wide_ckpt), "--out", str(out), "--name", "wide"]) == 0
    return out


@pytest.fixture(scope="module")
def wide_ref(wide_ckpt):
    return hf_reference(wide_ckpt)


def _tokens(n_ctx: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (2, min(T, n_ctx)), generator=torch.Generator().manual_seed(seed))


def test_checkpoint_holds_openais_exact_variables(wide_ckpt):
    # The names and shapes TensorFlow lists are exactly OpenAI's (4 globals + 16 per layer; 124M has 148).
    assert list_variables(wide_ckpt) == openai_variable_shapes(WIDE_HP)
    assert len(openai_variable_shapes(dict(WIDE_HP, n_layer=12))) == 148
    assert (wide_ckpt / "checkpoint").read_text().startswith('model_checkpoint_path: "model.ckpt"')


def test_wide_round_trip_logits_equal_reference(wide_out, wide_ref, capsys):
    model = load_model(wide_out / "gpt2-wide.safetensors")
    idx = _tokens(1024, 48)
    with torch.no_grad():
        got, want = model(idx), wide_ref(idx).logits
    err = (got - want).abs().max().item()
    assert err <= TOL, f"max |Δ| {err:.3g}"
    assert want.abs().max() > 0.1
    # The comparison can fail: the same weights with one square matrix left untransposed are far off.
    with torch.no_grad():
        w = model.h[1].attn.c_proj.weight
        w.copy_(w.t().clone())
        assert (model(idx) - want).abs().max().item() > 100 * TOL


def test_output_file_and_summary(wide_out, wide_ckpt):
    path = wide_out / "gpt2-wide.safetensors"
    meta = read_metadata(path)
    assert meta["name"] == "wide" and meta["config"].to_hparams() == dict(WIDE_HP, tied_head=True)
    for name, digest in BPE_FILE_SHA256.items():  # tokenizer files copied, exactly GPT-2's
        assert sha256_file(wide_out / name) == digest
    assert sorted(p.name for p in wide_out.iterdir()) == [
        "encoder.json",
        "gpt2-wide.safetensors",
        "vocab.bpe",
    ]


def test_summary_names_parameters_bytes_and_sha256(wide_ckpt, tmp_path, capsys):
    assert main(["--source-dir", str(wide_ckpt), "--out", str(tmp_path), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "gpt2-wide.safetensors"  # default name: the folder's (not a released size)
    d, v, L = 768, 50257, 2
    params = v * d + 1024 * d + L * (12 * d * d + 13 * d) + 2 * d
    assert f"{params:,}" in out
    assert f"{path.stat().st_size:,}" in out
    assert sha256_file(path) in out
    assert "python app.py" in out
    # bf16 halves the file: 2 bytes per parameter plus a small header.
    assert 2 * params < path.stat().st_size < 2 * params + 100_000


@pytest.mark.slow  # converts the 768-wide checkpoint again and runs three models
@pytest.mark.parametrize("dtype,rel_tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision_outputs_stay_close_to_fp32(wide_ckpt, wide_out, tmp_path, dtype, rel_tol):
    assert (
        main(["--source-dir", str(wide_ckpt), "--out", str(tmp_path), "--name", "half", "--dtype", dtype])
        == 0
    )
    path = tmp_path / "gpt2-half.safetensors"
    full = load_model(wide_out / "gpt2-wide.safetensors")
    idx = _tokens(1024, 32, seed=3)
    with torch.no_grad():
        ref = full(idx)
        upcast = load_model(path)(idx)  # stored half, computed in fp32
        native = load_model(path, dtype=getattr(torch, dtype))(idx).float()  # stored and computed half
    scale = ref.abs().max().item()
    assert (upcast - ref).abs().max().item() <= rel_tol * scale
    assert (native - ref).abs().max().item() <= 2 * rel_tol * scale
    assert (upcast - ref).abs().max().item() > 0  # it really was rounded


def test_twelve_layers_are_mapped_by_name_not_listing_order(tmp_path, bpe_dir):
    src = write_checkpoint(tmp_path / "deep", DEEP_HP, random_arrays(DEEP_HP, 2), bpe_dir)
    listed = [n for n in list_variables(src) if n.endswith("ln_1/g")]
    assert listed.index("model/h10/ln_1/g") < listed.index("model/h2/ln_1/g")  # TF sorts by string
    assert main(["--source-dir", str(src), "--out", str(tmp_path / "w")]) == 0
    model = load_model(tmp_path / "w" / "gpt2-deep.safetensors")
    idx = _tokens(64, 64, seed=4)
    with torch.no_grad():
        err = (model(idx) - hf_reference(src)(idx).logits).abs().max().item()
    assert err <= TOL


# --- bad checkpoints: a clear error naming the problem, and the out dir left exactly as it was -------------


def _break(kind: str, arrays: dict[str, np.ndarray]) -> str:
    """Modify `arrays` for `kind`; return text the error message must contain."""
    if kind == "missing":
        del arrays["model/h1/mlp/c_fc/b"]
        return "model/h1/mlp/c_fc/b is missing"
    if kind == "extra":
        arrays["model/h0/attn/c_attn/extra"] = np.zeros(3, np.float32)
        return "unexpected variable model/h0/attn/c_attn/extra"
    if kind == "extra-layer":
        arrays["model/h2/ln_1/g"] = np.ones(32, np.float32)
        return "model/h2/ln_1/g with shape [32] (layer 2, but hparams.json says n_layer=2)"
    if kind == "shape":
        arrays["model/h0/attn/c_proj/w"] = np.zeros((1, 32, 31), np.float32)
        return "model/h0/attn/c_proj/w has shape [1, 32, 31], expected [1, 32, 32]"
    if kind == "dtype":
        arrays["model/ln_f/b"] = np.zeros(32, np.int32)
        return "model/ln_f/b has dtype int32"
    return ""


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "extra",
        "extra-layer",
        "shape",
        "dtype",
        "flipped-bytes",
        "truncated",
        "html-index",
        "hparams",
    ],
)
def test_bad_checkpoint_is_refused_and_nothing_written(kind, tmp_path, bpe_dir, capsys):
    arrays = random_arrays(SMALL_HP, 5)
    expected = _break(kind, arrays)
    src = write_checkpoint(tmp_path / "bad", SMALL_HP, arrays, bpe_dir)
    data = src / "model.ckpt.data-00000-of-00001"
    if kind == "flipped-bytes":  # same size, different content: TF's per-tensor checksum catches it
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        expected = "cannot read variable"
    elif kind == "truncated":
        data.write_bytes(data.read_bytes()[:-1000])
        expected = "truncated or corrupt download"
    elif kind == "html-index":  # an error page saved by a careless downloader
        (src / "model.ckpt.index").write_text("<html><body>404 Not Found</body></html>")
        expected = "not a readable TensorFlow checkpoint"
    elif kind == "hparams":
        (src / "hparams.json").write_text(json.dumps(dict(SMALL_HP, n_head=5)))
        expected = "n_embd (32) must be divisible by n_head (5)"
    out = tmp_path / "weights"
    out.mkdir()
    (out / "README.md").write_text("keep me")
    shutil.copy(bpe_dir / "vocab.bpe", out / "vocab.bpe")
    before = _snapshot(out)
    assert main(["--source-dir", str(src), "--out", str(out), "--name", "bad"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err
    assert _snapshot(out) == before


def test_missing_source_dir_and_bad_name(tmp_path, capsys):
    assert main(["--source-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "w")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert main(["--source-dir", str(tmp_path), "--out", str(tmp_path / "w"), "--name", "../escape"]) == 1
    assert "invalid model name '../escape'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
