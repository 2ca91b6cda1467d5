"""KV-cached decoding equals full recomputation, including the offset-mask and position traps."""

from __future__ import annotations

import pytest
import torch
from helpers.models import TINY, WIDE, random_model
from helpers.stepping import decode_one, decode_rows, prefill

from gpt2 import KVCache


@pytest.mark.parametrize("config", [pytest.param(WIDE, marks=pytest.mark.slow), TINY], ids=["wide", "tiny"])
def test_cached_decode_equals_full_recompute_at_every_step(config):
    model = random_model(config, seed=3)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, config.n_vocab, (2, 40), generator=g)
    cache = model.new_cache(batch_size=2)
    with torch.no_grad():
        logits = prefill(model, seq[:, :8], cache)
        for t in range(8, seq.shape[1]):
            full = model(seq[:, :t])[:, -1, :]
            assert (logits - full).abs().max().item() <= 1e-5, f"step {t}"
            logits = decode_one(model, seq[:, t], cache, t)


def test_chunk_after_prefix_uses_offset_mask(tiny_model):
    """Several new tokens after a cached prefix: positions offset and a shifted causal mask."""
    seq = torch.randint(0, TINY.n_vocab, (1, 30))
    cache = tiny_model.new_cache()
    with torch.no_grad():
        prefill(tiny_model, seq[:, :10], cache)
        chunk = tiny_model.step(seq[0, 10:30], torch.arange(10, 30), torch.zeros(20, dtype=torch.long), cache)
        full = tiny_model(seq)[0, 10:30]
    assert (chunk - full).abs().max().item() <= 1e-5


def test_one_query_sees_all_cached_keys(tiny_model):
    """The classic bug (is_causal=True for one query over many keys) would hide all but key 0."""
    seq = torch.randint(0, TINY.n_vocab, (1, 12))
    cache = tiny_model.new_cache()
    with torch.no_grad():
        prefill(tiny_model, seq[:, :11], cache)
        step = decode_one(tiny_model, seq[:, 11], cache, 11)
        only_first = tiny_model(seq[:, [0, 11]])[:, -1]  # what a query seeing only key 0 would compute
        full = tiny_model(seq)[:, -1]
    assert (step - full).abs().max().item() <= 1e-5
    assert (step - only_first).abs().max().item() > 1e-3


def test_cache_grows_with_the_text_and_is_bounded(tiny_model):
    """The cache starts at one chunk, grows (keeping what it holds) only when a step writes further, and
    refuses positions past max_len."""
    cache = tiny_model.new_cache(batch_size=2)
    assert cache.capacity == KVCache.CHUNK < TINY.n_ctx
    seq = torch.randint(0, TINY.n_vocab, (1, TINY.n_ctx), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prefill(tiny_model, seq[:, :40], cache)
        k_ptr, first40 = cache.k.data_ptr(), cache.k[:, 0, :, :40].clone()
        decode_one(tiny_model, seq[0, 40:41], cache, 40)
        assert cache.k.data_ptr() == k_ptr  # within capacity: no new buffers
        logits = prefill(tiny_model, seq[:, 41:], cache, start=41)  # up to position n_ctx - 1
        assert cache.capacity == TINY.n_ctx and torch.equal(cache.k[:, 0, :, :40], first40)
        assert (logits - tiny_model(seq)[:, -1]).abs().max().item() <= 1e-5
        with pytest.raises(ValueError, match="do not fit"):
            decode_one(tiny_model, torch.tensor([1]), cache, TINY.n_ctx)
    with pytest.raises(ValueError):
        KVCache(TINY, max_len=TINY.n_ctx + 1)


def test_batched_rows_decode_equals_single(tiny_model):
    """A batched decode step (continuous batching) gives each row what it would get alone."""
    seqs = [torch.randint(0, TINY.n_vocab, (1, n)) for n in (9, 3, 17)]
    shared = tiny_model.new_cache(batch_size=4)
    singles, firsts = [], []
    with torch.no_grad():
        for slot, s in zip((3, 0, 1), seqs):
            c = tiny_model.new_cache()
            firsts.append(prefill(tiny_model, s, c).argmax(-1))
            shared.k[:, slot, :, : s.shape[1]] = c.k[:, 0, :, : s.shape[1]]
            shared.v[:, slot, :, : s.shape[1]] = c.v[:, 0, :, : s.shape[1]]
            singles.append(decode_one(tiny_model, firsts[-1], c, s.shape[1]))
        out = decode_rows(
            tiny_model, torch.cat(firsts), torch.tensor([9, 3, 17]), shared, torch.tensor([3, 0, 1])
        )
    for row, single in enumerate(singles):
        assert (out[row] - single[0]).abs().max().item() <= 1e-5
