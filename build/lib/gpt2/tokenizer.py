"""GPT-2's byte-level BPE through tiktoken, built from `encoder.json` + `vocab.bpe` shipped in `gpt2/bpe/`.

tiktoken's own `get_encoding("gpt2")` downloads those two files on first use; a Space, a fresh clone or a
machine without internet should not depend on that, so the package carries them (1.5 MB, checked against
the SHA-256 hashes tiktoken pins before use). `$GPT2_BPE_DIR` or an explicit folder can stand in for them.
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
PACKAGED_BPE_DIR = Path(__file__).resolve().parent / "bpe"


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
    """GPT-2's tokenizer, from `directory`, else `$GPT2_BPE_DIR`, else the files packaged in `gpt2/bpe/`.

    Whichever folder is chosen must hold GPT-2's exact `encoder.json` and `vocab.bpe` (ValueError
    otherwise). There is deliberately no download fallback: the packaged files are part of the install,
    so a missing one means a broken install, which is better said plainly than papered over by a
    network fetch that a Space or an offline machine cannot make.
    """
    if directory is None:
        directory = os.environ.get("GPT2_BPE_DIR") or PACKAGED_BPE_DIR
    return _from_directory(Path(directory))
