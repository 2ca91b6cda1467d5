"""Our tokenizer equals tiktoken's reference GPT-2 encoding, and never treats user text as special."""

from __future__ import annotations

import shutil

import pytest
import tiktoken

from gpt2 import load_tokenizer
from gpt2.tokenizer import PACKAGED_BPE_DIR, verify_bpe_files

TEXTS = [
    "Every effort moves you",
    "The quick brown fox jumps over the lazy dog.\n\nNew paragraph,   extra  spaces\ttab.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # code\n",
    "Emoji: 🤗🚀👩‍👩‍👧 and flags 🇫🇷",
    "中文测试，日本語のテキスト、한국어 텍스트",
    "literal <|endoftext|> in the middle <|endoftext|>",
    "<|endoftext|>",
    "",
    "ümlauts, naïve café, Ωμέγα, \u00a0non-breaking, \u200bzero-width",
]


@pytest.fixture(scope="module")
def reference(tiktoken_cache):
    return tiktoken.get_encoding("gpt2")


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_tiktoken_reference(tokenizer, reference, text):
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text, disallowed_special=())
    assert tokenizer.decode(ids) == text
    assert 50256 not in ids  # typed text never becomes the special token


def test_special_token_only_by_id(tokenizer):
    assert tokenizer.eot_token == 50256 and tokenizer.n_vocab == 50257
    assert tokenizer.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert tokenizer.decode([50256]) == "<|endoftext|>"


def test_emoji_split_across_tokens(tokenizer):
    ids = tokenizer.encode("🤗")
    assert len(ids) > 1
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == "🤗".encode()
    assert "\ufffd" in tokenizer.decode(ids[:1])  # a lone piece is not a character


def test_rejects_wrong_files(bpe_dir, tmp_path):
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_dir / name, tmp_path / name)
    verify_bpe_files(tmp_path)
    with open(tmp_path / "vocab.bpe", "r+b") as f:  # truncate: a broken download
        f.truncate(1000)
    with pytest.raises(ValueError, match="SHA-256"):
        load_tokenizer(tmp_path)
    (tmp_path / "encoder.json").unlink()
    with pytest.raises(ValueError, match="missing"):
        load_tokenizer(tmp_path)


def test_packaged_files_need_no_network_nor_weights(monkeypatch, tmp_path):
    """No argument, no env: the copy inside the package, whatever the working directory holds."""
    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))  # a download could not hide here
    monkeypatch.chdir(tmp_path)
    tok = load_tokenizer()
    assert tok.source == str(PACKAGED_BPE_DIR)
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    verify_bpe_files(PACKAGED_BPE_DIR)


def test_env_dir_is_used(bpe_dir, tmp_path, monkeypatch):
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_dir / name, tmp_path / name)
    monkeypatch.setenv("GPT2_BPE_DIR", str(tmp_path))
    assert load_tokenizer().source == str(tmp_path)
    (tmp_path / "vocab.bpe").unlink()  # an explicit choice that is wrong is an error, not a silent fallback
    with pytest.raises(ValueError, match="vocab.bpe is missing"):
        load_tokenizer()


def test_non_string_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="string"):
        tokenizer.encode(None)
