"""Shared fixtures: GPT-2's BPE files (packaged in gpt2/bpe/), tiktoken's reference encoding offline,
models."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from helpers.models import TINY, WIDE, random_model

from gpt2 import GPT2, Tokenizer, load_tokenizer
from gpt2.tokenizer import PACKAGED_BPE_DIR

# The package's own copy (checked against tiktoken's pins when loaded): a fresh clone needs nothing else.
BPE_DIR = PACKAGED_BPE_DIR
TIKTOKEN_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@pytest.fixture(scope="session")
def bpe_dir() -> Path:
    if not (BPE_DIR / "encoder.json").is_file():
        pytest.fail(f"GPT-2 BPE files not found in {BPE_DIR}: the checkout is incomplete")
    return BPE_DIR


@pytest.fixture(scope="session")
def tokenizer(bpe_dir: Path) -> Tokenizer:
    return load_tokenizer(bpe_dir)


@pytest.fixture(scope="session")
def tiktoken_cache(bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiktoken cache pre-filled with the pinned files, so `tiktoken.get_encoding("gpt2")` — the
    reference encoding — works with no network. tiktoken names cache entries by sha1 of the URL."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in TIKTOKEN_URLS.items():
        shutil.copy(bpe_dir / name, cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def wide_model() -> GPT2:
    return random_model(WIDE, seed=1)


@pytest.fixture(scope="session")
def tiny_model() -> GPT2:
    return random_model(TINY, seed=2)
