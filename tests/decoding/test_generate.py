"""Streaming generation: whole characters, stop strings, <|endoftext|>, long prompts, sliding window."""

from __future__ import annotations

import pytest
import torch
from helpers.models import TINY

from gpt2 import TextStream, generate, generate_steps


def run(model, tokenizer, prompt, **kw):
    steps = list(generate_steps(model, tokenizer, prompt, **kw))
    return steps, [s.token for s in steps if s.token is not None]


def test_joined_pieces_equal_final_text(tiny_model, tokenizer):
    steps, ids = run(tiny_model, tokenizer, "Streaming test", max_new_tokens=120, temperature=1.5, seed=3)
    pieces = [s.text for s in steps if s.text]
    text = tokenizer.decode(ids)
    assert "".join(pieces) == text
    assert len(pieces) > 10
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces)
    assert steps[-1].token is None and steps[-1].finish_reason in ("length", "eot")


def test_emoji_split_across_tokens_is_released_whole(tokenizer):
    ids = tokenizer.encode("Hi 🤗👍 ok")
    stream = TextStream()
    pieces = [stream.push(tokenizer.token_bytes(i)) for i in ids] + [stream.finish()]
    assert "".join(pieces) == "Hi 🤗👍 ok"
    assert not any("\ufffd" in p for p in pieces)
    assert "🤗" in pieces or any("🤗" in p for p in pieces)
    assert "" in pieces  # some pieces were held back until the character was complete


def test_invalid_utf8_becomes_replacement_once(tokenizer):
    stream = TextStream()
    out = stream.push(b"a\xf0\x9f") + stream.push(b"b") + stream.finish()
    assert out == "a\ufffdb" == b"a\xf0\x9fb".decode("utf-8", errors="replace")


def test_stop_string_split_across_tokens_is_not_shown():
    stream = TextStream(stop=["END"])
    out = [stream.push(b) for b in (b"hello E", b"N", b"D and more")]
    assert "".join(out) + stream.finish() == "hello "
    assert stream.stopped
    stream = TextStream(stop=["END"])
    assert stream.push(b"hello EN") == "hello "  # "EN" might start the stop string: held back
    assert stream.push(b"ough") == "ENough"


def test_generation_stops_at_stop_string(tiny_model, tokenizer):
    free_steps, ids = run(tiny_model, tokenizer, "abc", max_new_tokens=60, temperature=0)
    free = tokenizer.decode(ids)
    stop = free[10:14]
    assert stop.strip()
    text = "".join(generate(tiny_model, tokenizer, "abc", max_new_tokens=60, temperature=0, stop=[stop]))
    assert text == free[: free.find(stop)]
    steps, _ = run(tiny_model, tokenizer, "abc", max_new_tokens=60, temperature=0, stop=stop)
    assert steps[-1].finish_reason == "stop"


def test_stops_at_endoftext(tiny_model, tokenizer):
    """Bias the head so <|endoftext|> wins after a few tokens: generation must stop there."""
    model = type(tiny_model)(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    with torch.no_grad():
        model.wte.weight[tokenizer.eot_token] = model.ln_f.bias.sign() * 50.0  # ln_f output · row → huge
        model.ln_f.bias.abs_().add_(0.5)
    steps, ids = run(model, tokenizer, "The end", max_new_tokens=50, temperature=0)
    assert steps[-1].finish_reason == "eot"
    assert tokenizer.eot_token not in ids and len(ids) < 50


def test_empty_prompt_starts_from_endoftext(tiny_model, tokenizer):
    steps = list(generate_steps(tiny_model, tokenizer, "", max_new_tokens=5, temperature=0))
    with torch.no_grad():
        first = tiny_model(torch.tensor([[tokenizer.eot_token]]))[0, -1]
    assert torch.allclose(steps[0].logits, first, atol=1e-5)


def test_literal_endoftext_in_prompt_is_text(tiny_model, tokenizer):
    steps = list(generate_steps(tiny_model, tokenizer, "<|endoftext|>", max_new_tokens=3, temperature=0))
    ids = tokenizer.encode("<|endoftext|>")
    with torch.no_grad():
        want = tiny_model(torch.tensor([ids]))[0, -1]
    assert torch.allclose(steps[0].logits, want, atol=1e-5)


@pytest.mark.slow
def test_long_prompt_and_generation_slide_the_window(tiny_model, tokenizer):
    """Past n_ctx the window keeps the last 3/4 of the context; every step's logits must equal a full
    recomputation over exactly that window (n_ctx=128 here, so it slides several times)."""
    n_ctx, keep = TINY.n_ctx, TINY.n_ctx - TINY.n_ctx // 4
    prompt = " ".join(f"word{i}" for i in range(300))
    ids = tokenizer.encode(prompt)
    assert len(ids) > 2 * n_ctx
    steps, out = run(tiny_model, tokenizer, prompt, max_new_tokens=200, temperature=0.8, seed=1)
    assert len(out) == 200 or steps[-1].finish_reason == "eot"
    window = ids[-n_ctx:]
    filled = len(window)
    with torch.no_grad():
        for step in steps[:-1]:
            want = tiny_model(torch.tensor([window]))[0, -1]
            assert (step.logits - want).abs().max().item() <= 1e-4
            window.append(step.token)
            if filled >= n_ctx:
                window = window[-keep:]
                filled = len(window)
            else:
                filled += 1


@pytest.mark.slow
def test_3000_token_prompt_plus_100_new_tokens(wide_model, tokenizer):
    prompt = "The history of the city, told street by street. " * 300
    ids = tokenizer.encode(prompt)
    assert len(ids) >= 3000
    steps, out = run(wide_model, tokenizer, prompt, max_new_tokens=100, temperature=1.0, top_k=40, seed=0)
    assert len(out) == 100 or steps[-1].finish_reason == "eot"
    assert all(0 <= t < 50257 for t in out)


def test_prompt_must_be_text(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="prompt"):
        generate(tiny_model, tokenizer, None)
