"""The engine's checked boundary (gpt2/engine/csrc/decode.c through gpt2/engine/binding.py): every malformed
call, weight or library is refused with a reason, in Python first and again in C, and nothing crashes."""

from __future__ import annotations

import copy
import ctypes
import os
import subprocess
import sys

import pytest
import torch
from helpers.engine import needs_native, packed_layer, with_engine
from helpers.models import ROOT, WIDE, random_model
from helpers.stepping import decode_rows, prefill

from gpt2 import GPT2, PRECISIONS, GPT2Config, prepare
from gpt2.engine import abi, binding, build, gemm
from gpt2.engine.binding import native_spec


def _bad_calls(n_vocab: int, k: torch.Tensor, v: torch.Tensor) -> list[tuple[str, dict]]:
    """(message, forward kwargs) pairs, each one thing wrong, for a cache of 2 slots x 8 positions."""
    one, zero = torch.tensor([1]), torch.tensor([0])
    ok = dict(tokens=one, positions=zero, slots=zero, k=k, v=v)
    meta = torch.empty(1, dtype=torch.int64, device="meta")

    def position_major(t: torch.Tensor) -> torch.Tensor:  # same shape, each head_dim column contiguous
        return t.transpose(3, 4).contiguous().transpose(3, 4)

    return [
        ("tokens must be a tensor", dict(ok, tokens=[1])),
        ("tokens must be 1-D", dict(ok, tokens=one[None])),
        ("at least one entry", dict(ok, tokens=one[:0], positions=zero[:0], slots=zero[:0])),
        ("tokens must be an integer", dict(ok, tokens=one.float())),
        ("tokens must be on the CPU", dict(ok, tokens=meta)),
        ("positions has 2 entries", dict(ok, positions=torch.tensor([0, 1]))),
        ("slots has 2 entries", dict(ok, slots=torch.tensor([0, 1]))),
        ("positions must be an integer", dict(ok, positions=zero.bool())),
        # values are GPT2.step's to check; called directly, C's last-line guard refuses them
        ("token id is outside the vocabulary", dict(ok, tokens=torch.tensor([n_vocab]))),
        ("token id is outside the vocabulary", dict(ok, tokens=torch.tensor([-1]))),
        ("position is outside the cache", dict(ok, positions=torch.tensor([8]))),
        ("position is outside the cache", dict(ok, positions=torch.tensor([-3]))),
        ("cache slot is outside the cache", dict(ok, slots=torch.tensor([2]))),
        ("logits_from", dict(ok, logits_from=2)),
        ("logits_from", dict(ok, logits_from=-1)),
        ("logits_from", dict(ok, logits_from=True)),
        ("fp32 CPU caches", dict(ok, k=k.bfloat16(), v=v.bfloat16())),
        ("fp32 CPU caches", dict(ok, k=torch.empty(k.shape, device="meta"))),
        ("fp32 CPU caches", dict(ok, v=[v])),
        ("cache k must have shape", dict(ok, k=k[:1], v=v[:1])),  # one layer of two
        ("cache k must have shape", dict(ok, k=k[..., :32], v=v[..., :32])),  # half a head
        ("cache k must have shape", dict(ok, k=k[0], v=v[0])),
        ("same shape and strides", dict(ok, v=v[:, :1])),
        ("same shape and strides", dict(ok, v=position_major(v))),
        ("layout", dict(ok, k=position_major(k), v=position_major(v))),
        ("layout", dict(ok, k=k[:, :1].expand(k.shape), v=v[:, :1].expand(v.shape))),  # slots aliased
    ]


@needs_native
@pytest.mark.parametrize("precision", PRECISIONS)
def test_native_refuses_bad_arguments_without_crashing(wide_in, precision):
    """Every malformed call is a ValueError that says what is wrong: the binding refuses what C cannot
    see (types, lengths, layouts) before calling it, C refuses out-of-range values before touching
    anything; the engine and the cache are untouched and decoding gives the same logits afterwards."""
    runner = wide_in(precision)
    cache = runner.new_cache(batch_size=2, max_len=8)
    prefill(runner, torch.tensor([[5, 6, 7]]), cache)
    before = runner.runtime.engine.native.forward(
        torch.tensor([9]), torch.tensor([3]), torch.tensor([0]), cache.k, cache.v
    )
    k0, v0 = cache.k.clone(), cache.v.clone()
    for message, kwargs in _bad_calls(WIDE.n_vocab, cache.k, cache.v):
        with pytest.raises(ValueError, match=message):
            runner.runtime.engine.native.forward(**kwargs)
    assert torch.equal(cache.k, k0) and torch.equal(cache.v, v0)
    with pytest.raises(ValueError, match="slots"):  # and through GPT2.step's own checks
        decode_rows(runner, torch.tensor([1]), torch.tensor([0]), cache, torch.tensor([2]))
    after = runner.runtime.engine.native.forward(
        torch.tensor([9]), torch.tensor([3]), torch.tensor([0]), cache.k, cache.v
    )
    assert torch.equal(before, after)


