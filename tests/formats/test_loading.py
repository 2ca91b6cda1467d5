"""Loading without detours: tensors read one at a time (never mapped), blocks packed as they arrive, and
packed files that load as they are."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import pytest
import torch
from helpers.models import ROOT, WIDE, random_model

from gpt2 import PRECISIONS, load_model, read_metadata, save_model
from gpt2.formats.stream import TensorFile


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory, wide_model):
    path = tmp_path_factory.mktemp("weights") / "gpt2-wide.safetensors"
    return save_model(wide_model, path, name="wide")


def logits(model, idx):
    with torch.no_grad():
        return model(idx)


@pytest.mark.slow
@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "fp32"])
def test_packed_file_round_trips_to_the_same_bits(tmp_path, fp32_file, precision):
    """fp32 file → packed at load → saved packed → loaded as it is: the same tensors, the same logits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no engine for this precision here
        packed = load_model(fp32_file, precision=precision)
        path = save_model(packed, tmp_path / "gpt2-packed.safetensors", name="packed")
        again = load_model(path)
    assert read_metadata(path)["precision"] == precision and again.runtime.precision == precision
    for (k, a), (k2, b) in zip(packed.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    idx = torch.randint(0, WIDE.n_vocab, (1, 12))
    assert torch.equal(logits(packed, idx), logits(again, idx))
    other = "int8" if precision != "int8" else "bf16"
    with pytest.raises(ValueError, match=f"holds {precision} weights"):
        load_model(path, precision=other)


def test_loading_keeps_no_mapping_of_the_file(fp32_file):
    """Nothing of the weights file stays mapped once the model is loaded (only its packed copy is held)."""
    model = load_model(fp32_file, precision="int8")
    with open("/proc/self/maps") as maps:
        assert str(fp32_file) not in maps.read()
    assert model.runtime.precision == "int8"


def test_stream_reads_exact_tensors_and_reports_progress(fp32_file, wide_model):
    seen = []
    f = TensorFile(fp32_file, progress=lambda done, total: seen.append((done, total)))
    for name, want in wide_model.state_dict().items():
        assert torch.equal(f.read(name), want)
    assert seen[-1] == (f.total_bytes, f.total_bytes) and all(
        a <= b for (a, _), (b, _) in zip(seen, seen[1:])
    )


def test_truncated_and_foreign_files_are_clear_errors(tmp_path, fp32_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(fp32_file.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(cut)
    header = {"x": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    with pytest.raises(ValueError, match="I64"):
        TensorFile(odd)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_peak_memory_while_loading_stays_near_the_loaded_size(tmp_path, precision):
    """A 124M-shaped fp32 file (500 MB) loaded in a fresh process: the peak RSS while loading (file-backed
    pages included) is at most 1.3 times the process's RSS once loaded."""
    model = random_model(WIDE.__class__(n_layer=12), seed=0)
    path = save_model(model, tmp_path / "gpt2-124M.safetensors", name="124M")
    del model
    code = f"""
import re, torch, gpt2
def rss(key): return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
base = rss("VmRSS")
m = gpt2.load_model({str(path)!r}, precision={precision!r})
print(base, rss("VmHWM"), rss("VmRSS"), rss("RssFile"))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    base, peak, after, _ = map(int, re.findall(r"\d+", done.stdout.strip().splitlines()[-1]))
    assert peak <= 1.3 * after, (base, peak, after)
