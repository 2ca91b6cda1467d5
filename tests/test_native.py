"""The native decode engine (gpt2/csrc/decode.c): same logits as the reference, rows independent, safe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import WIDE, random_model
from reference import hf_from_ours, hf_logits

from gpt2 import GPT2Config, native
from gpt2.fast import PRECISIONS, FastGPT2

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # fp32, as tests/test_parity.py
REL_TOL = {"fp32": 1e-5, "bf16": 1e-2, "int8": 6e-2}  # max |Δ| / max |fp32 logits|


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _cpu_flags()
needs_native = pytest.mark.skipif(
    not native.available("fp32"), reason=f"native engine unavailable: {native.unavailable_reason()}"
)


AVX2 = {"avx2", "fma"} <= _cpu_flags()
MARCH = os.environ.get(native.MARCH_ENV, "native")


def test_native_engine_builds_wherever_it_can():
    """On an AVX-512 or AVX2 machine with a C compiler, a failed build is a bug, not a reason to skip."""
    if not shutil.which("cc") or os.environ.get("GPT2_NATIVE", "1") == "0":
        assert not native.available("fp32") and native.unavailable_reason()
    elif MARCH != "native":  # a build for another instruction set (the AVX2 run below)
        assert native.available("fp32"), native.unavailable_reason()
    elif AVX512:
        assert native.available("fp32"), native.unavailable_reason()
        assert native.available("bf16") == ("avx512_bf16" in _cpu_flags())
        assert native.available("int8") == ("avx512_vnni" in _cpu_flags())
    elif AVX2:
        assert native.available("fp32"), native.unavailable_reason()
        assert not native.available("bf16") and not native.available("int8")
    else:
        assert not native.available("fp32") and native.unavailable_reason()


@pytest.mark.skipif(not (AVX512 and AVX2) or MARCH != "native", reason="needs an AVX-512 machine to compare")
def test_avx2_build_passes_the_same_tests(tmp_path):
    """The AVX2 variant (what a CPU without AVX-512 builds) is built here with -march=x86-64-v3 and held
    to the same tests: parity with Hugging Face, bit-identical batched rows, fp32 only."""
    env = dict(os.environ, GPT2_NATIVE_MARCH="x86-64-v3", GPT2_NATIVE_CACHE=str(tmp_path))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))]
    command += ["-k", "builds_wherever or hugging_face or bit_identical or untied or refuses"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" in done.stdout  # bf16/int8 rows skip: no AVX2 kernels
    probe = "from gpt2 import native; print(native.available('fp32'), native.available('int8'))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False"], out.stderr


def run_sequence(runner, seq: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits at positions prompt_len-1 .. len-2: one prefill, then one decode step per token."""
    cache = runner.new_cache(max_len=seq.shape[0])
    out = [runner.prefill(seq[None, :prompt_len], cache)[0]]
    for t in range(prompt_len, seq.shape[0] - 1):
        out.append(runner.decode_one(int(seq[t]), cache)[0])
    return torch.stack(out)


@needs_native
@pytest.mark.parametrize(
    "config",
    [
        WIDE,
        GPT2Config(n_ctx=96, n_embd=128, n_head=4, n_layer=2),
        GPT2Config(n_ctx=96, n_embd=64, n_head=4, n_layer=3),
    ],
    ids=["768w-hs64", "128w-hs32", "64w-hs16"],
)
@pytest.mark.parametrize("prompt_len", [1, 20, 40], ids=["prompt1", "prompt20-native", "prompt40-onednn"])
def test_native_fp32_equals_hugging_face(config, prompt_len):
    model = random_model(config, seed=config.n_embd + prompt_len)
    runner = FastGPT2(model, "fp32", native=True)
    assert runner.native is not None
    seq = torch.randint(0, config.n_vocab, (80,), generator=torch.Generator().manual_seed(prompt_len))
    got = run_sequence(runner, seq, prompt_len)
    want = hf_logits(hf_from_ours(model), seq[None, :-1])[0, prompt_len - 1 :]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL
    assert want.abs().max() > 0.1


@needs_native
def test_native_untied_head_equals_the_model():
    model = random_model(GPT2Config(n_ctx=64, n_embd=128, n_head=2, n_layer=2, tied_head=False), seed=3)
    seq = torch.randint(0, 50257, (30,), generator=torch.Generator().manual_seed(2))
    got = run_sequence(FastGPT2(model, "fp32", native=True), seq, 5)
    with torch.no_grad():
        want = model(seq[None, :-1])[0, 4:]
    assert (got - want).abs().max().item() <= TOL