@needs_native
def test_native_linear_refuses_bad_arguments():
    """Python says what does not fit before calling C; called directly, C refuses with a code and
    writes nothing."""
    lin8, lin16, lin4 = (packed_layer(p, 32, 64, True) for p in ("int8", "bf16", "int4"))
    x = torch.randn(3, 64)
    bad = [
        ("fp32 CPU tensor", (x.double(), lin16.weight, None, lin16.bias)),
        ("multiple of 64 features", (torch.randn(3, 48), lin16.weight, None, lin16.bias)),
        ("linear weight must have shape", (torch.randn(3, 128), lin16.weight, None, lin16.bias)),
        (
            "takes torch.bfloat16, torch.float16, torch.int8, torch.uint8 weights",
            (x, lin16.weight.float(), None, None),
        ),
        ("int8 weights need one fp32 scale per output row", (x, lin8.weight, None, lin8.bias)),
        ("bf16 weights take no scales", (x, lin16.weight, lin8.scale, lin16.bias)),
        (r"scale must have shape \(32,\)", (x, lin8.weight, lin8.scale[:16], lin8.bias)),
        ("bias must be torch.float32", (x, lin16.weight, None, lin16.bias.double())),
        ("2-D", (x, lin16.weight[None], None, lin16.bias)),
        # int4: uint8 codes [out, in / 2] and f16 scales [out, in / 32]
        ("int4 weights need f16 scales, one per 32 inputs", (x, lin4.weight, None, lin4.bias)),
        (r"linear weight must have shape \(32, 32\)", (x, lin4.weight.repeat(1, 2), lin4.scale, None)),
        # int8 codes are int8 weights: [out, in]
        (r"weight must have shape \(32, 64\), got \(32, 32\)", (x, lin4.weight.view(torch.int8), None, None)),
        (r"linear scale must have shape \(32, 2\)", (x, lin4.weight, lin4.scale[:, :1], None)),
        ("linear scale must be torch.float16", (x, lin4.weight, lin4.scale.float(), None)),
    ]
    for message, args in bad:
        with pytest.raises(ValueError, match=message):
            gemm.linear(*args)
    lib = build.library()
    y, rows = torch.zeros(3, 32), x.data_ptr()

    def call(lin=lin8, n=3, precision=2, in_=64, scale=True, xp=rows):
        s = lin.scale.data_ptr() if scale and lin.scale is not None else None
        spec = abi.Linear(lin.weight.data_ptr(), s, None, 32, in_, precision)
        return lib.gpt2_linear(ctypes.byref(spec), xp, n, y.data_ptr(), 1)

    got = [call(xp=None), call(n=0), call(precision=0), call(precision=9), call(precision=-1)]
    got += [call(in_=48), call(scale=False), call(lin=lin4, precision=4, scale=False), call(in_=32)]
    assert got == [-1, -5, -4, -4, -4, -3, -3, -3, -3]
    assert y.abs().sum() == 0 and call() == 0 and y.abs().sum() > 0
    y.zero_()
    assert call(lin=lin4, precision=4) == 0 and y.abs().sum() > 0


@needs_native
def test_positions_beyond_the_model_context_are_refused():
    """A cache longer than the model's context (n_ctx rows of position embeddings) cannot be indexed
    past n_ctx: the engine would read beyond wpe."""
    config = GPT2Config(n_ctx=16, n_embd=64, n_head=4, n_layer=1)
    runner = with_engine(random_model(config), "fp32")
    k = torch.zeros(1, 1, 4, 32, 16)
    call = dict(tokens=torch.tensor([1]), slots=torch.tensor([0]), k=k, v=torch.zeros_like(k))
    assert torch.isfinite(runner.runtime.engine.native.forward(positions=torch.tensor([15]), **call)).all()
    with pytest.raises(ValueError, match="position is outside the cache or the model's context"):
        runner.runtime.engine.native.forward(positions=torch.tensor([16]), **call)


