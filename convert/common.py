"""What every conversion route shares: a state dict in our names + a config → one `weights/` file.

The three routes (OpenAI's TF checkpoints, the book's `.pth`, Hugging Face folders) only rename and
reshape tensors; checking them against the model's expected shapes and choosing a tied or untied head
happens once in `gpt2.formats.checks` (shared with the app's Hub loader), writing the output all-or-nothing
happens here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2 import GPT2, GPT2Config

# Re-exported for the routes: the checks live in gpt2/ because the app's Hub loader needs them too.
from gpt2.formats.checks import CheckpointError
from gpt2.formats.checks import build_model as build_model
from gpt2.formats.checks import check_source_tensors as check_source_tensors
from gpt2.formats.checks import heads_tied as heads_tied
from gpt2.formats.weights import model_filename, read_metadata, save_model
from gpt2.tokenizer import BPE_FILE_SHA256, sha256_file

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# One exception type for every problem with the user's input, whichever package found it (the checks
# shared with the app's Hub loader live in gpt2/): `python -m convert` shows it as one `error:` line.
ConvertError = CheckpointError


def validate_name(name: str) -> str:
    """A model name becomes part of a file name in `weights/`: letters, digits, `-_.`, nothing else."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConvertError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit (no path separators)"
        )
    return name


def default_name(*candidates: str | None) -> str | None:
    """The first candidate that is a valid model name (used when --name is not given)."""
    for candidate in candidates:
        if candidate:
            try:
                return validate_name(candidate)
            except ConvertError:
                continue
    return None


def strip_common_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop a prefix every key shares: `_orig_mod.` (torch.compile), `module.` (DDP), `transformer.`."""
    changed = True
    while changed and state:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


@dataclass
class Summary:
    name: str
    path: Path
    parameters: int
    bytes: int
    sha256: str
    dtype: str
    tied_head: bool
    config: GPT2Config
    tokenizer_files: bool  # whether encoder.json and vocab.bpe are now beside the model
    precision: str = "fp32"  # a packed model's (then `dtype` does not apply)

    def lines(self) -> list[str]:
        c = self.config
        out = [
            f"wrote {self.path}",
            f"  name        {self.name}",
            f"  parameters  {self.parameters:,} (n_layer={c.n_layer}, n_embd={c.n_embd}, n_head={c.n_head}, "
            f"n_ctx={c.n_ctx}, {'tied' if self.tied_head else 'separate'} output head)",
            f"  dtype       {self.dtype}"
            if self.precision == "fp32"
            else f"  precision   {self.precision} (packed: loads as it is)",
            f"  bytes       {self.bytes:,}",
            f"  sha256      {self.sha256}",
        ]
        if not self.tokenizer_files:
            out.append(
                f"  note: {self.path.parent} has no encoder.json/vocab.bpe; the app uses the copy "
                "packaged in gpt2/bpe/"
            )
        out.append("next: python app.py  (it lists every model in its weights/ folder)")
        return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_bpe_dir(bpe_dir: Path) -> None:
    """Both tokenizer files present and exactly GPT-2's (the SHA-256 that tiktoken pins)."""
    for fname, expected in BPE_FILE_SHA256.items():
        path = bpe_dir / fname
        if not path.is_file():
            raise ConvertError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ConvertError(f"{path} is not GPT-2's {fname}: SHA-256 {actual}, expected {expected}")


def write_output(
    model: GPT2,
    out_dir: Path,
    *,
    name: str,
    dtype: str = "float32",
    source: str = "",
    bpe_dir: Path | None = None,
) -> Summary:
    """Write `gpt2-<name>.safetensors` (and the tokenizer files, from `bpe_dir`) into `out_dir`; a packed
    model (`gpt2.prepare(model, "int8")`, ...) as it is packed (`dtype` applies to fp32 models only).

    All-or-nothing: everything is first written under temporary `*.partial` names and only renamed
    into place once all of it is complete, so an error (or Ctrl-C) leaves `out_dir` as it was.
    """
    validate_name(name)
    if dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if bpe_dir is not None:
        check_bpe_dir(bpe_dir)
    out_dir = Path(out_dir)
    final = out_dir / model_filename(name)
    # The outermost folder this call creates, so that a failure removes every folder it made.
    created_dir = next((p for p in reversed([out_dir, *out_dir.parents]) if not p.exists()), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        tmp_model = out_dir / f".{final.name}.staged.partial"
        staged.append((tmp_model, final))
        packed = model.runtime.precision != "fp32"
        save_model(model, tmp_model, name=name, dtype=None if packed else DTYPES[dtype], source=source)
        if bpe_dir is not None:
            for fname, expected in BPE_FILE_SHA256.items():
                target = out_dir / fname
                if target.is_file() and sha256_file(target) == expected:
                    continue  # already the right file: leave it untouched
                fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".partial", dir=out_dir)
                os.close(fd)
                staged.append((Path(tmp), target))
                shutil.copyfile(bpe_dir / fname, tmp)
                if sha256_file(tmp) != expected:  # the source changed under us, or the copy failed
                    raise ConvertError(f"copying {bpe_dir / fname} to {out_dir} produced a different file")
        # The written file must read back as a valid weights file before it replaces anything.
        meta = read_metadata(tmp_model)
        if meta["config"] != model.config or meta.get("name") != name:
            raise ConvertError(f"{tmp_model} did not read back with the config it was written with")
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if created_dir is not None:
            shutil.rmtree(created_dir, ignore_errors=True)
        raise
    has_bpe = all((out_dir / f).is_file() for f in BPE_FILE_SHA256)
    return Summary(
        name=name,
        path=final.resolve(),
        parameters=model.config.num_parameters(),
        bytes=final.stat().st_size,
        sha256=_sha256(final),
        dtype=dtype,
        tied_head=model.config.tied_head,
        config=model.config,
        tokenizer_files=has_bpe,
        precision=model.runtime.precision,
    )
