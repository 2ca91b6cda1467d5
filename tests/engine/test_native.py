"""The native decode engine (gpt2/engine/csrc/decode.c): same logits as the reference, rows apart, safe."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers.engine import PACKED, needs_native, packed_layer, with_engine
from helpers.models import ACT_TOL, REL_TOL, WIDE, random_model
from helpers.reference import hf_from_ours, hf_logits
from helpers.stepping import decode_one, decode_rows, prefill

from gpt2 import GPT2, PRECISIONS, GPT2Config
from gpt2.engine import abi, build, cpu, gemm, threads

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4  # fp32, as tests/spec/test_model.py (REL_TOL, ACT_TOL: the other precisions, in helpers/models.py)

FLAGS = cpu.flags() or set()
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= FLAGS
AVX2 = {"avx2", "fma", "f16c"} <= FLAGS
MARCH = os.environ.get(abi.MARCH_ENV, "native")


def test_native_engine_builds_wherever_it_can():
    """On an AVX-512 or AVX2 machine with a C compiler, a failed build is a bug, not a reason to skip;
    and every precision runs wherever the engine does."""
    if not shutil.which("cc") or os.environ.get("GPT2_NATIVE", "1") == "0":
        assert not build.available("fp32") and build.unavailable_reason()
    elif AVX512 or AVX2 or MARCH != "native":
        for precision in PRECISIONS:
            assert build.available(precision), build.unavailable_reason(precision)
        info = build.info()
        assert info["abi"] == abi.ABI_VERSION and set(info["extensions"]) <= FLAGS  # only what it has
        if MARCH == "native":
            assert info["isa"] == (512 if AVX512 else 256)
    else:
        assert not build.available("fp32") and build.unavailable_reason()


def _pytest_with_march(march: str, cache: Path) -> subprocess.CompletedProcess:
    """This file's and test_native_boundary.py's engine tests, in a fresh process whose library is built
    with -march=`march`."""
    env = dict(os.environ, GPT2_NATIVE_MARCH=march, GPT2_NATIVE_CACHE=str(cache))
    files = [str(Path(__file__)), str(Path(__file__).with_name("test_native_boundary.py"))]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    command += ["-k", "builds_wherever or hugging_face or bit_identical or untied or within or refuses"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(not (AVX512 and AVX2) or MARCH != "native", reason="needs an AVX-512 machine to compare")
@pytest.mark.parametrize("march", ["x86-64-v3"])
def test_other_builds_pass_the_same_tests(tmp_path, march):
    """On an AVX-512 machine, the AVX2 variant (x86-64-v3) is held to the same tests. (The AVX-512 variants
    without BF16/VNNI, skylake-avx512 and icelake-server, run them in test_avx512_builds_compile_and_report
    wherever this CPU can execute them.)"""
    done = _pytest_with_march(march, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout


# -march name -> extensions the build must report using (the kernels differ by these).
AVX512_BUILDS = {
    "skylake-avx512": ({"avx512f", "avx512bw", "avx512vl", "avx512dq"}, {"avx512_bf16", "avx512_vnni"}),
    "icelake-server": ({"avx512f", "avx512_vnni"}, {"avx512_bf16"}),
    "sapphirerapids": ({"avx512f", "avx512_bf16", "avx512_vnni"}, set()),
}


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("cc") or os.environ.get("GPT2_NATIVE", "1") == "0", reason="no compiler")
@pytest.mark.parametrize("march", list(AVX512_BUILDS))
def test_avx512_builds_compile_and_report(tmp_path, march):
    """Every AVX-512 variant compiles anywhere and reports the extensions it uses; a CPU that lacks one
    refuses the library with that reason (and never calls into it). Where the CPU has them, it runs."""
    uses, lacks = AVX512_BUILDS[march]
    env = dict(os.environ, GPT2_NATIVE_MARCH=march, GPT2_NATIVE_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    code = "from gpt2.engine import build as n; print(n.available('fp32')); print(n.unavailable_reason())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ok, reason = done.stdout.strip().split("\n")
    assert len(list(tmp_path.rglob("decode-*.so"))) == 1, reason  # it compiled
    lib = ctypes.CDLL(str(next(tmp_path.rglob("decode-*.so"))))  # only its constant-returning functions
    bits = ctypes.c_int64(lib.gpt2_required_isa()).value
    reported = {name for bit, name in enumerate(abi.ISA_FLAGS) if bits >> bit & 1}
    assert uses <= reported and not lacks & reported
    if reported <= FLAGS:
        assert ok == "True", reason
        done = _pytest_with_march(march, tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    else:  # e.g. this Zen 3: the AVX-512 code cannot execute here, so it must not be called
        assert ok == "False" and "which this CPU lacks" in reason and "avx512f" in reason


def run_sequence(runner, seq: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits at positions prompt_len-1 .. len-2: one prefill, then one decode step per token."""
    cache = runner.new_cache(max_len=seq.shape[0])
    out = [prefill(runner, seq[None, :prompt_len], cache)[0]]
    for t in range(prompt_len, seq.shape[0] - 1):
        out.append(decode_one(runner, int(seq[t]), cache, t)[0])
    return torch.stack(out)