@needs_native
def test_the_c_side_checks_again():
    """Called directly (as a caller skipping Python's checks would), gpt2_forward refuses with a code
    from abi.ERRORS and writes nothing."""
    config = GPT2Config(n_ctx=16, n_embd=64, n_head=4, n_layer=1)
    eng = with_engine(random_model(config), "int4").runtime.engine.native
    k, v, logits = torch.zeros(1, 2, 4, 8, 16), torch.zeros(1, 2, 4, 8, 16), torch.zeros(1, config.n_vocab)

    def call(tokens=(1,), positions=(0,), slots=(0,), n=None, logits_from=0, model=None, **cache_fields):
        t, p, s = (torch.tensor(x, dtype=torch.int64) for x in (tokens, positions, slots))
        cache = abi.Cache(k.data_ptr(), v.data_ptr(), *k.stride()[:3], 1, 2, 4, 8, 16)
        for name, value in cache_fields.items():
            setattr(cache, name, value)
        model = eng._model if model is None else model
        args = (n if n is not None else t.shape[0], t.data_ptr(), p.data_ptr(), s.data_ptr(), logits_from)
        return eng._lib.gpt2_forward(ctypes.byref(model), ctypes.byref(cache), *args, logits.data_ptr(), 1)

    assert call() == 0 and logits.abs().sum() > 0
    for t in (logits, k, v):
        t.zero_()

    def model_with(**fields) -> abi.Model:
        m = abi.Model.from_buffer_copy(eng._model)
        for name, value in fields.items():
            setattr(m, name, value)
        return m

    head = eng._model.head  # int8 in an int4 model
    assert head.precision == abi.PRECISION_CODES["int8"]

    def head_with(**fields) -> abi.Linear:
        lin = abi.Linear.from_buffer_copy(head)
        for name, value in fields.items():
            setattr(lin, name, value)
        return lin

    layers = (abi.Layer * 1).from_buffer_copy(eng._layers)
    layers[0].fc.scale = None  # int4 needs its scales
    refused = [
        (-1, call(k=None)),
        (-2, call(model=model_with(n_head=3))),
        (-3, call(model=model_with(head=head_with(scale=None)))),  # int8 needs its scales too
        (-3, call(model=model_with(layers=layers))),
        (-3, call(model=model_with(head=head_with(in_=128)))),
        (-4, call(model=model_with(head=head_with(precision=7)))),
        (-4, call(model=model_with(head=head_with(precision=-1)))),
        (-5, call(n=0)),
        (-5, call(logits_from=2)),
        (-6, call(n_head=2)),
        (-6, call(head_stride=8)),  # positions of two heads would overlap
        (-7, call(tokens=(config.n_vocab,))),
        (-8, call(positions=(8,))),
        (-9, call(slots=(2,))),
    ]
    assert [got for _, got in refused] == [code for code, _ in refused]
    assert {code for code, _ in refused} <= set(abi.ERRORS)
    assert logits.abs().sum() == 0 and k.abs().sum() == 0 and v.abs().sum() == 0


def test_error_codes_have_messages():
    source = (ROOT / "gpt2" / "engine" / "csrc" / "decode.c").read_text()
    codes = {
        int(line.split("=")[1].split(",")[0])
        for line in source.splitlines()
        if "GPT2_E_" in line and "= -" in line
    }
    assert codes == set(abi.ERRORS)
    assert f"#define GPT2_ABI_VERSION {abi.ABI_VERSION}\n" in source


def _spec_of(runner: GPT2) -> dict:
    """NativeModel's keyword arguments as the engine builds them (bf16: no scales)."""
    spec = native_spec(runner)
    return dict(spec, head=(spec["head"][0], None, None))


