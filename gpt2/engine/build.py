"""Building and loading the C library: `csrc/decode.c`, compiled for this CPU on first use.

It is built with the system C compiler (`cc -O3 -march=native -fopenmp`) into a per-user cache keyed by
the source, the flags, the compiler and the CPU, in about a second, once; concurrent processes never
load a half-written file, and a library is only loaded from a folder nobody else can write into.
Nothing here is required: no compiler, a CPU other than x86-64, or `GPT2_NATIVE=0` all mean `library()`
is None, and `reason()` says why. On AVX-512 (F/BW/VL/DQ) and on AVX2 + FMA the library serves every
precision (see the top of decode.c for the kernels).
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

from . import abi, cpu

SOURCE = Path(__file__).with_name("csrc") / "decode.c"
NATIVE_ENV = "GPT2_NATIVE"  # "0" turns the engine off
CACHE_ENV = "GPT2_NATIVE_CACHE"  # where builds are kept (default: $XDG_CACHE_HOME or ~/.cache)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None


def flags() -> list[str]:
    march = os.environ.get(abi.MARCH_ENV, "native")
    if not march.replace("-", "").replace("_", "").isalnum():
        raise RuntimeError(f"{abi.MARCH_ENV} must be a -march name like native or x86-64-v3, got {march!r}")
    return ["-O3", f"-march={march}", "-fopenmp", "-pthread", "-shared", "-fPIC", "-std=gnu11"]


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "gpt2-handbuilt"


def _private(folder: Path) -> bool:
    """Owned by this user and not writable by group or others (so nobody can plant a library there)."""
    st = folder.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _key(compiler: str, source: Path = SOURCE) -> str:
    """What a build depends on: the source, the flags, the compiler and the CPU."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    parts = [source.read_bytes(), " ".join(flags()).encode(), version.encode(), cpu.signature().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _folders() -> tuple[Path, ...]:
    return cache_dir(), Path(tempfile.gettempdir()) / f"gpt2-handbuilt-{os.getuid()}"


def _switched_off() -> str | None:
    """Why the engine is not even tried here (None when it is)."""
    if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"disabled by {NATIVE_ENV}=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"x86-64 only (this is {platform.machine()})"
    return None


def will_compile() -> bool:
    """Whether the first `library()` call will compile the library (rather than find this CPU's build in
    the cache, or not try at all): a start-up can say so, as it takes a few seconds."""
    if _lib is not None or _reason is not None or _switched_off() is not None:
        return False
    try:
        key = _key(compiler())
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return False
    return not any((folder / f"decode-{key}.so").is_file() for folder in _folders())


def compile_library(compiler: str, source: Path = SOURCE) -> Path:
    """`source` built with `flags()` into the private cache (reused when source, flags, compiler and CPU
    are the same); the path of the shared library."""
    key = _key(compiler, source)
    build_flags = flags()
    for folder in _folders():
        target = folder / f"decode-{key}.so"
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
                [compiler, *build_flags, "-o", tmp, str(source), "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[:2000]}")
            os.replace(tmp, target)
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"no private writable cache folder for the native library (tried {cache_dir()})")


def compiler() -> str:
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    return found


def load_checked(path: Path) -> ctypes.CDLL:
    """A built library, after `abi.check_library` (RuntimeError with the reason otherwise)."""
    lib = ctypes.CDLL(str(path))
    abi.check_library(lib)
    return lib


def library() -> ctypes.CDLL | None:
    """The checked library for this process (built on first call), or None: `reason()` says why."""
    global _lib, _reason
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        try:
            off = _switched_off()
            if off is not None:
                raise RuntimeError(off)
            _lib = load_checked(compile_library(compiler()))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _reason = str(e)
        return _lib


def reason() -> str | None:
    """Why `library()` is None (None when it is not)."""
    library()
    return _reason


def info() -> dict | None:
    """What the loaded library was built for: vector width in bits, the CPU extensions it uses, its ABI
    (None where it is unavailable)."""
    lib = library()
    if lib is None:
        return None
    return {"isa": lib.gpt2_isa(), "extensions": abi.required_extensions(lib), "abi": lib.gpt2_abi_version()}


def available(precision: str = "fp32") -> bool:
    """True when the library is built and this CPU runs `precision` with it."""
    return unavailable_reason(precision) is None


def unavailable_reason(precision: str = "fp32") -> str | None:
    """Why `available(precision)` is False (None when it is True)."""
    lib = library()
    if lib is None:
        return _reason
    if not lib.gpt2_features() & abi.FEATURE_BITS[precision]:
        return f"the native engine was built without {precision} kernels"
    return None
