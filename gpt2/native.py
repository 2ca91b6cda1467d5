"""The native decode engine: `csrc/decode.c`, compiled for this CPU on first use and called via ctypes.

`gpt2.engine` binds it to a `GPT2` (`GPT2.step` then runs decode steps and short prompts here); longer
prompts, and any machine where it is not available, keep the PyTorch path, whose bf16/int8 layers call
`linear` (the engine's GEMM) where it is built. It is built with the system C
compiler (`cc -O3 -march=native -fopenmp`) into a per-user cache keyed by the source, the flags and the CPU,
in about a second, once. On AVX-512 (F/BW/VL/DQ) and on AVX2 + FMA it serves fp32, bf16 and int8 (see the
top of decode.c for the kernels). Nothing here is required: no compiler, an older CPU, or `GPT2_NATIVE=0`
in the environment all mean `available()` is False and the reason is in `unavailable_reason()`.

The boundary is checked on both sides: the library must report this module's ABI version, struct sizes
and only CPU extensions this CPU has before anything else is called; `NativeModel` checks every weight's
shape and dtype against the config once, and every call's tensors (lengths, dtypes, devices, layouts,
index ranges) before crossing into C, which checks them again and answers with a code (`ERRORS`).

The library runs its work on its own threads (one pool per process, whichever thread calls, one call at
a time; decode.c says why not OpenMP). ctypes releases the GIL during the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "decode.c"
# `-march=native`: the build uses whatever this CPU has (AVX-512, else AVX2); GPT2_NATIVE_MARCH overrides
# it, e.g. "x86-64-v3" to build and test the AVX2 variant on an AVX-512 machine.
MARCH_ENV = "GPT2_NATIVE_MARCH"


def _flags() -> list[str]:
    march = os.environ.get(MARCH_ENV, "native")
    if not march.replace("-", "").replace("_", "").isalnum():
        raise RuntimeError(f"{MARCH_ENV} must be a -march name like native or x86-64-v3, got {march!r}")
    return ["-O3", f"-march={march}", "-fopenmp", "-pthread", "-shared", "-fPIC", "-std=gnu11"]


PRECISION_CODES = {"fp32": 0, "bf16": 1, "int8": 2}
_FEATURE_BITS = {"fp32": 1, "bf16": 2, "int8": 4}
# The storage dtype of a linear layer's weight in each precision (row-major [out, in]).
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
# decode.c's GPT2_ABI_VERSION: the structs below, the entry points and the error codes. A library that
# reports another number is never called (a stale build, or a source edited without updating this).
ABI_VERSION = 4
# gpt2_required_isa()'s bits, as /proc/cpuinfo names the extensions.
_ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512vbmi",
    "avx512_fp16",
)
# gpt2_forward's return codes (GPT2_E_* in decode.c).
ERRORS = {
    -1: "a required pointer was NULL",
    -2: "the model's sizes are not ones the engine runs (n_embd a multiple of 64, head_dim 16/32/48/64)",
    -3: "a weight's shape does not match the model",
    -4: "the precision is unknown or not built for this CPU",
    -5: "the token count is below 1 or logits_from is outside [0, n]",
    -6: "the cache's shape or strides do not fit the model",
    -7: "a token id is outside the vocabulary",
    -8: "a position is outside the cache or the model's context",
    -9: "a cache slot is outside the cache",
    -10: "out of memory for the step's scratch buffers",
    -11: "the engine's threads could not be started",
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None


class _Linear(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("out", ctypes.c_int64),
        ("in_", ctypes.c_int64),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("ln1_w", ctypes.c_void_p),
        ("ln1_b", ctypes.c_void_p),
        ("ln2_w", ctypes.c_void_p),
        ("ln2_b", ctypes.c_void_p),
        ("attn", _Linear),
        ("proj", _Linear),
        ("fc", _Linear),
        ("mlp", _Linear),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int64),
        ("n_embd", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("n_vocab", ctypes.c_int64),
        ("n_ctx", ctypes.c_int64),
        ("precision", ctypes.c_int64),
        ("wte", ctypes.c_void_p),
        ("wpe", ctypes.c_void_p),
        ("lnf_w", ctypes.c_void_p),
        ("lnf_b", ctypes.c_void_p),
        ("head", _Linear),
        ("layers", ctypes.POINTER(_Layer)),
    ]


class _Cache(ctypes.Structure):
    _fields_ = [
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("layer_stride", ctypes.c_int64),
        ("slot_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
        ("n_layer", ctypes.c_int64),
        ("n_slots", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("max_len", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
    ]


_STRUCTS = (_Linear, _Layer, _Model, _Cache)  # in gpt2_struct_size's order


def cpu_flags() -> set[str] | None:
    """This CPU's extension flags as /proc/cpuinfo lists them (None where there is no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and flags (a cached build is only reused there)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    base = os.environ.get("GPT2_NATIVE_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "gpt2-handbuilt"


