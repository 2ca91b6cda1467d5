"""Export to the Hub's GPT-2 layout: a folder that transformers (and so vLLM, TGI, llama.cpp's converter,
another Space) loads as `GPT2LMHeadModel`.

    config.json              transformers' GPT2Config keys, plus OpenAI's `n_ctx`
    generation_config.json   <|endoftext|> as bos and eos
    model.safetensors        the tensors under GPT2LMHeadModel's names, Conv1D weights as `[in, out]`
    vocab.json, merges.txt   GPT-2's BPE (the same files as `encoder.json` and `vocab.bpe`)
    tokenizer.json           the same tokenizer for the `tokenizers` library, where it is installed
    tokenizer_config.json    which tokenizer class, the special token, the context length
    README.md                a model card naming the source checkpoint and its SHA-256

Names and transposes come from `gpt2.formats.hf`, the table the importer uses, and the written folder
is read back through that importer and compared tensor for tensor before it gets its name: an export
that `python -m convert --from-hf` (or `--weights hf://…`) would not turn back into the same model is
never left behind. Like `write_output`, it is all or nothing: built in a hidden temporary folder beside
the target, renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2 import GPT2
from gpt2.formats.hf import config_from_hf, config_to_hf, hf_to_ours, ours_to_hf
from gpt2.tokenizer import BPE_FILE_SHA256, ENCODER_JSON, ENDOFTEXT, EOT_ID, VOCAB_BPE, sha256_file

from .common import DTYPES, ConvertError, check_bpe_dir

WEIGHTS = "model.safetensors"
# Hugging Face's names for GPT-2's two BPE files (the contents are identical: checked by SHA-256).
HF_TOKENIZER_FILES = {ENCODER_JSON: "vocab.json", VOCAB_BPE: "merges.txt"}
# What a deployment should know about a separate output head (the book's `.pth` and some fine-tunes
# have one): checked in each engine's GPT-2 code, see docs/scaling.md.
UNTIED_NOTE = (
    "separate output head (lm_head.weight, tie_word_embeddings false): transformers and vLLM (0.34) load "
    "it; TGI's GPT-2 always uses wte as the head and would serve a different model"
)


@dataclass(frozen=True)
class Provenance:
    """Where the exported weights came from, for the model card."""

    description: str  # e.g. "OpenAI GPT-2 124M (TensorFlow checkpoint)"
    files: dict[str, str] = field(default_factory=dict)  # source file name → SHA-256

    @classmethod
    def of(cls, description: str, paths: list[Path]) -> Provenance:
        return cls(description, {p.name: sha256_file(p) for p in paths})


@dataclass
class Export:
    path: Path
    files: dict[str, int]  # file name → bytes
    notes: list[str]

    def lines(self) -> list[str]:
        out = [f"wrote {self.path} (the Hub's GPT-2 layout)"]
        out += [f"  {name:<24}{size:>15,} bytes" for name, size in sorted(self.files.items())]
        out += [f"  note: {note}" for note in self.notes]
        out.append(f"next: transformers.GPT2LMHeadModel.from_pretrained({str(self.path)!r})")
        return out


def check_target(out_dir: Path) -> None:
    """Refuse before any work: an export goes into a new or empty folder, never over other files."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConvertError(f"--to-hf {out_dir}: exists and is not an empty folder; choose a new one")