@needs_native
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(WIDE, marks=pytest.mark.slow),  # full width: CI; the fast tier keeps the narrow ones
        GPT2Config(n_ctx=96, n_embd=128, n_head=4, n_layer=2),
        GPT2Config(n_ctx=96, n_embd=64, n_head=4, n_layer=3),
    ],
    ids=["768w-hs64", "128w-hs32", "64w-hs16"],
)
@pytest.mark.parametrize("prompt_len", [1, 20, 40], ids=["prompt1", "prompt20-native", "prompt40-onednn"])
def test_native_fp32_equals_hugging_face(config, prompt_len):
    model = random_model(config, seed=config.n_embd + prompt_len)
    runner = with_engine(model, "fp32")
    assert runner.runtime.engine is not None
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
    got = run_sequence(with_engine(model, "fp32"), seq, 5)
    with torch.no_grad():
        want = model(seq[None, :-1])[0, 4:]
    assert (got - want).abs().max().item() <= TOL


def weights_only_reference(model: GPT2, runner: GPT2) -> GPT2:
    """`model` with every matmul weight (and bias) replaced by the values `runner` stores, computed in
    fp32: what a runner that rounds only its weights should match. The head is untied (the embedding
    table stays fp32 in every mode)."""
    ref = GPT2(GPT2Config(**{**model.config.to_hparams(), "tied_head": False})).eval()
    state = dict(model.state_dict())

    def stored(lin) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = lin.dequantized() if hasattr(lin, "dequantized") else lin.weight
        return w.float(), None if lin.bias is None else lin.bias.float()

    for i, block in enumerate(runner.h):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            lin = block.get_submodule(name)
            state[f"h.{i}.{name}.weight"], state[f"h.{i}.{name}.bias"] = stored(lin)
    state["lm_head.weight"] = runner.wte.weight if runner.lm_head is None else stored(runner.lm_head)[0]
    ref.load_state_dict(state)
    return ref


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("precision", PRECISIONS)
def test_native_precisions_within_tolerance(wide_model, wide_in, precision):
    """Each precision within its tolerance of the fp32 model, and its error all from the weights: against
    the same rounded weights computed in fp32 it is ~100x closer (the activations stay precise)."""
    seq = torch.randint(0, WIDE.n_vocab, (60,), generator=torch.Generator().manual_seed(5))
    runner = wide_in(precision)
    assert runner.runtime.precision == precision and runner.runtime.engine is not None
    got = run_sequence(runner, seq, 10)
    with torch.no_grad():
        want = wide_model(seq[None, :-1])[0, 9:]
        same_weights = weights_only_reference(wide_model, runner)(seq[None, :-1])[0, 9:]
    assert rel_err(got, want) <= REL_TOL[precision]
    assert rel_err(got, same_weights) <= ACT_TOL[precision]
    if precision != "fp32":
        assert rel_err(got, want) > 1e-4  # it really ran in the narrow precision


