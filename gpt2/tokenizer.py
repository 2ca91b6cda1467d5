"""GPT-2's byte-level BPE through tiktoken, built from local `encoder.json` + `vocab.bpe` when present.

tiktoken's own `get_encoding("gpt2")` downloads those two files on first use; a Space (or a machine
without internet) should not depend on that, so the files the converter puts into `weights/` are used
first, after checking them against the SHA-256 hashes tiktoken pins.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

ENCODER_JSON = "encoder.json"
VOCAB_BPE = "vocab.bpe"
# The hashes tiktoken pins for GPT-2's files (tiktoken_ext/openai_public.py).
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
BPE_FILE_SHA256 = {ENCODER_JSON: ENCODER_JSON_SHA256, VOCAB_BPE: VOCAB_BPE_SHA256}
ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "weights"


class Tokenizer:
    """A thin, safe wrapper over a tiktoken `Encoding`.

    `encode` treats everything a user types as text: `<|endoftext|>` typed in a prompt becomes the
    ordinary tokens for those characters, never the special token, and never raises.
    """

    def __init__(self, encoding: tiktoken.Encoding, source: str) -> None:
        self.encoding = encoding
        self.source = source  # where the BPE files came from, for logs and the UI
        self.eot_token = encoding.eot_token
        self.n_vocab = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text to encode must be a string, got {type(text).__name__}")
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        """Decode to text; bytes that are not valid UTF-8 on their own become U+FFFD."""
        return self.encoding.decode(list(ids), errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)

    def __repr__(self) -> str:
        return f"Tokenizer(gpt2, n_vocab={self.n_vocab}, source={self.source!r})"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_bpe_files(directory: str | os.PathLike[str]) -> None:
    """Raise ValueError unless `directory` holds GPT-2's exact `encoder.json` and `vocab.bpe`."""
    for name, expected in BPE_FILE_SHA256.items():
        path = Path(directory) / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ValueError(
                f"{path} is not GPT-2's {name}: SHA-256 {actual}, expected {expected} "
                "(a truncated or corrupt download?)"
            )


def _from_directory(directory: Path) -> Tokenizer:
    verify_bpe_files(directory)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(directory / VOCAB_BPE),
        encoder_json_file=str(directory / ENCODER_JSON),
    )
    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_ID},
        explicit_n_vocab=50257,
    )
    return Tokenizer(encoding, source=str(directory))


def load_tokenizer(directory: str | os.PathLike[str] | None = None) -> Tokenizer:
    """GPT-2's tokenizer.

    With `directory`, its `encoder.json` and `vocab.bpe` are used (and must be the right files).
    Without, the first of `$GPT2_BPE_DIR` and the project's `weights/` that holds both files is used;
    failing that, `tiktoken.get_encoding("gpt2")` (which needs its cache or the internet).
    """
    if directory is not None:
        return _from_directory(Path(directory))
    candidates = [os.environ.get("GPT2_BPE_DIR"), DEFAULT_DIR]
    for candidate in candidates:
        if candidate and all((Path(candidate) / n).is_file() for n in BPE_FILE_SHA256):
            return _from_directory(Path(candidate))
    try:
        return Tokenizer(tiktoken.get_encoding("gpt2"), source="tiktoken")
    except Exception as exc:  # network errors come in many types; the message is what matters
        raise RuntimeError(
            "GPT-2's BPE files were not found locally and tiktoken could not fetch them "
            f"({exc}). Run `python -m convert --model 124M` (it saves encoder.json and vocab.bpe into "
            "weights/) or point GPT2_BPE_DIR at a folder holding them."
        ) from exc