def export_hf(
    model: GPT2,
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    provenance: Provenance,
    bpe_dir: Path,
    dtype: str = "float32",
    repo_id: str | None = None,
) -> Export:
    """Write `model` as a Hub-layout folder at `out_dir` (which must not exist or be empty).

    `repo_id` ("OWNER/REPO"), when the folder is going to the Hub, goes into the model card's examples.
    """
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_target(out_dir)
    check_bpe_dir(bpe_dir)
    created = next((p for p in reversed([out_dir, *out_dir.parents]) if not p.exists()), None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        notes = _write_tokenizer(staging, bpe_dir, model.config.n_ctx)
        _write_json(staging / "config.json", config_to_hf(model.config, dtype))
        _write_json(staging / "generation_config.json", {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID})
        _write_weights(model, staging / WEIGHTS, DTYPES[dtype])
        _verify(staging, model, DTYPES[dtype])
        weights_sha = sha256_file(staging / WEIGHTS)
        card = _model_card(model, name, provenance, dtype, weights_sha, repo_id)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _share(staging)
        if out_dir.exists():  # empty (checked above): a directory can only be renamed onto an empty one
            out_dir.rmdir()
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    if not model.config.tied_head:
        notes.append(UNTIED_NOTE)
    files = {p.name: p.stat().st_size for p in out_dir.iterdir()}
    return Export(out_dir.resolve(), files, notes)


def _write_weights(model: GPT2, path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    # "format": "pt" is what transformers expects in a safetensors header.
    save_file(ours_to_hf(state, model.config), str(path), metadata={"format": "pt"})


def _verify(folder: Path, model: GPT2, dtype: torch.dtype) -> None:
    """Read the folder back through the importer (`gpt2.formats.hf`): the same config, bit-equal tensors."""
    from safetensors.torch import load_file

    cfg_json = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = config_from_hf(cfg_json, "the written config.json")
    ours, config = hf_to_ours(load_file(str(folder / WEIGHTS)), config, "the written model.safetensors")
    if config != model.config:
        raise ConvertError(f"the export read back as {config}, not {model.config}")
    for key, value in model.state_dict().items():
        if not torch.equal(ours[key], value.to(dtype)):
            raise ConvertError(f"the export read back with a different {key}")


def _write_tokenizer(folder: Path, bpe_dir: Path, n_ctx: int) -> list[str]:
    """vocab.json and merges.txt (GPT-2's files, renamed), tokenizer.json where `tokenizers` is installed."""
    for ours, theirs in HF_TOKENIZER_FILES.items():
        shutil.copyfile(bpe_dir / ours, folder / theirs)
        if sha256_file(folder / theirs) != BPE_FILE_SHA256[ours]:
            raise ConvertError(f"copying {bpe_dir / ours} produced a different file")
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": n_ctx, **special}
    _write_json(folder / "tokenizer_config.json", {**tokenizer_config, "add_prefix_space": False})
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE
    except ImportError as exc:
        return [
            f"tokenizer.json skipped: the `tokenizers` library is not installed ({exc}); transformers "
            "builds the same tokenizer from vocab.json and merges.txt (pip install tokenizers to include it)"
        ]
    # GPT-2's byte-level BPE: no prefix space, the byte-level decoder, <|endoftext|> as a special token.
    tok = Tokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(ENDOFTEXT, special=True)])
    if tok.token_to_id(ENDOFTEXT) != EOT_ID or tok.get_vocab_size() != EOT_ID + 1:
        raise ConvertError("the tokenizers library built a GPT-2 tokenizer with a different vocabulary")
    tok.save(str(folder / "tokenizer.json"))
    return []


def _model_card(
    model: GPT2, name: str, provenance: Provenance, dtype: str, weights_sha: str, repo_id: str | None
) -> str:
    c = model.config
    head = "tied to the token embedding" if c.tied_head else "separate (`tie_word_embeddings: false`)"
    engines = "" if c.tied_head else f"\n\nThe output head: {UNTIED_NOTE}."
    sources = "\n".join(f"| `{f}` | `{h}` |" for f, h in provenance.files.items())
    where = repo_id or "path/to/this/folder"
    app = (
        f"`python app.py --weights hf://{repo_id}`"
        if repo_id
        else f"`python -m convert --from-hf {where}`, then `python app.py`"
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- gpt2
---

# {name}

GPT-2 in Hugging Face transformers' layout (`GPT2LMHeadModel`), exported with `python -m convert --to-hf`
from GPT-2, hand-built.

| | |
|---|---|
| layers, width, heads | {c.n_layer}, {c.n_embd}, {c.n_head} |
| context | {c.n_ctx} tokens |
| parameters | {c.num_parameters():,} |
| output head | {head} |
| stored as | {dtype} |
| tokenizer | GPT-2's byte-level BPE, 50257 tokens |
| `model.safetensors` SHA-256 | `{weights_sha}` |

## Source

{provenance.description}

| source file | SHA-256 |
|---|---|
{sources}

The export was read back through the converter's importer and matched the source tensor for tensor
(in {dtype}). The source checkpoint's license applies.

## Use

```python
from transformers import AutoTokenizer, GPT2LMHeadModel
model = GPT2LMHeadModel.from_pretrained("{where}")
tokenizer = AutoTokenizer.from_pretrained("{where}")
```

vLLM: `vllm serve {where}`. GPT-2, hand-built's app: {app}.{engines}
"""


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _share(folder: Path) -> None:
    """The permissions of any new folder and file: mkdtemp makes 0700, safetensors 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~mask)
