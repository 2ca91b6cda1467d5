"""llama.cpp as a measured peer: our weights written as GGUF, run through llama-cpp-python.

Benchmark-only dependencies, pinned in `benchmarks/requirements.txt` (never the app's or CI's): `gguf`
writes the file, `llama-cpp-python` builds and binds llama.cpp. Without them the benchmark still runs
and says why the llama.cpp rows are missing (`unavailable_reason`).

The GGUF holds exactly the tensors our model holds, under llama.cpp's "gpt2" architecture names, with
GPT-2's byte-level BPE vocabulary and merges (llama.cpp refuses a gpt2 model without them). Written
here: "f32" (exact), "f16" (2-D weights halved) and "q8_0" (2-D weights in blocks of 32 int8 codes with
one f16 scale); 1-D tensors (LayerNorms, biases) stay f32 in every type, as llama.cpp's own converter
keeps them. "q4_0" and "q4_K_M", which `gguf` cannot write, come from the f32 file through llama.cpp's
own quantizer (`quantize_gguf`). Which type races which of our precisions: `benchmarks.common.PAIRS`.

Tokens go in and come out as ids: llama.cpp's tokenizer is never used, so only the maths is compared.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gpt2 import GPT2
from gpt2.model import LN_EPS
from gpt2.tokenizer import ENCODER_JSON, ENDOFTEXT, PACKAGED_BPE_DIR, VOCAB_BPE

GGUF_TYPES = ("f32", "f16", "q8_0")
INSTALL_HINT = "pip install -r benchmarks/requirements.txt"

# Our state-dict names → llama.cpp's (src/llama-arch.cpp). Both keep Linear weights as [out, in] rows.
_GLOBAL_NAMES = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",  # only untied checkpoints have one; else llama.cpp ties to token_embd
}
_BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def unavailable_reason() -> str | None:
    """Why the llama.cpp peer cannot run here (a missing package), or None when it can."""
    missing = [
        package
        for module, package in (("llama_cpp", "llama-cpp-python"), ("gguf", "gguf"))
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        return f"{' and '.join(missing)} not installed ({INSTALL_HINT})"
    return None


def gguf_name(key: str) -> str:
    """llama.cpp's tensor name for one of our state-dict keys."""
    if key in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[key]
    parts = key.split(".")  # h.{i}.{module...}.{weight|bias}
    module = ".".join(parts[2:-1])
    if parts[0] != "h" or not parts[1].isdigit() or module not in _BLOCK_NAMES:
        raise ValueError(f"no llama.cpp name for tensor {key!r}")
    return f"blk.{parts[1]}.{_BLOCK_NAMES[module]}.{parts[-1]}"


def default_bpe_dir() -> Path:
    """Where GPT-2's BPE files are: $GPT2_BPE_DIR, else the copy that ships in the package (gpt2/bpe/)."""
    return Path(os.environ.get("GPT2_BPE_DIR") or PACKAGED_BPE_DIR)


