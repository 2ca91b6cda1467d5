"""The native decode engine: `csrc/decode.c`, compiled for this CPU on first use and called via ctypes.

`FastGPT2` uses it for decode steps (and short prompts) when it is available; everything else, and any
machine where it is not, keeps the PyTorch path. It is built with the system C compiler
(`cc -O3 -march=native -fopenmp`) into a per-user cache keyed by the source, the flags and the CPU, in
about a second, once. On AVX-512 it serves fp32, bf16 (with AVX512-BF16) and int8 (with AVX512-VNNI);
on AVX2 + FMA, fp32. Nothing here is required: no compiler, an older CPU, or `GPT2_NATIVE=0` in the
environment all mean `available()` is False and the reason is in `unavailable_reason()`.

The library links the same `libgomp.so.1` that torch has already loaded, so its OpenMP threads are
torch's own pool, not a second one competing for the cores. ctypes releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
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
    return ["-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]


PRECISION_CODES = {"fp32": 0, "bf16": 1, "int8": 2}
_FEATURE_BITS = {"fp32": 1, "bf16": 2, "int8": 4}

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
        ("max_len", ctypes.c_int64),
        ("n_slots", ctypes.c_int64),
    ]


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
            lib.gpt2_features.restype = ctypes.c_int
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
            if lib.gpt2_features() == 0:
                raise RuntimeError("this CPU has neither AVX-512 (F/BW/VL/DQ) nor AVX2 with FMA")
            _lib = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _reason = str(e)
        return _lib


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
        needs = {"bf16": "AVX512-BF16", "int8": "AVX512-VNNI"}.get(precision, "AVX-512 or AVX2")
        return f"{precision} needs {needs}, which this build lacks"
    return None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeModel:
    """The native engine bound to one set of packed weights (a `FastGPT2`'s): pointers only, no copies.

    `linears` are `(weight, scale, bias)` triples per layer in the order attn, proj, fc, mlp; weights are
    row-major `[out, in]` contiguous tensors in the precision's storage dtype (fp32, bf16, int8 with fp32
    per-row scales). The tensors must stay alive as long as this object: it keeps references to them.
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
        lib = _load()
        if lib is None or not available(precision):
            raise RuntimeError(f"native engine unavailable: {unavailable_reason(precision)}")
        self._lib = lib
        self.config = config
        self._keep: list[torch.Tensor] = []

        def keep(t: torch.Tensor | None) -> int | None:
            if t is None:
                return None
            if not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError("native weights must be contiguous CPU tensors")
            self._keep.append(t)
            return _ptr(t)

        def linear(w: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None) -> _Linear:
            if scale is not None and scale.dtype != torch.float32:
                raise ValueError("native int8 scales must be fp32")
            if bias is not None and bias.dtype != torch.float32:
                raise ValueError("native biases must be fp32")
            return _Linear(keep(w), keep(scale), keep(bias), w.shape[0], w.shape[1])

        self._layers = (_Layer * len(layers))()
        for i, d in enumerate(layers):
            self._layers[i] = _Layer(
                keep(d["ln_1"][0]),
                keep(d["ln_1"][1]),
                keep(d["ln_2"][0]),
                keep(d["ln_2"][1]),
                linear(*d["attn"]),
                linear(*d["proj"]),
                linear(*d["fc"]),
                linear(*d["mlp"]),
            )
        self._model = _Model(
            config.n_layer,
            config.n_embd,
            config.n_head,
            config.n_vocab,
            PRECISION_CODES[precision],
            keep(wte),
            keep(wpe),
            keep(ln_f[0]),
            keep(ln_f[1]),
            linear(*head),
            self._layers,
        )

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
        logits `(n - logits_from, n_vocab)` fp32 for tokens `logits_from` onwards."""
        n = tokens.shape[0]
        tokens = tokens.to(torch.int64).contiguous()
        positions = positions.to(torch.int64).contiguous()
        slots = slots.to(torch.int64).contiguous()
        if k.dtype != torch.float32 or k.stride() != v.stride() or k.stride(-1) != 1:
            raise ValueError("native decoding needs fp32 caches whose last dimension is contiguous")
        if k.stride(3) != k.shape[4]:
            raise ValueError("native decoding needs each cached position stored as one head_dim vector")
        strides = k.stride(0), k.stride(1), k.stride(2)
        cache = _Cache(k.data_ptr(), v.data_ptr(), *strides, k.shape[3], k.shape[1])
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
            torch.get_num_threads(),
        )
        if rc != 0:
            raise ValueError(f"native forward refused its arguments (code {rc})")
        return logits
