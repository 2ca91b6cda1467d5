"""Every benchmark mode runs end to end on a tiny model and prints and saves what it promises.

Timings are not asserted (the machine is shared and noisy); the tables' shape, the results records, and
the correctness checks (every variant's greedy tokens against ours fp32; texts through the app against
the library's) are. The llama.cpp peer needs benchmark-only packages (benchmarks/requirements.txt) that
CI does not install: where they are missing, its tests check the printed note and then skip, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import decode, fidelity, llamacpp, results, serving, sizes
from gpt2 import GPT2, GPT2Config
from gpt2.engine import build

pytestmark = pytest.mark.slow  # each test starts Python processes or runs a benchmark

ROOT = Path(__file__).resolve().parents[2]
LLAMA_MISSING = llamacpp.unavailable_reason()


def run(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def table(stdout: str, first_cell: str) -> list[list[str]]:
    """The Markdown table in `stdout` whose header starts with `first_cell`: rows of cells, header first."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in stdout.splitlines()]
    start = next(i for i, r in enumerate(rows) if r[0] == first_cell)
    end = next((i for i in range(start, len(rows)) if not stdout.splitlines()[i].startswith("|")), len(rows))
    return [r for r in rows[start:end] if not r[0].startswith("---")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "decode.json"
    variants = "hf,plain,fp32,int8" + ("" if LLAMA_MISSING else ",llama-f32,llama-q8_0,llama-q4_0")
    proc = run("decode", "--quick", "--layers", "1", "--variants", variants, "--save", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_quick_race_prints_and_saves_every_variant(quick):
    proc, record = quick
    rows = {r[0]: r for r in table(proc.stdout, "variant")[1:]}
    by_name = {r["variant"]: r for r in record["variants"]}
    assert set(rows) == {r["label"] for r in record["variants"]}
    for r in record["variants"]:
        assert r["tok_s"] > 0 and r["ttft_ms"] > 0 and r["prefill_ms"]["64"] > 0 and r["mb_per_token"] > 0
        assert rows[r["label"]][1] == f"{r['tok_s']:.1f}"
    assert rows["HF transformers fp32"][9] == "1.00"  # ratios are to HF
    if build.available("int8"):  # int8 reads about a quarter of fp32's bytes
        assert by_name["int8"]["mb_per_token"] < 0.3 * by_name["fp32"]["mb_per_token"]
    assert all(by_name[v]["same_tokens_as_fp32"] for v in ("hf", "plain", "fp32"))
    env = record["environment"]
    assert env["command"].startswith("python -m benchmarks.decode --quick") and env["bandwidth_gbs"] > 0
    assert env["commit"] and f"read bandwidth {env['bandwidth_gbs']}" in proc.stdout
    assert record["settings"]["layers"] == 1
    assert "| ours fp32 |" in results.render_decode(record)


def test_llama_cpp_peers_in_quick_race(quick):
    proc, record = quick
    if LLAMA_MISSING:
        # The run above must say why the llama.cpp rows are missing, not drop them silently.
        assert f"llama.cpp rows skipped: {LLAMA_MISSING}" in proc.stdout
        pytest.skip(f"llama.cpp peer not measured: {LLAMA_MISSING}")
    by_name = {r["variant"]: r for r in record["variants"]}
    assert by_name["fp32"]["peer"] == "llama-f32" and by_name["int8"]["peer"] == "llama-q8_0"
    assert by_name["llama-q4_0"]["mb_per_token"] < by_name["llama-q8_0"]["mb_per_token"]
    # Same weights, same token ids in: llama.cpp's f32 greedy tokens are ours (its logits are not
    # exact: llama.cpp keeps the KV cache in f16).
    assert by_name["llama-f32"]["same_tokens_as_fp32"]
    err = {v: by_name[v]["rel_logit_err"] for v in ("llama-f32", "llama-q8_0", "llama-q4_0")}
    assert err["llama-f32"] < 2e-3 and err["llama-q8_0"] < 5e-2 and err["llama-q4_0"] < 0.5, err
    row = table(proc.stdout, "variant")[[r["variant"] for r in record["variants"]].index("fp32") + 1]
    assert row[11] == results.ratio(by_name["fp32"]["tok_s"], by_name["llama-f32"]["tok_s"])
    assert "llama.cpp built for:" in proc.stdout


def test_gguf_names_cover_every_tensor_once():
    for tied in (True, False):
        config = dict(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=3, tied_head=tied)
        with torch.device("meta"):
            keys = list(GPT2(GPT2Config(**config)).state_dict())
        names = [llamacpp.gguf_name(k) for k in keys]
        assert len(set(names)) == len(keys)
        assert "blk.2.ffn_down.bias" in names and "token_embd.weight" in names
        assert ("output.weight" in names) is not tied
    with pytest.raises(ValueError, match="no llama.cpp name"):
        llamacpp.gguf_name("h.0.attn.bias")


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return GPT2(GPT2Config(n_vocab=50257, n_ctx=64, n_embd=256, n_head=4, n_layer=1)).eval()


def test_gguf_file_holds_our_weights(tmp_path, bpe_dir, small_model):
    gguf = pytest.importorskip("gguf", reason="gguf (benchmarks/requirements.txt) not installed")
    ours = {llamacpp.gguf_name(k): v.numpy() for k, v in small_model.state_dict().items()}
    for kind, tol in (("f32", 0.0), ("f16", 1e-3), ("q8_0", 1e-2)):
        path = llamacpp.write_gguf(small_model, tmp_path / f"m-{kind}.gguf", kind, bpe_dir)
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
        llamacpp.write_gguf(small_model, tmp_path / "x.gguf", "q4_0", bpe_dir)


@pytest.mark.skipif(bool(LLAMA_MISSING), reason=f"llama.cpp peer unavailable: {LLAMA_MISSING}")
def test_llama_cpp_quantizer_makes_4_bit_files_of_our_weights(tmp_path, bpe_dir, small_model):
    import gguf

    ours = {llamacpp.gguf_name(k): v.numpy() for k, v in small_model.state_dict().items()}
    f32 = llamacpp.write_gguf(small_model, tmp_path / "m-f32.gguf", "f32", bpe_dir)
    want = {"q4_0": "Q4_0", "q4_K_M": "Q4_K"}
    for kind, type_name in want.items():
        path = llamacpp.quantize_gguf(f32, tmp_path / f"m-{kind}.gguf", kind)
        assert path.stat().st_size < 0.4 * f32.stat().st_size
        tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        assert tensors["blk.0.ffn_up.weight"].tensor_type.name == type_name
        got = gguf.dequantize(tensors["blk.0.ffn_up.weight"].data, tensors["blk.0.ffn_up.weight"].tensor_type)
        want_w = ours["blk.0.ffn_up.weight"]
        assert abs(got.reshape(want_w.shape) - want_w).max() < 0.2 * abs(want_w).max(), kind
    with pytest.raises(ValueError, match="kind must be one of"):
        llamacpp.quantize_gguf(f32, tmp_path / "x.gguf", "q3_K")
    assert not list(tmp_path.glob("*.partial*"))


def test_sizes_runs_each_precision_in_a_fresh_process(tmp_path):
    out = tmp_path / "sizes.json"
    proc = run(
        "decode", "--sizes", "124M", "--layers", "1", "--variants", "fp32", "--prompt-tokens", "4",
        "--new-tokens", "3", "--rounds", "1", "--streams", "3", "--stream-tokens", "4", "--save", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["sizes"]
    assert (row["size"], row["precision"]) == ("124M", "fp32") and "error" not in row
    assert row["load_s"] > 0 and row["tok_s"] > 0 and row["streams"]["tok_s"] > 0
    assert row["load_peak_rss_mb"] > 100 and row["rss_anon_mb"] > 50 and row["rss_file_mb"] > 0
    assert row["peak_rss_mb"] >= row["load_peak_rss_mb"] and row["streams"]["peak_rss_mb"] > 100
    assert table(proc.stdout, "size")[1][:3] == ["124M", "fp32", row["runs_as"]]
    assert "Verdict: " in proc.stdout


def test_sizes_verdict_picks_the_largest_that_fits():
    def row(size, params, precision, tok_s, peak, streams_peak):
        streams = {"tok_s": 2 * tok_s, "peak_rss_mb": streams_peak}
        return dict(size=size, params_m=params, precision=precision, runs_as=precision, tok_s=tok_s,
                    peak_rss_mb=peak, streams=streams)  # fmt: skip

    rows = [
        row("124M", 124, "fp32", 40, 800, 900),
        row("355M", 355, "int8", 16, 900, 1000),
        row("355M", 355, "fp32", 12, 1800, 1900),
        row("1558M", 1558, "int8", 16, 3000, 15000),  # fast enough, but 8 streams need too much memory
    ]
    assert "up to 355M int8 at 16.0 tok/s" in sizes.verdict(rows)
    assert sizes.verdict(rows[2:3]).startswith("Verdict: no size/precision")


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("decode", ["--variants", "hf,nope"], "unknown variants ['nope']"),
        ("decode", ["--sizes", "2B"], "unknown ['2B']"),
        ("decode", ["--sizes", "124M", "--variants", "hf"], "our precisions only"),
        ("decode", ["--streams", "3"], "go with --sizes"),
        ("decode", ["--small-pages"], "go with --steps"),
        ("decode", ["--steps", "0"], "--steps x (warm + 1)"),
        ("decode", ["--steps", "--variants", "llama-f32"], "our precisions"),
        ("decode", ["--ab", "no-such.c", "no-such.c"], "no such file"),
        ("decode", ["--rows", "1"], "go with --ab"),
        ("decode", ["--sizes", "124M", "--steps"], "not allowed with"),
        ("decode", ["--prefill-tokens", "8"], "at least 17"),
        ("decode", ["--new-tokens", "1"], "need --new-tokens >= 2"),
        ("serving", ["--flood", "4"], "goes with --load"),
        ("serving", ["--load", "--flood", "4", "--sequential", "5"], "not with --sequential"),
        ("serving", ["--load", "--clients", "65"], "--clients 1..64"),
        ("serving", ["--samples", "9"], "--samples 0..4"),
        ("serving", ["--env", "NOEQUALS"], "KEY=VALUE"),
        ("serving", ["--inspect", "--load"], "one at a time"),
        ("fidelity", ["--seeds", "0"], "must be at least 1"),
    ],
)
def test_commands_refuse_bad_arguments(command, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        {"decode": decode, "serving": serving, "fidelity": fidelity}[command].parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_llama_cpp_variant_without_the_packages_is_refused():
    if not LLAMA_MISSING:
        pytest.skip("llama.cpp is installed here")
    proc = run("decode", "--variants", "fp32,llama-f32", timeout=120)
    assert proc.returncode == 2 and "llama.cpp variants asked for" in proc.stderr


@pytest.mark.skipif(not build.available("fp32"), reason="native engine unavailable")
def test_ab_times_two_builds_side_by_side():
    """Both sources built, called in turn, identical bits reported for identical code."""
    source = str(ROOT / "gpt2" / "engine" / "csrc" / "decode.c")
    proc = run("decode", "--ab", source, source, "--variants", "fp32,int8", "--rows", "1,3", "--reps", "2",
               "--layers", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if " rows=" in line]
    assert len(lines) == 4 and all(line.endswith("same bits True") and "B/A" in line for line in lines)


def test_steps_take_turns():
    """Ours in two precisions and with 4 KB pages, llama.cpp where it is installed, one step a turn."""
    proc = run("decode", "--steps", "3", "--layers", "1", "--variants", "fp32,int8", "--small-pages")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("ours fp32 ", "ours int8 ", "ours int8, 4 KB pages"):
        assert name in proc.stdout and "ms/step" in proc.stdout
    assert ("llama.cpp: skipped" in proc.stdout) if LLAMA_MISSING else ("llama.cpp q8_0 " in proc.stdout)


def test_serving_through_the_http_api(tmp_path):
    """The app in its own process, clients in another: every text equals the library's for its seed."""
    out = tmp_path / "serving.json"
    proc = run("serving", "--layers", "1", "--rounds", "1", "--streams", "2", "--new-tokens", "4",
               "--samples", "2", "--sample-tokens", "4", "--save", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    r = record["results"]
    assert r["texts_equal"] == r["texts_checked"] == 3
    assert r["one_stream_tok_s"] > 0 and r["streams_tok_s"] > 0 and r["samples"]["many_s"] > 0
    assert results.render_serving(record).splitlines()[0] in proc.stdout


def test_inspect_through_the_library_the_app_and_chromium(tmp_path):
    """Every measurement of `--inspect` runs and lands in its record and its table."""
    out = tmp_path / "inspect.json"
    args = ["--layers", "1", "--rounds", "1", "--streams", "2", "--new-tokens", "4", "--save", str(out)]
    proc = run("serving", "--inspect", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    r = record["results"]
    assert set(r["trace"]) == {"256", "1024"} and all(
        m["trace_s"] > 0 < m["forward_s"] for m in r["trace"].values()
    )
    assert r["overview"]["tokens"] == 128 and r["overview"]["overview_s"] > 0
    assert r["tap"].get("tokens") == 256 or "skipped" in r["tap"]
    contention = r["contention"]
    assert contention["with_traces"]["trace_s"] > 0 and contention["one_more_stream"]["streams_done_s"] > 0
    assert results.render_inspect(record).splitlines()[0] in proc.stdout
    assert record["environment"]["flags"] and "flags:" in proc.stdout


def test_load_test_through_the_python_client(tmp_path):
    out = tmp_path / "load.json"
    proc = run("serving", "--load", "--layers", "1", "--clients", "2", "--requests", "2",
               "--max-new-tokens", "4", "--disconnect", "1", "--save", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    summary = json.loads(out.read_text())["runs"]["clients"]["summary"]
    assert summary["succeeded"] == summary["verified"] == 4 and summary["mismatched"] == 0
    assert summary["disconnected"] == 1 and summary["server_peak_rss_mb"] > 100


def test_fidelity_holds_each_precision_against_its_own_fp32(tmp_path):
    """Each system's row, its error finite and ordered as its bytes are (f16 < bf16 < int8 < int4), the
    llama.cpp pairs counted, and the saved record rendered as the table it prints."""
    out = tmp_path / "fidelity.json"
    record = fidelity.main(["--seeds", "1", "--layers", "1", "--save", str(out)])
    s = record["summary"]
    norm = {k.removeprefix("ours "): v["norm"] for k, v in s.items() if k.startswith("ours ")}
    assert 0 < norm["f16"] < norm["bf16"] < norm["int8"] < norm["int4"] < 1
    if not LLAMA_MISSING:
        assert set(s["ours int4"]["at_or_under"]) == {"q4_0", "q4_K_M"}
        assert 0 < s["llama.cpp f32 vs ours fp32"]["norm"] < 1e-2
    assert results.render_fidelity(json.loads(out.read_text())) == results.render_fidelity(record)