@needs_native
@pytest.mark.parametrize("precision", PRECISIONS)
def test_batched_rows_are_bit_identical_to_each_row_alone(wide_in, precision):
    """Rows at different positions in scattered slots: each row's logits equal, to the bit, what it gets
    decoded alone, whatever the batch holds and however many threads run (no cross-talk, no reordering)."""
    if not build.available(precision):
        pytest.skip(build.unavailable_reason(precision))
    runner = wide_in(precision)
    g = torch.Generator().manual_seed(8)
    lengths, slots = (7, 3, 12, 5, 9, 2), (5, 0, 2, 6, 1, 3)
    seqs = [torch.randint(0, WIDE.n_vocab, (n,), generator=g) for n in lengths]
    shared = runner.new_cache(batch_size=7, max_len=16)
    alone = []
    for slot, seq in zip(slots, seqs):
        single = runner.new_cache(max_len=16)
        prefill(runner, seq[None, :-1], single)
        shared.k[:, slot : slot + 1] = single.k
        shared.v[:, slot : slot + 1] = single.v
        alone.append(decode_one(runner, int(seq[-1]), single, len(seq) - 1)[0])
    tokens = torch.stack([s[-1] for s in seqs])
    positions = torch.tensor([n - 1 for n in lengths])
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2, 3):  # 3: more threads than a 2-core CI machine has (they sleep, not spin)
            torch.set_num_threads(n_threads)
            for take in (slice(0, 6), slice(0, 5), slice(1, 3)):  # batches of 6, 5 (4 + 1) and 2 rows
                got = decode_rows(runner, tokens[take], positions[take], shared, torch.tensor(slots[take]))
                for row, want in zip(got, alone[take]):
                    assert torch.equal(row, want)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_engine_serves_callers_on_any_thread_at_once(wide_in):
    """The engine's threads are one pool for the process: callers on several threads at once (a server's
    workers, a scheduler) each get exactly what they get alone, and nobody waits forever."""
    runner = wide_in()
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, WIDE.n_vocab, (12,), generator=g) for _ in range(4)]
    want = [run_sequence(runner, seq, 5) for seq in seqs]
    got: list = [None] * len(seqs)

    def call(i: int) -> None:
        for _ in range(3):
            got[i] = run_sequence(runner, seqs[i], 5)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller never returned"
    for g_, w in zip(got, want):
        assert torch.equal(g_, w)


def _decode_in_child(runner, seq, conn) -> None:
    cache = runner.new_cache(max_len=seq.shape[0])
    out = [prefill(runner, seq[None, :5], cache)[0]]
    out += [decode_one(runner, int(t), cache, 5 + i)[0] for i, t in enumerate(seq[5:-1])]
    # Only the engine is under test: libgomp's own threads do not survive a fork either, and a parallel
    # PyTorch op (stacking 350k values) would wait for them forever.
    with threads.single_threaded_torch():
        conn.send(torch.stack(out).numpy().tobytes())  # bytes: a tensor would be sent as shared memory


@needs_native
def test_engine_runs_in_a_forked_child(wide_in):
    """A forked child (multiprocessing's default on Linux) has none of its parent's engine threads: its
    first step starts its own instead of waiting for threads that are not there."""
    import multiprocessing as mp

    runner = wide_in()
    seq = torch.randint(0, WIDE.n_vocab, (12,), generator=torch.Generator().manual_seed(4))
    want = run_sequence(runner, seq, 5)  # the parent's pool is started
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_decode_in_child, args=(runner, seq, child))
    proc.start()
    try:
        assert parent.poll(120), "the child's engine step never finished"
        assert parent.recv() == want.numpy().tobytes()
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


def test_single_threaded_torch_is_per_thread_and_restored():
    """Sampling runs on the calling thread alone; other threads, and this one afterwards, keep theirs."""
    before = torch.get_num_threads()
    seen = {}

    def other() -> None:
        seen["other"] = torch.get_num_threads()

    with threads.single_threaded_torch():
        seen["inside"] = torch.get_num_threads()
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert torch.get_num_threads() == before
    if threads._openmp() is not None:  # a torch built with OpenMP (Linux wheels)
        assert seen["inside"] == 1
        assert seen["other"] == before


@needs_native
@pytest.mark.parametrize("precision", PACKED)
def test_native_linear_within_rounding_of_widening(precision):
    """gpt2_linear, which PyTorch's path uses for packed layers: from 16 rows a blocked GEMM, below that
    the decode kernels. Either way what widening the weight and `F.linear` give, up to the order of the
    sums (and, int8/int4 with few rows, the decode kernels' 16-bit activation codes); sizes that fill no
    whole block (rows, outputs), rows of 1600 inputs (int4: a chunk of scales and a partial vector of
    them) and 3-D inputs included."""
    g = torch.Generator().manual_seed(1)
    for out, in_, bias in (
        (100, 64, True),
        (2304, 768, True),
        (37, 3072, False),
        (50, 128, False),
        (9, 1600, True),
    ):
        lin = packed_layer(precision, out, in_, bias)
        for rows in (1, 5, 15, 16, 37, 200):
            x = torch.randn(rows, in_, generator=g)
            want = torch.nn.functional.linear(x, lin.dequantized(), lin.bias)
            got = gemm.linear(x, lin.weight, lin.scale, lin.bias)
            tol = ACT_TOL[precision] if rows < 16 else 1e-5
            assert got.shape == want.shape and rel_err(got, want) <= tol, (out, in_, rows)
    x = torch.randn(2, 20, in_, generator=g)
    got = gemm.linear(x, lin.weight, lin.scale, lin.bias)
    assert got.shape == (2, 20, out)
    assert rel_err(got, torch.nn.functional.linear(x, lin.dequantized(), lin.bias)) <= 1e-5
