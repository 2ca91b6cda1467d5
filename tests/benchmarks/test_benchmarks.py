"""The decode benchmark runs end to end (its --quick mode) and prints the tables it promises.

Timings are not asserted (the machine is shared and noisy); the tables' shape, the plot, and the
correctness line (every variant's greedy tokens equal to the fast fp32 path's) are. The llama.cpp peer
needs benchmark-only packages (benchmarks/requirements.txt) that CI does not install: where they are
missing, its test checks the printed note and then skips, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import llamacpp
from benchmarks.decode import LABELS, LLAMA, OURS, PAIRS, columns, pair_columns
from benchmarks.sizes import SizeResult, verdict
from gpt2 import GPT2
from gpt2.engine import build

pytestmark = pytest.mark.slow  # each test starts Python processes or runs a benchmark

ROOT = Path(__file__).resolve().parents[2]
LLAMA_MISSING = llamacpp.unavailable_reason()


def run_bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.decode", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def parse_tables(stdout: str) -> list[list[list[str]]]:
    """Every markdown table in the output, as rows of cells (header first, separator dropped)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in stdout.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(cells)
        previous = line
    return tables


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    png, out = tmp / "bench.png", tmp / "bench.json"
    proc = run_bench("--quick", "--plot", str(png), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, png, json.loads(out.read_text())


def test_quick_benchmark_prints_full_table(quick):
    proc, png, summary = quick
    main = parse_tables(proc.stdout)[0]
    assert main[0] == columns([64])
    rows = {r[0]: r for r in main[1:]}
    ours_and_hf = {LABELS[v] for v in ("hf", "plain", *OURS)}
    assert ours_and_hf <= set(rows)
    for label, row in rows.items():
        assert len(row) == len(main[0])
        tok_s, ms_tok = float(row[1]), float(row[2])
        assert tok_s > 0 and abs(tok_s * ms_tok - 1000) < 0.02 * 1000, label
        assert all(float(row[i]) > 0 for i in (3, 4, 5, 6))  # CPU ms, TTFT, prefill 64, MB/token
    assert rows[LABELS["hf"]][9] == rows[LABELS["hf"]][10] == "1.00"  # ratios are to HF
    if build.available("int8"):  # the engine's int8 reads a quarter of fp32's bytes
        assert float(rows[LABELS["int8"]][6]) < 0.3 * float(rows[LABELS["fp32"]][6])
    assert "greedy tokens equal to fast fp32: hf yes, plain yes, fp32 yes" in proc.stdout
    assert "flags: " in proc.stdout and "CPU: " in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["columns"] == main[0] and len(summary["rows"]) == len(rows)
    assert all(len(r["tok_s"]) == 1 for r in summary["results"].values())


def test_llama_cpp_peer_in_quick_run(quick):
    proc, _, summary = quick
    if LLAMA_MISSING:
        # The run above must have said why the llama.cpp rows are missing, not dropped them silently.
        assert f"note: llama.cpp rows skipped: {LLAMA_MISSING}" in proc.stdout
        assert not set(summary["results"]) & set(LLAMA)
        pytest.skip(f"llama.cpp peer not measured: {LLAMA_MISSING}")
    main, pairs = parse_tables(proc.stdout)[:2]
    rows = {r[0]: r for r in main[1:]}
    assert {LABELS[v] for v in LLAMA} <= set(rows)
    assert pairs[0] == pair_columns([64])
    assert [r[0] for r in pairs[1:]] == [f"{o} vs {p.removeprefix('llama-')}" for o, p in PAIRS.items()]
    for row in pairs[1:]:
        assert float(row[1]) > 0 and float(row[2]) > 0
        assert abs(float(row[3]) - float(row[1]) / float(row[2])) < 0.02 * float(row[3]) + 0.01
    # Same weights, same token ids in: llama.cpp's f32 greedy tokens are ours and HF's (its logits are
    # not exact: llama.cpp keeps the KV cache in f16).
    assert "llama-f32 yes" in proc.stdout
    err = {v: summary["results"][v]["rel_logit_err"] for v in LLAMA}
    assert err["llama-f32"] < 2e-3 and err["llama-f16"] < 2e-2 and err["llama-q8_0"] < 5e-2, err
    assert "llama.cpp system info:" in proc.stdout


def test_gguf_names_cover_every_tensor_once():
    for tied in (True, False):
        config = dict(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=3, tied_head=tied)
        with torch.device("meta"):
            keys = list(GPT2(__import__("gpt2").GPT2Config(**config)).state_dict())
        names = [llamacpp.gguf_name(k) for k in keys]
        assert len(set(names)) == len(keys)
        assert "blk.2.ffn_down.bias" in names and "token_embd.weight" in names
        assert ("output.weight" in names) is not tied
    with pytest.raises(ValueError, match="no llama.cpp name"):
        llamacpp.gguf_name("h.0.attn.bias")


def test_gguf_file_holds_our_weights(tmp_path, bpe_dir):
    gguf = pytest.importorskip("gguf", reason="gguf (benchmarks/requirements.txt) not installed")
    from gpt2 import GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=1)).eval()
    ours = {llamacpp.gguf_name(k): v.numpy() for k, v in model.state_dict().items()}
    for kind, tol in (("f32", 0.0), ("f16", 1e-3), ("q8_0", 1e-2)):
        path = llamacpp.write_gguf(model, tmp_path / f"m-{kind}.gguf", kind, bpe_dir)
        reader = gguf.GGUFReader(str(path))
        assert reader.fields["general.architecture"].contents() == "gpt2"
        assert reader.fields["gpt2.block_count"].contents() == 1
        assert reader.fields["tokenizer.ggml.tokens"].contents()[50256] == "<|endoftext|>"
        assert len(reader.fields["tokenizer.ggml.merges"].contents()) == 50000
        assert {t.name for t in reader.tensors} == set(ours)
        for t in reader.tensors:
            got = gguf.dequantize(t.data, t.tensor_type).reshape(ours[t.name].shape)
            scale = float(abs(ours[t.name]).max())
            assert abs(got - ours[t.name]).max() <= tol * scale + 1e-7, (kind, t.name)
    with pytest.raises(ValueError, match="gguf_type"):
        llamacpp.write_gguf(model, tmp_path / "x.gguf", "q4_0", bpe_dir)