def _set(spec: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        spec = spec[key]
    spec[path[-1]] = value


# (what to replace in the spec, with what, given the spec) -> the message expected
WEIGHT_CHANGES = {
    "fc-shape": (("layers", 0, "fc"), lambda s: s["layers"][0]["mlp"], "h.0.fc weight must have shape"),
    "wpe-rows": (("wpe",), lambda s: s["wpe"][:-1], "wpe must have shape"),
    "wte-dtype": (("wte",), lambda s: s["wte"].double(), "wte must be torch.float32"),
    "layers": (("layers",), lambda s: s["layers"][:1], "1 layers, its config says 2"),
    "ln-shape": (("layers", 1, "ln_2"), lambda s: (s["wte"][0][:-1], s["wte"][1]), "ln_2 weight must"),
    "head-shape": (("head",), lambda s: (s["head"][0].t(), None, None), "head weight must have shape"),
    "head-dtype": (
        ("head",),
        lambda s: (s["head"][0].float(), None, None),
        "head weight must be torch.bfloat16",
    ),
    "scales": (("head",), lambda s: (s["head"][0], torch.ones(WIDE.n_vocab), None), "scales"),
    "strided": (("layers", 0, "proj"), lambda s: (s["layers"][0]["proj"][0].t(), None, None), "contiguous"),
    "device": (("ln_f",), lambda s: (s["ln_f"][0].to("meta"), s["ln_f"][1]), "on the CPU"),
}


@needs_native
@pytest.mark.parametrize("change", list(WEIGHT_CHANGES))
def test_native_model_checks_its_weights(wide_in, change):
    """NativeModel refuses weights that do not match the config, before any call can use them."""
    spec = _spec_of(wide_in("bf16"))
    binding.NativeModel("bf16", WIDE, **spec)  # as the engine builds it: fine
    path, value, message = WEIGHT_CHANGES[change]
    spec["layers"] = [dict(d) for d in spec["layers"]]
    _set(spec, path, value(spec))
    with pytest.raises(ValueError, match=message):
        binding.NativeModel("bf16", WIDE, **spec)


def _replace(spec: dict, name: str, part: int, value) -> tuple:
    """Layer 0's linear `name` with its weight (0), scale (1) or bias (2) replaced."""
    triple = list(spec["layers"][0][name])
    triple[part] = value(triple[part])
    return tuple(triple)


# int4 blocks (uint8 codes [out, in / 2], f16 scales [out, in / 32]) and their int8 head (fp32 row scales)
INT4_CHANGES = {
    "codes-dtype": (
        "fc",
        lambda s: _replace(s, "fc", 0, lambda w: w.view(torch.int8)),
        "fc weight must be torch.uint8",
    ),
    "codes-shape": (
        "fc",
        lambda s: _replace(s, "fc", 0, lambda w: w.repeat(1, 2)),
        r"fc weight must have shape",
    ),
    "no-scales": ("proj", lambda s: _replace(s, "proj", 1, lambda _: None), "int4 weights need f16 scales"),
    "scales-dtype": (
        "mlp",
        lambda s: _replace(s, "mlp", 1, lambda c: c.float()),
        "mlp scale must be torch.float16",
    ),
    "scales-shape": (
        "attn",
        lambda s: _replace(s, "attn", 1, lambda c: c[:, 1:].contiguous()),
        r"\(2304, 24\)",
    ),
    "head-scales": (None, lambda s: dict(s, head=s["head"][:1] + (None, None)), "int8 weights need one fp32"),
    "head-as-int4": (None, lambda s: dict(s, head_precision="int4"), "head weight must be torch.uint8"),
}


@needs_native
@pytest.mark.parametrize("change", list(INT4_CHANGES))
def test_native_model_refuses_bad_packed_storage(wide_in, change):
    """Each linear layer is checked in its own precision: an int4 model's codes and scales (dtype, shape)
    and its int8 head, before C ever sees them."""
    spec = native_spec(wide_in("int4"))
    assert spec["head_precision"] == "int8"
    binding.NativeModel("int4", WIDE, **spec)  # as the engine builds it: fine
    name, change_spec, message = INT4_CHANGES[change]
    spec["layers"] = [dict(d) for d in spec["layers"]]
    if name is None:
        spec = change_spec(spec)
    else:
        spec["layers"][0][name] = change_spec(spec)
    with pytest.raises(ValueError, match=message):
        binding.NativeModel("int4", WIDE, **spec)


def _probe(code: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


@needs_native
@pytest.mark.parametrize(
    "patch, reason",
    [
        ("a.ABI_VERSION = 99", f"the library has ABI {abi.ABI_VERSION}, this module expects 99"),
        (
            "class Short(a.ctypes.Structure):\n    _fields_ = a.Cache._fields_[:-1]\n"
            "a.STRUCTS = a.STRUCTS[:3] + (Short,)",
            "struct Short is 80 bytes in C, 72 in Python",
        ),
        (
            "a.ISA_FLAGS = ('not_a_real_cpu_flag',) + a.ISA_FLAGS[1:]",
            "not_a_real_cpu_flag, which this CPU lacks",
        ),
    ],
    ids=["abi", "struct-size", "cpu-extension"],
)
@pytest.mark.slow
def test_a_mismatched_library_is_unavailable_with_a_reason(tmp_path, patch, reason):
    """Python and the library must agree on the ABI version, the structs' sizes and what the CPU can
    run; any mismatch makes the engine unavailable (never called), with the reason."""
    code = "import gpt2.engine.abi as a, gpt2.engine.build as n\n"
    code += f"{patch}\nprint(n.available('fp32')); print(n.unavailable_reason())"
    done = _probe(code, GPT2_NATIVE_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "False" and reason in done.stdout, done.stdout


@pytest.mark.slow
@needs_native
def test_narrow_precisions_are_used_not_replaced(wide_model):
    """Where the engine runs every precision, asking for one gives it on the engine (no fp32 fallback, no
    warning), and the log line says so (int4 with its int8 head); with the engine off, bf16/int8 still run
    (on PyTorch's path) and say why they are not fast."""
    import warnings

    from gpt2.engine import describe

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in PRECISIONS:
            model = prepare(copy.deepcopy(wide_model), p)
            assert (
                model.runtime.precision == p
                and model.runtime.engine is not None
                and model.runtime.engine.precision == p
            )
            shown = "int4 (head int8)" if p == "int4" else p
            assert describe(model).startswith(f"native engine (gpt2/engine/csrc/decode.c), {shown}")
    code = (
        "import warnings, torch\n"
        "from gpt2 import GPT2, GPT2Config, prepare\n"
        "m = GPT2(GPT2Config(n_ctx=32, n_embd=64, n_head=4, n_layer=1)).eval()\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    m = prepare(m, 'int8')\n"
        "    print(m.runtime.precision, m.runtime.engine, w[0].message)\n"
    )
    done = _probe(code, GPT2_NATIVE="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("int8 None ") and "GPT2_NATIVE=0" in done.stdout


@pytest.mark.slow
def test_disabled_engine_falls_back_to_torch_with_a_reason(tmp_path):
    code = (
        "import torch, pytest\n"
        "from gpt2 import GPT2, GPT2Config, prepare\n"
        "from gpt2.engine import build\n"
        "m = GPT2(GPT2Config(n_ctx=32, n_embd=64, n_head=4, n_layer=1)).eval()\n"
        "assert prepare(m).runtime.engine is None\n"
        "assert 'GPT2_NATIVE=0' in build.unavailable_reason()\n"
        "with pytest.raises(RuntimeError, match='GPT2_NATIVE=0'):\n"
        "    prepare(m, engine=True)\n"
        "c = m.new_cache()\n"
        "z = torch.zeros(2, dtype=torch.long)\n"
        "assert m.step(torch.tensor([1, 2]), torch.arange(2), z, c, 1).shape == (1, 50257)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, GPT2_NATIVE="0", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow
@needs_native
def test_build_is_cached_per_cpu_and_source(tmp_path):
    """A fresh cache folder gets one library; a second process reuses it instead of compiling again."""
    env = dict(os.environ, GPT2_NATIVE_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    code = "from gpt2.engine import build; assert build.available(); print(build.library()._name)"

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


@pytest.mark.slow
@needs_native
def test_a_folder_others_can_write_into_is_not_used(tmp_path):
    """The library is never loaded from (or built into) a folder writable by other users."""
    loose = tmp_path / "world-writable"
    (loose / "gpt2-handbuilt").mkdir(parents=True)
    (loose / "gpt2-handbuilt").chmod(0o777)
    env = dict(os.environ, GPT2_NATIVE_CACHE=str(loose), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(ROOT))
    (tmp_path / "tmp").mkdir()
    code = "from gpt2.engine import build; build.available(); print(build.library()._name)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / "tmp"))  # the private fallback, not `loose`
    assert not list((loose / "gpt2-handbuilt").iterdir())
