"""What this CPU is, read once from /proc/cpuinfo: the engine's build, its checks and the benchmarks ask here.

Everything is a plain value (a set of flag names, a model name, a string that changes when either does),
and every function copes with a system that has no /proc/cpuinfo (it answers None / "unknown").
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The vector extensions worth naming in a benchmark's header (the engine's build uses what -march=native
# finds; gpt2.engine.abi lists the ones it checks before calling the library).
VECTOR_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...] | None:
    try:
        return tuple(CPUINFO.read_text().splitlines())
    except OSError:
        return None


def flags() -> frozenset[str] | None:
    """This CPU's extension flags as /proc/cpuinfo lists them (None where there is no such file)."""
    for line in _cpuinfo_lines() or ():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def model_name() -> str:
    for line in _cpuinfo_lines() or ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def signature() -> str:
    """What `-march=native` depends on: the CPU's model and flags (a cached build is reused only there)."""
    lines = _cpuinfo_lines()
    if lines is None:
        return platform.processor() or platform.machine()
    return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))


def vector_flags() -> list[str]:
    """The vector extensions this CPU has, in `VECTOR_FLAGS` order (for benchmark headers)."""
    have = flags() or frozenset()
    return [f for f in VECTOR_FLAGS if f in have]


def describe() -> str:
    """One line for logs and benchmark results: model name and vector extensions."""
    found = vector_flags()
    return f"CPU: {model_name()} · {' '.join(found) if found else 'no AVX2/AVX-512'}"
