"""convert/common.py's writer: all or nothing, even when the disk fails part-way."""

from __future__ import annotations

import pytest
import torch
from helpers.models import TINY, random_model
from helpers.reference import hf_from_ours

import convert.common as common
from convert.__main__ import main
from gpt2.formats.weights import list_models, load_model


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_failed_write_leaves_an_existing_folder_as_it_was(tmp_path, bpe_dir, monkeypatch):
    out = tmp_path / "weights"
    model = random_model(TINY, seed=3)
    common.write_output(model, out, name="old", bpe_dir=bpe_dir)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Fail while the tokenizer files are staged: the new model file must not appear either.
    monkeypatch.setattr(common.shutil, "copyfile", _disk_full)
    (out / "vocab.bpe").unlink()
    before.pop("vocab.bpe")
    with pytest.raises(OSError, match="No space left"):
        common.write_output(random_model(TINY, seed=4), out, name="new", bpe_dir=bpe_dir)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert list(list_models(out)) == ["old"]


def test_failed_write_removes_the_folders_it_created(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "save_model", _disk_full)
    with pytest.raises(OSError):
        common.write_output(random_model(TINY), tmp_path / "a" / "b" / "weights", name="x")
    assert not (tmp_path / "a").exists()


def test_cli_reports_os_errors_in_one_line(tmp_path, monkeypatch, capsys):
    model = random_model(TINY, seed=5)
    torch.save(hf_from_ours(model).state_dict(), tmp_path / "hf.pth")  # Hugging Face names, via --from-pth
    out = tmp_path / "weights"
    args = ["--from-pth", str(tmp_path / "hf.pth"), "--n-head", str(TINY.n_head), "--out", str(out)]
    monkeypatch.setattr(common, "save_model", _disk_full)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == "error: [Errno 28] No space left on device\n"
    assert not out.exists()
    monkeypatch.undo()
    assert main(args) == 0
    with torch.no_grad():
        idx = torch.randint(0, TINY.n_vocab, (1, 20))
        assert torch.allclose(load_model(out / "gpt2-hf.safetensors")(idx), model(idx), atol=1e-5)