@needs_native
@pytest.mark.parametrize("precision", PRECISIONS)
def test_native_precisions_within_tolerance(wide_model, precision):
    if not native.available(precision):
        pytest.skip(native.unavailable_reason(precision))
    seq = torch.randint(0, WIDE.n_vocab, (60,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = wide_model(seq[None, :-1])[0, 9:]
    runner = FastGPT2(wide_model, precision, native=True)
    got = run_sequence(runner, seq, 10)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= REL_TOL[precision]
    if precision != "fp32":
        assert err > 1e-5  # it really ran in the narrow precision


@needs_native
@pytest.mark.parametrize("precision", PRECISIONS)
def test_batched_rows_are_bit_identical_to_each_row_alone(wide_model, precision):
    """Rows at different positions in scattered slots: each row's logits equal, to the bit, what it gets
    decoded alone, whatever the batch holds and however many threads run (no cross-talk, no reordering)."""
    if not native.available(precision):
        pytest.skip(native.unavailable_reason(precision))
    runner = FastGPT2(wide_model, precision, native=True)
    g = torch.Generator().manual_seed(8)
    lengths, slots = (7, 3, 12, 5, 9, 2), (5, 0, 2, 6, 1, 3)
    seqs = [torch.randint(0, WIDE.n_vocab, (n,), generator=g) for n in lengths]
    shared = runner.new_cache(batch_size=7, max_len=16)
    alone = []
    for slot, seq in zip(slots, seqs):
        single = runner.new_cache(max_len=16)
        runner.prefill(seq[None, :-1], single)
        shared.k[:, slot : slot + 1] = single.k
        shared.v[:, slot : slot + 1] = single.v
        alone.append(runner.decode_one(int(seq[-1]), single)[0])
    tokens = torch.stack([s[-1] for s in seqs])
    positions = torch.tensor([n - 1 for n in lengths])
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for take in (slice(0, 6), slice(0, 5), slice(1, 3)):  # batches of 6, 5 (4 + 1) and 2 rows
                got = runner.decode_rows(tokens[take], positions[take], shared, torch.tensor(slots[take]))
                for row, want in zip(got, alone[take]):
                    assert torch.equal(row, want)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_native_refuses_bad_arguments_without_crashing(wide_model):
    runner = FastGPT2(wide_model, "fp32", native=True)
    cache = runner.new_cache(batch_size=2, max_len=8)
    one = torch.tensor([1])
    with pytest.raises(ValueError, match="slots"):
        runner.decode_rows(one, torch.tensor([0]), cache, torch.tensor([2]))
    with pytest.raises(ValueError, match="refused"):
        runner.native.forward(torch.tensor([WIDE.n_vocab]), torch.tensor([0]), one * 0, cache.k, cache.v)
    with pytest.raises(ValueError, match="refused"):
        runner.native.forward(one, torch.tensor([8]), one * 0, cache.k, cache.v)
    with pytest.raises(ValueError, match="fp32"):
        runner.native.forward(one, one * 0, one * 0, cache.k.bfloat16(), cache.v.bfloat16())
    # and it still works afterwards
    assert torch.isfinite(runner.decode_rows(one, torch.tensor([0]), cache, torch.tensor([1]))).all()


def test_disabled_engine_falls_back_to_torch_with_a_reason(tmp_path):
    code = (
        "import torch, pytest\n"
        "from gpt2 import GPT2, GPT2Config, native\n"
        "from gpt2.fast import FastGPT2\n"
        "m = GPT2(GPT2Config(n_ctx=32, n_embd=64, n_head=4, n_layer=1)).eval()\n"
        "assert FastGPT2(m).native is None\n"
        "assert 'GPT2_NATIVE=0' in native.unavailable_reason()\n"
        "with pytest.raises(RuntimeError, match='GPT2_NATIVE=0'):\n"
        "    FastGPT2(m, native=True)\n"
        "c = FastGPT2(m).new_cache()\n"
        "FastGPT2(m).prefill(torch.tensor([[1, 2]]), c)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, GPT2_NATIVE="0", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@needs_native
def test_build_is_cached_per_cpu_and_source(tmp_path):
    """A fresh cache folder gets one library; a second process reuses it instead of compiling again."""
    env = dict(os.environ, GPT2_NATIVE_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    code = "from gpt2 import native; assert native.available(); print(native._load()._name)"

    def run() -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", code]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    first = run()
    assert first.returncode == 0, first.stderr
    built = list(tmp_path.rglob("decode-*.so"))
    assert len(built) == 1 and first.stdout.strip() == str(built[0])
    mtime = built[0].stat().st_mtime_ns
    second = run()
    assert second.returncode == 0 and second.stdout.strip() == str(built[0])
    assert built[0].stat().st_mtime_ns == mtime and len(list(tmp_path.rglob("*.so"))) == 1


@needs_native
def test_a_folder_others_can_write_into_is_not_used(tmp_path):
    """The library is never loaded from (or built into) a folder writable by other users."""
    shared = tmp_path / "shared"
    (shared / "gpt2-handbuilt").mkdir(parents=True)
    (shared / "gpt2-handbuilt").chmod(0o777)
    env = dict(os.environ, GPT2_NATIVE_CACHE=str(shared), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(ROOT))
    (tmp_path / "tmp").mkdir()
    code = "from gpt2 import native; native.available(); print(native._load()._name)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / "tmp"))  # the private fallback, not `shared`
    assert not list((shared / "gpt2-handbuilt").iterdir())