def _private(folder: Path) -> bool:
    """Owned by this user and not writable by group or others (so nobody can plant a library there)."""
    st = folder.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = _flags()
    parts = [source, " ".join(flags).encode(), version.encode(), _cpu_signature().encode()]
    key = hashlib.sha256(b"\0".join(parts))
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"gpt2-handbuilt-{os.getuid()}"):
        target = folder / f"decode-{key.hexdigest()[:16]}.so"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(folder):
                continue  # a library is only loaded from a folder nobody else can write into
            if target.is_file():
                return target
            # Build under a temporary name, then rename: concurrent processes never load a half-written file.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        except OSError:
            continue
        os.close(fd)
        try:
            done = subprocess.run(
                [compiler, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[:2000]}")
            os.replace(tmp, target)
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"no private writable cache folder for the native library (tried {_cache_dir()})")


def _declare(lib: ctypes.CDLL) -> None:
    """Give every entry point its C signature (ctypes would otherwise assume int everywhere)."""
    for name, restype in (
        ("gpt2_abi_version", ctypes.c_int),
        ("gpt2_isa", ctypes.c_int),
        ("gpt2_features", ctypes.c_int),
        ("gpt2_required_isa", ctypes.c_int64),
    ):
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = []
    lib.gpt2_struct_size.restype = ctypes.c_int64
    lib.gpt2_struct_size.argtypes = [ctypes.c_int]
    lib.gpt2_forward.restype = ctypes.c_int
    lib.gpt2_forward.argtypes = [
        ctypes.POINTER(_Model),
        ctypes.POINTER(_Cache),
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    lib.gpt2_linear.restype = ctypes.c_int
    lib.gpt2_linear.argtypes = [
        ctypes.POINTER(_Linear),
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
    ]


def _check_library(lib: ctypes.CDLL) -> None:
    """Refuse (RuntimeError with the reason) a library this module must not call: another ABI, structs
    of other sizes, or instructions this CPU lacks (a GPT2_NATIVE_MARCH build for another machine)."""
    if not hasattr(lib, "gpt2_abi_version"):
        raise RuntimeError(f"the library predates the ABI check (this module needs ABI {ABI_VERSION})")
    _declare(lib)
    version = lib.gpt2_abi_version()
    if version != ABI_VERSION:
        raise RuntimeError(f"the library has ABI {version}, this module expects {ABI_VERSION}")
    for i, struct in enumerate(_STRUCTS):
        size = lib.gpt2_struct_size(i)
        if size != ctypes.sizeof(struct):
            name = struct.__name__.lstrip("_")
            raise RuntimeError(f"struct {name} is {size} bytes in C, {ctypes.sizeof(struct)} in Python")
    flags = cpu_flags()
    required = lib.gpt2_required_isa()
    needs = [name for bit, name in enumerate(_ISA_FLAGS) if required >> bit & 1]
    missing = [name for name in needs if flags is not None and name not in flags]
    if missing:
        march = os.environ.get(MARCH_ENV, "native")
        raise RuntimeError(f"built with -march={march} for {', '.join(missing)}, which this CPU lacks")
    if lib.gpt2_features() == 0:
        raise RuntimeError("this CPU has neither AVX-512 (F/BW/VL/DQ) nor AVX2 with FMA")


def _load() -> ctypes.CDLL | None:
    global _lib, _reason
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        try:
            if os.environ.get("GPT2_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
                raise RuntimeError("disabled by GPT2_NATIVE=0")
            if platform.machine().lower() not in ("x86_64", "amd64"):
                raise RuntimeError(f"x86-64 only (this is {platform.machine()})")
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if not compiler:
                raise RuntimeError("no C compiler (cc/gcc) on PATH")
            lib = ctypes.CDLL(str(_build(compiler)))
            _check_library(lib)
            _lib = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _reason = str(e)
        return _lib


def build_info() -> dict | None:
    """What the loaded library was built for: vector width in bits and the CPU extensions it uses
    (None where it is unavailable)."""
    lib = _load()
    if lib is None:
        return None
    required = lib.gpt2_required_isa()
    return {
        "isa": lib.gpt2_isa(),
        "extensions": [name for bit, name in enumerate(_ISA_FLAGS) if required >> bit & 1],
        "abi": lib.gpt2_abi_version(),
    }


def available(precision: str = "fp32") -> bool:
    """True when the native engine is built and this CPU runs `precision` with it."""
    lib = _load()
    return lib is not None and bool(lib.gpt2_features() & _FEATURE_BITS[precision])


def unavailable_reason(precision: str = "fp32") -> str | None:
    """Why `available(precision)` is False (None when it is True)."""
    lib = _load()
    if lib is None:
        return _reason
    if not lib.gpt2_features() & _FEATURE_BITS[precision]:
        return f"the native engine was built without {precision} kernels"
    return None


def _check_tensor(name: str, t, shape: tuple, dtype: torch.dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"native {name} must be a tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"native {name} must be on the CPU, got {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"native {name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"native {name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"native {name} must be contiguous")


def _index_tensor(name: str, t, n: int | None) -> torch.Tensor:
    """A 1-D integer tensor on the CPU (int64, or widened to it exactly), of length n if given."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"native {name} must be a tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"native {name} must be on the CPU, got {t.device}")
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
        raise ValueError(f"native {name} must be an integer tensor (int64), got {t.dtype}")
    if t.dim() != 1 or t.shape[0] < 1:
        raise ValueError(f"native {name} must be 1-D with at least one entry, got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"native {name} has {t.shape[0]} entries, tokens have {n}")
    return t.to(torch.int64).contiguous()


def _check_range(name: str, t: torch.Tensor, end: int, what: str) -> None:
    low, high = int(t.min()), int(t.max())
    if low < 0 or high >= end:
        raise ValueError(f"native {name} must lie in [0, {end}) ({what}), got {low}..{high}")


class NativeModel:
    """The native engine bound to one model's weights (`gpt2.engine.native_spec`): pointers, no copies.

    `linears` are `(weight, scale, bias)` triples per layer in the order attn, proj, fc, mlp; weights are
    row-major `[out, in]` contiguous tensors in the precision's storage dtype (fp32, bf16, int8 with fp32
    per-row scales). The tensors must stay alive as long as this object: it keeps references to them.
    Every shape and dtype is checked here against `config`, so a call can only fail on its own arguments.
    """

    def __init__(
        self,
        precision: str,
        config,
        wte: torch.Tensor,
        wpe: torch.Tensor,
        layers: list[dict],
        ln_f: tuple[torch.Tensor, torch.Tensor],
        head: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    ) -> None:
        if precision not in PRECISION_CODES:
            raise ValueError(
                f"native precision must be one of {', '.join(PRECISION_CODES)}, got {precision!r}"
            )
        lib = _load()
        if lib is None or not available(precision):
            raise RuntimeError(f"native engine unavailable: {unavailable_reason(precision)}")
        C, nh = config.n_embd, config.n_head
        if C % 64 or C % nh or C // nh not in (16, 32, 48, 64):
            raise ValueError(
                f"native engine needs n_embd a multiple of 64 and head_dim 16/32/48/64, got {config}"
            )
        if len(layers) != config.n_layer:
            raise ValueError(f"native model has {len(layers)} layers, its config says {config.n_layer}")
        self._lib = lib
        self.config = config
        self._keep: list[torch.Tensor] = []
        f32 = torch.float32

        def keep(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype = f32) -> int:
            _check_tensor(name, t, shape, dtype)
            self._keep.append(t)
            return t.data_ptr()

        def linear(name: str, triple: tuple, out: int, in_: int) -> _Linear:
            w, scale, bias = triple
            w_ptr = keep(f"{name} weight", w, (out, in_), WEIGHT_DTYPES[precision])
            if (scale is None) != (precision != "int8"):
                raise ValueError(f"native {name}: int8 weights need per-row fp32 scales, others none")
            s_ptr = None if scale is None else keep(f"{name} scale", scale, (out,))
            b_ptr = None if bias is None else keep(f"{name} bias", bias, (out,))
            return _Linear(w_ptr, s_ptr, b_ptr, out, in_)

        # The MLP's width (4 C in GPT-2), taken from the first fc weight; every layer is checked against it.
        fc_w = layers[0]["fc"][0] if layers else None
        inner = fc_w.shape[0] if isinstance(fc_w, torch.Tensor) and fc_w.dim() == 2 else 4 * C
        if inner % 64:
            raise ValueError(f"native engine needs the MLP width to be a multiple of 64, got {inner}")
        self._layers = (_Layer * len(layers))()
        for i, d in enumerate(layers):
            ln_1, ln_2 = d["ln_1"], d["ln_2"]
            self._layers[i] = _Layer(
                keep(f"h.{i}.ln_1 weight", ln_1[0], (C,)),
                keep(f"h.{i}.ln_1 bias", ln_1[1], (C,)),
                keep(f"h.{i}.ln_2 weight", ln_2[0], (C,)),
                keep(f"h.{i}.ln_2 bias", ln_2[1], (C,)),
                linear(f"h.{i}.attn", d["attn"], 3 * C, C),
                linear(f"h.{i}.proj", d["proj"], C, C),
                linear(f"h.{i}.fc", d["fc"], inner, C),
                linear(f"h.{i}.mlp", d["mlp"], C, inner),
            )
        self._model = _Model(
            config.n_layer,
            C,
            nh,
            config.n_vocab,
            config.n_ctx,
            PRECISION_CODES[precision],
            keep("wte", wte, (config.n_vocab, C)),
            keep("wpe", wpe, (config.n_ctx, C)),
            keep("ln_f weight", ln_f[0], (C,)),
            keep("ln_f bias", ln_f[1], (C,)),
            linear("head", head, config.n_vocab, C),
            self._layers,
        )

    def _cache(self, k: torch.Tensor, v: torch.Tensor) -> _Cache:
        """The C view of a KV cache, after checking it is one for this model."""
        c = self.config
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.dtype != torch.float32:
                raise ValueError(f"native decoding needs fp32 CPU caches; {name} is not one")
            if t.dim() != 5 or (t.shape[0], t.shape[2], t.shape[4]) != (c.n_layer, c.n_head, c.head_dim):
                want = f"({c.n_layer}, slots, {c.n_head}, max_len, {c.head_dim})"
                raise ValueError(f"native cache {name} must have shape {want}, got {tuple(t.shape)}")
        if k.shape != v.shape or k.stride() != v.stride():
            raise ValueError("native caches k and v must have the same shape and strides")
        layer, slot, head, pos, dim = k.stride()
        L, S, H, T, D = k.shape
        # Each position one contiguous head_dim vector, and (layer, slot, head) blocks that never overlap:
        # the layouts of a KVCache and of any slot range of one.
        if dim != 1 or pos != D or head < T * D or slot < H * head or layer < S * slot or T < 1 or S < 1:
            raise ValueError(
                f"native caches need a (layer, slot, head, position)-ordered layout, got strides {k.stride()}"
            )
        return _Cache(k.data_ptr(), v.data_ptr(), layer, slot, head, L, S, H, T, D)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        logits_from: int = 0,
    ) -> torch.Tensor:
        """Run tokens (each at its position, in its cache slot) through the model, writing their keys and
        values into `k`/`v` (`(n_layer, slots, n_head, max_len, head_dim)` fp32, or a slot view of one);
        logits `(n - logits_from, n_vocab)` fp32 for tokens `logits_from` onwards. Every argument is
        checked first: anything the engine cannot take is a ValueError saying what, and nothing runs."""
        tokens = _index_tensor("tokens", tokens, None)
        n = tokens.shape[0]
        positions = _index_tensor("positions", positions, n)
        slots = _index_tensor("slots", slots, n)
        if isinstance(logits_from, bool) or not isinstance(logits_from, int) or not 0 <= logits_from <= n:
            raise ValueError(f"native logits_from must be an int in [0, {n}], got {logits_from!r}")
        cache = self._cache(k, v)
        _check_range("tokens", tokens, self.config.n_vocab, "the vocabulary")
        max_pos = min(cache.max_len, self.config.n_ctx)
        _check_range("positions", positions, max_pos, "the cache length and the model's context")
        _check_range("slots", slots, cache.n_slots, "the cache's slots")
        logits = torch.empty(n - logits_from, self.config.n_vocab, dtype=torch.float32)
        rc = self._lib.gpt2_forward(
            ctypes.byref(self._model),
            ctypes.byref(cache),
            n,
            tokens.data_ptr(),
            positions.data_ptr(),
            slots.data_ptr(),
            logits_from,
            logits.data_ptr() if logits.numel() else None,
            max(1, torch.get_num_threads()),
        )
        if rc != 0:
            raise ValueError(
                f"native forward refused its arguments: {ERRORS.get(rc, 'unknown error')} (code {rc})"
            )
        return logits


_openmp_lib: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (libgomp in Linux wheels), found among this process's mappings."""
    global _openmp_lib
    if _openmp_lib is False:
        _openmp_lib = None
        try:
            mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()}
        except OSError:
            mapped = set()
        for path in sorted(p for p in mapped if Path(p).name.startswith(("libgomp", "libiomp", "libomp"))):
            try:
                lib = ctypes.CDLL(path)  # already loaded: the handle torch's ops use
                lib.omp_get_max_threads.restype = ctypes.c_int
                lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            except (OSError, AttributeError):
                continue
            _openmp_lib = lib
            break
    return _openmp_lib


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """PyTorch CPU ops inside run on the calling thread alone (OpenMP's thread count is per thread).

    For the work between two decode steps: sampling a row is ~50k values, microseconds on one thread,
    but PyTorch splits any op over 32k values across its OpenMP threads, and libgomp's threads then spin
    for milliseconds (up to 300,000 pauses) waiting for more. The engine's own threads need those cores
    for the next step: sampling on two threads made the main thread decode at 23 tok/s instead of 31-33."""
    omp = _openmp()
    if omp is None:
        yield
        return
    torch.get_num_threads()  # torch sets a thread's OpenMP count on its first use: let it, before we do
    before = omp.omp_get_max_threads()
    omp.omp_set_num_threads(1)
    try:
        yield
    finally:
        omp.omp_set_num_threads(before)


def runs_linear(precision: str, in_features: int) -> bool:
    """Whether `linear` takes a `precision` layer this wide here (bf16/int8, inputs a multiple of 64)."""
    return precision in ("bf16", "int8") and in_features % 64 == 0 and available(precision)


def linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """`x W^T + b` for a bf16 or int8 layer (`gpt2.precision`'s storage: weight `[out, in]` bf16, or int8
    with fp32 per-row `scale`), fp32 `x` of shape `(..., in)`, on the CPU: decode.c's `gpt2_linear`.
    Many rows run a blocked GEMM that widens the weight block by block as it packs it (the same values
    PyTorch's path multiplies, without an fp32 copy of the weight per call); a few rows, the decode
    kernels. Checked here first: a ValueError says what does not fit, and nothing runs."""
    precision = {torch.bfloat16: "bf16", torch.int8: "int8"}.get(getattr(weight, "dtype", None))
    if precision is None:
        got = getattr(weight, "dtype", type(weight).__name__)
        raise ValueError(f"native linear takes bf16 or int8 weights, got {got}")
    lib = _load()
    if lib is None or not runs_linear(precision, weight.shape[-1] if weight.dim() == 2 else 0):
        raise RuntimeError(f"native linear unavailable for {precision}: {unavailable_reason(precision)}")
    if weight.dim() != 2:
        raise ValueError(f"native linear weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    out, in_ = weight.shape
    _check_tensor("linear weight", weight, (out, in_), weight.dtype)
    if (scale is None) != (precision != "int8"):
        raise ValueError("native linear: int8 weights need per-row fp32 scales, bf16 weights none")
    if scale is not None:
        _check_tensor("linear scale", scale, (out,), torch.float32)
    if bias is not None:
        _check_tensor("linear bias", bias, (out,), torch.float32)
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError("native linear input must be an fp32 CPU tensor")
    if x.dim() < 1 or x.shape[-1] != in_:
        raise ValueError(f"native linear input must end in {in_} features, got shape {tuple(x.shape)}")
    rows = x.reshape(-1, in_).contiguous()
    y = torch.empty(*x.shape[:-1], out, dtype=torch.float32)
    if rows.shape[0] == 0:
        return y
    spec = _Linear(
        weight.data_ptr(),
        None if scale is None else scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out,
        in_,
    )
    rc = lib.gpt2_linear(
        ctypes.byref(spec),
        PRECISION_CODES[precision],
        rows.data_ptr(),
        rows.shape[0],
        y.data_ptr(),
        max(1, torch.get_num_threads()),
    )
    if rc != 0:
        message = ERRORS.get(rc, "unknown error")
        raise ValueError(f"native linear refused its arguments: {message} (code {rc})")
    return y
