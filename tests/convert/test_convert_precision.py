"""`python -m convert ... --precision`: a packed file (format_version 2) that loads as it is, with the same
tensors as packing the fp32 model at load time, and the app lists and serves it in its own precision."""

from __future__ import annotations

import pytest
import torch
from helpers.models import TINY, random_hf_model

from convert.__main__ import main
from gpt2 import PRECISIONS, load_model, read_metadata
from gpt2.serving import ModelRegistry
from gpt2.serving.budget import weight_bytes

PACKED = [p for p in PRECISIONS if p != "fp32"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    dims = dict(vocab_size=TINY.n_vocab, n_positions=TINY.n_ctx, n_embd=TINY.n_embd, n_head=TINY.n_head)
    random_hf_model(3, n_layer=TINY.n_layer, **dims).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("precision", PACKED)
def test_a_packed_file_loads_as_it_is(hf_folder, tmp_path, capsys, precision):
    assert main(["--from-hf", str(hf_folder), "--out", str(tmp_path), "--precision", precision]) == 0
    assert f"precision   {precision} (packed: loads as it is)" in capsys.readouterr().out
    path = tmp_path / "gpt2-tiny-gpt2.safetensors"
    meta = read_metadata(path)
    assert meta["format_version"] == "2" and meta["precision"] == precision and meta["config"].n_layer == 2
    main(["--from-hf", str(hf_folder), "--out", str(tmp_path / "fp32")])
    fp32 = tmp_path / "fp32" / "gpt2-tiny-gpt2.safetensors"
    # what the file holds is what the app's memory budget expects the model to hold
    assert path.stat().st_size == pytest.approx(weight_bytes(meta["config"], precision), rel=0.02)
    loaded, packed_at_load = (
        load_model(path, engine=False),
        load_model(fp32, precision=precision, engine=False),
    )
    assert loaded.runtime.precision == precision
    want = packed_at_load.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    registry = ModelRegistry.from_path(tmp_path)  # the app: listed, labelled and served in its own precision
    assert registry.label("tiny-gpt2").endswith(f" · {precision}")
    assert registry.get("tiny-gpt2").runtime.precision == precision


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--precision", "fp8"], "--precision must be one of fp32, "),
        (["--precision", "int8", "--dtype", "float16"], "--dtype applies to fp32 files"),
        (["--precision", "int8", "--to-hf", "out"], "the Hub's layout takes --dtype"),
    ],
)
def test_refusals_come_before_any_work(hf_folder, tmp_path, capsys, extra, message):
    assert main(["--from-hf", str(hf_folder), "--out", str(tmp_path / "w"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not (tmp_path / "w").exists()