def test_sizes_smoke(tmp_path):
    out = tmp_path / "sizes.json"
    proc = run_bench(
        "--sizes", "124M", "--layers", "1", "--variants", "fp32", "--prompt-tokens", "4",
        "--new-tokens", "3", "--rounds", "1", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = parse_tables(proc.stdout)[0]
    assert table[0][:3] == ["size", "params M", "precision"] and len(table) == 2
    size, params, precision, runs_as, load_s, tok_s, _, rss = table[1]
    assert (size, precision, runs_as) == ("124M", "fp32", "fp32")
    assert float(load_s) > 0 and float(tok_s) > 0 and float(rss) > 100
    assert "verdict: " in proc.stdout
    assert json.loads(out.read_text())["results"][0]["error"] == ""


def test_sizes_verdict_picks_the_largest_that_fits():
    rows = [
        SizeResult("124M", 124, "fp32", "fp32", 1, 40, 800),
        SizeResult("355M", 355, "int8", "int8", 1, 16, 900),
        SizeResult("355M", 355, "fp32", "fp32", 1, 12, 1800),
        SizeResult("1558M", 1558, "fp32", "fp32", 1, 3, 7000),
    ]
    assert "up to 355M int8 at 16.0 tok/s" in verdict(rows)
    assert verdict(rows[3:]).startswith("verdict: no size/precision")


def test_bad_arguments_are_refused():
    proc = run_bench("--variants", "hf,nope", timeout=120)
    assert proc.returncode == 2 and "unknown variants ['nope']" in proc.stderr
    proc = run_bench("--sizes", "2B", timeout=120)
    assert proc.returncode != 0 and "unknown ['2B']" in proc.stderr
    if LLAMA_MISSING:
        proc = run_bench("--variants", "fp32,llama-f32", timeout=120)
        assert proc.returncode == 2 and "llama.cpp variants asked for" in proc.stderr


@pytest.mark.skipif(not build.available("fp32"), reason="native engine unavailable")
def test_engine_ab_times_two_builds_side_by_side():
    """The A/B tool builds both sources, alternates them and reports identical bits for identical code."""
    source = str(ROOT / "gpt2" / "engine" / "csrc" / "decode.c")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine_ab", source, source, "--precisions", "fp32,int8"]
        + ["--rows", "1,3", "--reps", "2", "--layers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if " rows=" in line]
    assert len(lines) == 4 and all(line.endswith("same bits True") and "B/A" in line for line in lines)


def test_step_by_step_decode_benchmark_runs():
    """benchmarks.decode_steps (one decode step per system in turn): runs end to end on a 1-layer model,
    ours in two precisions and with 4 KB pages, llama.cpp where it is installed."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.decode_steps", "--layers", "1", "--steps", "3"]
        + ["--precisions", "fp32,int8", "--small-pages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("ours fp32 ", "ours int8 ", "ours int8, 4 KB pages"):
        assert name in proc.stdout and "ms/step" in proc.stdout
    if LLAMA_MISSING:
        assert "llama.cpp: skipped" in proc.stdout
    else:
        assert "llama.cpp q8_0 / this" in proc.stdout