def gpt2_vocab(bpe_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """GPT-2's tokens (byte-level strings, by id) and merges ("a b", by rank) from its two BPE files."""
    bpe_dir = Path(bpe_dir)
    for name in (ENCODER_JSON, VOCAB_BPE):
        if not (bpe_dir / name).is_file():
            raise ValueError(f"GPT-2 BPE file {name} not found in {bpe_dir} (see --bpe-dir)")
    encoder = json.loads((bpe_dir / ENCODER_JSON).read_text(encoding="utf-8"))
    tokens = sorted(encoder, key=encoder.__getitem__)
    if [encoder[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"{bpe_dir / ENCODER_JSON}: token ids are not 0..{len(tokens) - 1}")
    lines = (bpe_dir / VOCAB_BPE).read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line and not line.startswith("#version")]
    if any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError(f"{bpe_dir / VOCAB_BPE}: every merge line must be two symbols")
    return tokens, merges


def write_gguf(
    model: GPT2, path: str | os.PathLike[str], gguf_type: str, bpe_dir: str | os.PathLike[str]
) -> Path:
    """Write `model`'s weights as a llama.cpp "gpt2" GGUF of `gguf_type` ("f32", "f16" or "q8_0"),
    atomically (a temporary file renamed into place when complete)."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    c = model.config
    tokens, merges = gpt2_vocab(bpe_dir)
    if len(tokens) != c.n_vocab:
        raise ValueError(f"the model has {c.n_vocab} token rows but the GPT-2 vocabulary has {len(tokens)}")
    if gguf_type == "q8_0" and c.n_embd % 32:
        raise ValueError(f"q8_0 needs rows that are a multiple of 32 wide; n_embd is {c.n_embd}")
    file_type, matrix_type = {
        "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    }[gguf_type]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "gpt2")
        writer.add_name(f"gpt2-bench-{c.n_layer}x{c.n_embd}")
        writer.add_context_length(c.n_ctx)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(4 * c.n_embd)
        writer.add_block_count(c.n_layer)
        writer.add_head_count(c.n_head)
        writer.add_layer_norm_eps(LN_EPS)
        writer.add_file_type(file_type)
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(
            [gguf.TokenType.CONTROL if t == ENDOFTEXT else gguf.TokenType.NORMAL for t in tokens]
        )
        writer.add_token_merges(merges)
        writer.add_bos_token_id(tokens.index(ENDOFTEXT))
        writer.add_eos_token_id(tokens.index(ENDOFTEXT))
        for key, value in model.state_dict().items():
            array = value.detach().float().contiguous().numpy()
            if array.ndim == 1 or matrix_type == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name(key), array)
            elif matrix_type == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name(key), array.astype(np.float16))
            else:  # q8_0 through gguf's reference quantizer (bit-exact with ggml's C one)
                codes = gguf.quants.quantize(array, matrix_type)
                writer.add_tensor(gguf_name(key), codes, raw_shape=codes.shape, raw_dtype=matrix_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def gguf_weight_bytes_per_token(path: str | os.PathLike[str]) -> int:
    """Weight bytes one llama.cpp decode step reads from this file: every tensor, but one row of the
    position table (and one row of token_embd when an untied `output.weight` does the head's work)."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    n = sum(int(t.n_bytes) for t in tensors.values())
    one_row = ["position_embd.weight"] + (["token_embd.weight"] if "output.weight" in tensors else [])
    for name in one_row:
        t = tensors[name]
        rows = int(t.shape[-1])  # GGUF lists dimensions fastest first: (n_embd, rows)
        n -= int(t.n_bytes) - int(t.n_bytes) // rows
    return n


def kv_bytes_per_token(n_layer: int, n_embd: int, context: int) -> int:
    """KV-cache bytes a decode step reads: llama.cpp keeps keys and values in f16 by default."""
    return 2 * n_layer * context * n_embd * 2


def load_llama(path: str | os.PathLike[str], threads: int, n_ctx: int):
    """A llama.cpp context on the CPU for the GGUF at `path`: `threads` threads for decode steps and
    prompts alike, room for `n_ctx` positions, a whole prompt of that length submitted as one batch.

    Flash attention on: llama.cpp's own default ("auto") turns it on for the CPU, llama-cpp-python's
    turns it off; on, a 512-token prefill of 2-layer 124M shapes took 568 ms instead of 900 here.
    The KV cache keeps llama.cpp's default type, f16."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_gpu_layers=0,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )


def llama_stepper(llm, max_len: int) -> Callable[[list[int]], torch.Tensor]:
    """`step(tokens)` for llama.cpp as `decode.ours_stepper` is for ours: a fresh sequence, then each call
    evaluates the tokens after what is cached and returns the last position's logits (fp32, (n_vocab,)).
    Greedy picking is the caller's argmax; llama.cpp's samplers are never involved."""
    import llama_cpp

    if max_len > llm.n_ctx():
        raise ValueError(f"{max_len} positions do not fit llama.cpp's context of {llm.n_ctx()}")
    n_vocab = llm.n_vocab()
    llm.reset()  # the next eval drops every cached position past n_tokens (0)

    def step(tokens: list[int]) -> torch.Tensor:
        llm.eval(tokens)
        last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        # A copy: llama.cpp reuses this buffer on the next eval (ours, too, returns a fresh tensor).
        return torch.from_numpy(np.ctypeslib.as_array(last, shape=(n_vocab,)).copy())

    return step


def system_info() -> str:
    """The CPU features llama.cpp was built to use (its own report), for the benchmark's header."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


# What llama.cpp's quantizer makes from an f32 GGUF (its `llama-quantize` tool's type names).
QUANTIZED_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


@contextlib.contextmanager
def _stderr_to(path: Path):
    """C code's stderr (file descriptor 2) into `path` while the block runs."""
    saved = os.dup(2)
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quantize_gguf(src: Path, dst: Path, kind: str) -> Path:
    """`src` (an f32 GGUF from `write_gguf`) quantized to `kind` ("q4_0" or "q4_K_M") by llama.cpp's own
    quantizer (`llama_model_quantize`, as its `llama-quantize` tool runs it), written to `dst` atomically.
    Its per-tensor log is kept out of the way and shown only if it fails."""
    import llama_cpp

    if kind not in QUANTIZED_TYPES:
        raise ValueError(f"kind must be one of {', '.join(QUANTIZED_TYPES)}, got {kind!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"{src} does not exist")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[kind])
    params.nthread = os.cpu_count() or 1
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    log = Path(tmp + ".log")
    try:
        with _stderr_to(log):
            status = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
        if status != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"llama.cpp could not quantize {src} to {kind}: " + " / ".join(tail))
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
        log.unlink(missing_ok=True)
    return dst


def gguf_for(model: GPT2, directory: Path, gguf_type: str, bpe_dir: str | os.PathLike[str]) -> Path:
    """`directory/model-TYPE.gguf` holding `model`'s weights, written if it is not there yet (the
    quantized types from the f32 file, written first where needed)."""
    path = Path(directory) / f"model-{gguf_type}.gguf"
    if path.is_file():
        return path
    if gguf_type in QUANTIZED_TYPES:
        return quantize_gguf(gguf_for(model, directory, "f32", bpe_dir), path, gguf_type)
    return write_gguf(model, path, gguf_type, bpe_dir)
