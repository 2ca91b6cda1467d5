"""The C library's interface as Python sees it: the structs, the entry points' signatures, the numbers
(precisions, ABI version, extension bits, error codes), and the check a library must pass before any
other call: the same ABI version, the same struct sizes, and only CPU extensions this CPU has.

Everything here mirrors `csrc/decode.c`; a change there bumps GPT2_ABI_VERSION in both files.
"""

from __future__ import annotations

import ctypes
import os

import torch

from . import cpu

# decode.c's GPT2_ABI_VERSION: the structs below, the entry points and the error codes. A library that
# reports another number is never called (a stale build, or a source edited without updating this).
ABI_VERSION = 5
# A linear layer's precision (decode.c's PREC_*, the `precision` field of `Linear`); gpt2_features() sets
# bit (1 << code) for each precision the build runs.
PRECISION_CODES = {"fp32": 0, "bf16": 1, "int8": 2, "f16": 3, "int4": 4}
FEATURE_BITS = {name: 1 << code for name, code in PRECISION_CODES.items()}
# How a linear layer is stored in each precision: its weight's dtype (row-major [out, in]; int4: two
# 4-bit codes a byte, [out, in / 2]) and its scales' dtype (None: it has none). See `linear_shapes`.
WEIGHT_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
    "int8": torch.int8,
    "int4": torch.uint8,
}
SCALE_DTYPES = {"int8": torch.float32, "int4": torch.float16}
INT4_GROUP = 32  # decode.c's GROUP4: inputs of a row per int4 scale
# gpt2_required_isa()'s bits, as /proc/cpuinfo names the extensions.
ISA_FLAGS = (
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
# gpt2_forward's and gpt2_linear's return codes (GPT2_E_* in decode.c).
ERRORS = {
    -1: "a required pointer was NULL",
    -2: "the model's sizes are not ones the engine runs (n_embd a multiple of 64, head_dim 16/32/48/64)",
    -3: "a weight's shape does not match the model",
    -4: "a linear layer's precision is unknown or not built for this CPU",
    -5: "the token count is below 1 or logits_from is outside [0, n]",
    -6: "the cache's shape or strides do not fit the model",
    -7: "a token id is outside the vocabulary",
    -8: "a position is outside the cache or the model's context",
    -9: "a cache slot is outside the cache",
    -10: "out of memory for the step's scratch buffers",
    -11: "the engine's threads could not be started",
}
# -march for the build; GPT2_NATIVE_MARCH overrides it (e.g. "x86-64-v3": the AVX2 variant on an AVX-512 CPU).
MARCH_ENV = "GPT2_NATIVE_MARCH"


def error_message(rc: int) -> str:
    return f"{ERRORS.get(rc, 'unknown error')} (code {rc})"


def linear_shapes(precision: str, out: int, in_: int) -> tuple[tuple, tuple | None]:
    """The shapes of an `[out, in_]` linear layer's weight and scales (None: none) in `precision`:
    int8 one scale per output row; int4 codes two a byte and one scale per INT4_GROUP inputs of a row."""
    if precision == "int4":
        return (out, in_ // 2), (out, in_ // INT4_GROUP)
    return (out, in_), ((out,) if precision == "int8" else None)


class Linear(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("out", ctypes.c_int64),
        ("in_", ctypes.c_int64),
        ("precision", ctypes.c_int64),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("ln1_w", ctypes.c_void_p),
        ("ln1_b", ctypes.c_void_p),
        ("ln2_w", ctypes.c_void_p),
        ("ln2_b", ctypes.c_void_p),
        ("attn", Linear),
        ("proj", Linear),
        ("fc", Linear),
        ("mlp", Linear),
    ]


class Model(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int64),
        ("n_embd", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("n_vocab", ctypes.c_int64),
        ("n_ctx", ctypes.c_int64),
        ("wte", ctypes.c_void_p),
        ("wpe", ctypes.c_void_p),
        ("lnf_w", ctypes.c_void_p),
        ("lnf_b", ctypes.c_void_p),
        ("head", Linear),
        ("layers", ctypes.POINTER(Layer)),
    ]


class Cache(ctypes.Structure):
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


STRUCTS = (Linear, Layer, Model, Cache)  # in gpt2_struct_size's order


def declare(lib: ctypes.CDLL) -> None:
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
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.gpt2_forward.restype = ctypes.c_int
    lib.gpt2_forward.argtypes = [
        ctypes.POINTER(Model),
        ctypes.POINTER(Cache),
        i64,
        ptr,
        ptr,
        ptr,
        i64,
        ptr,
        ctypes.c_int,
    ]
    lib.gpt2_linear.restype = ctypes.c_int
    lib.gpt2_linear.argtypes = [ctypes.POINTER(Linear), ptr, i64, ptr, ctypes.c_int]


def required_extensions(lib: ctypes.CDLL) -> list[str]:
    required = lib.gpt2_required_isa()
    return [name for bit, name in enumerate(ISA_FLAGS) if required >> bit & 1]


def check_library(lib: ctypes.CDLL) -> None:
    """Refuse (RuntimeError with the reason) a library this module must not call: another ABI, structs
    of other sizes, or instructions this CPU lacks (a GPT2_NATIVE_MARCH build for another machine)."""
    if not hasattr(lib, "gpt2_abi_version"):
        raise RuntimeError(f"the library predates the ABI check (this module needs ABI {ABI_VERSION})")
    declare(lib)
    version = lib.gpt2_abi_version()
    if version != ABI_VERSION:
        raise RuntimeError(f"the library has ABI {version}, this module expects {ABI_VERSION}")
    for i, struct in enumerate(STRUCTS):
        size = lib.gpt2_struct_size(i)
        if size != ctypes.sizeof(struct):
            raise RuntimeError(
                f"struct {struct.__name__} is {size} bytes in C, {ctypes.sizeof(struct)} in Python"
            )
    have = cpu.flags()
    missing = [name for name in required_extensions(lib) if have is not None and name not in have]
    if missing:
        march = os.environ.get(MARCH_ENV, "native")
        raise RuntimeError(f"built with -march={march} for {', '.join(missing)}, which this CPU lacks")
    if lib.gpt2_features() == 0:
        raise RuntimeError("this CPU has neither AVX-512 (F/BW/VL/DQ) nor AVX2 with FMA (each with F16C)")
