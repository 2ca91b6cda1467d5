"""`python -m convert --from-pth`: the book's GPTModel state dicts (bare, or in model_and_optimizer.pth).

The state dict is built here from known random weights under the book's names; the reference is Hugging
Face's GPT2LMHeadModel filled by this file's own mapping (q, k, v fused as HF's Conv1D `[in, out]`).
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers.reference import hf_gpt2_config
from transformers import GPT2LMHeadModel

from convert.__main__ import main
from gpt2.formats.weights import list_models, load_model, read_metadata

V, CTX, D, HEADS, LAYERS = 50257, 48, 64, 4, 2
TOL = 1e-4


def book_state(seed: int = 0, *, qkv_bias: bool = False, tied: bool = False) -> dict[str, torch.Tensor]:
    """What `GPTModel(cfg).state_dict()` holds, including the causal-mask buffers, with known values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g)

    s = {"tok_emb.weight": r(V, D, scale=0.3), "pos_emb.weight": r(CTX, D, scale=0.3)}
    for i in range(LAYERS):
        b = f"trf_blocks.{i}."
        for proj in ("W_query", "W_key", "W_value"):
            s[f"{b}att.{proj}.weight"] = r(D, D, scale=0.2)
            if qkv_bias:
                s[f"{b}att.{proj}.bias"] = r(D)
        s[f"{b}att.out_proj.weight"] = r(D, D)
        s[f"{b}att.out_proj.bias"] = r(D)
        s[f"{b}att.mask"] = torch.triu(torch.ones(CTX, CTX), diagonal=1)
        s[f"{b}ff.layers.0.weight"] = r(4 * D, D)
        s[f"{b}ff.layers.0.bias"] = r(4 * D)
        s[f"{b}ff.layers.2.weight"] = r(D, 4 * D)
        s[f"{b}ff.layers.2.bias"] = r(D)
        for norm in ("norm1", "norm2"):
            s[f"{b}{norm}.scale"] = 1.0 + r(D)
            s[f"{b}{norm}.shift"] = r(D)
    s["final_norm.scale"] = 1.0 + r(D)
    s["final_norm.shift"] = r(D)
    s["out_head.weight"] = s["tok_emb.weight"].clone() if tied else r(V, D, scale=0.3)
    return s


def hf_from_book(s: dict[str, torch.Tensor]) -> GPT2LMHeadModel:
    cfg = hf_gpt2_config(V, CTX, D, LAYERS, HEADS, tied=False)
    hf = GPT2LMHeadModel(cfg).eval()
    t = {
        "transformer.wte.weight": s["tok_emb.weight"],
        "transformer.wpe.weight": s["pos_emb.weight"],
        "transformer.ln_f.weight": s["final_norm.scale"],
        "transformer.ln_f.bias": s["final_norm.shift"],
        "lm_head.weight": s["out_head.weight"],
    }
    for i in range(LAYERS):
        b, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = ("W_query", "W_key", "W_value")
        t[f"{h}attn.c_attn.weight"] = torch.cat([s[f"{b}att.{p}.weight"].T for p in qkv], dim=1)
        t[f"{h}attn.c_attn.bias"] = torch.cat([s.get(f"{b}att.{p}.bias", torch.zeros(D)) for p in qkv])
        t[f"{h}attn.c_proj.weight"] = s[f"{b}att.out_proj.weight"].T
        t[f"{h}attn.c_proj.bias"] = s[f"{b}att.out_proj.bias"]
        t[f"{h}mlp.c_fc.weight"] = s[f"{b}ff.layers.0.weight"].T
        t[f"{h}mlp.c_fc.bias"] = s[f"{b}ff.layers.0.bias"]
        t[f"{h}mlp.c_proj.weight"] = s[f"{b}ff.layers.2.weight"].T
        t[f"{h}mlp.c_proj.bias"] = s[f"{b}ff.layers.2.bias"]
        t[f"{h}ln_1.weight"], t[f"{h}ln_1.bias"] = s[f"{b}norm1.scale"], s[f"{b}norm1.shift"]
        t[f"{h}ln_2.weight"], t[f"{h}ln_2.bias"] = s[f"{b}norm2.scale"], s[f"{b}norm2.shift"]
    missing, unexpected = hf.load_state_dict({k: v.contiguous() for k, v in t.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf


def _check_logits(path, state) -> torch.nn.Module:
    model = load_model(path)
    idx = torch.randint(0, V, (2, CTX), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = model(idx), hf_from_book(state)(idx).logits
    err = (got - want).abs().max().item()
    assert err <= TOL, f"max |Δ| {err:.3g}"
    assert want.abs().max() > 0.5
    return model


def test_bare_state_dict_without_qkv_bias_keeps_its_own_head(tmp_path, bpe_dir, capsys):
    state = book_state(1, qkv_bias=False)
    torch.save(state, tmp_path / "model.pth")
    out = tmp_path / "weights"
    args = ["--from-pth", str(tmp_path / "model.pth"), "--n-head", str(HEADS), "--out", str(out)]
    assert main([*args, "--name", "my-finetune", "--bpe-dir", str(bpe_dir)]) == 0
    assert "separate output head" in capsys.readouterr().out
    path = out / "gpt2-my-finetune.safetensors"
    model = _check_logits(path, state)
    assert model.config.tied_head is False
    assert torch.equal(model.lm_head.weight, state["out_head.weight"])  # untied head preserved exactly
    assert list_models(out) == {"my-finetune": path.resolve()}  # what the app's selector shows
    assert read_metadata(path)["source"] == "PyTorch state dict model.pth"


def test_model_and_optimizer_pth_with_real_adamw_state(tmp_path):
    state = book_state(2, qkv_bias=True)
    params = {k: v.clone().requires_grad_(True) for k, v in state.items() if not k.endswith("att.mask")}
    opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.1)
    sum((p**2).sum() for p in params.values()).backward()
    opt.step()  # a real optimizer state (exp_avg, exp_avg_sq, step) and moved weights
    trained = {k: params[k].detach().clone() if k in params else v for k, v in state.items()}
    ckpt = {"model_state_dict": trained, "optimizer_state_dict": opt.state_dict()}
    assert len(ckpt["optimizer_state_dict"]["state"]) == len(params)
    torch.save(ckpt, tmp_path / "model_and_optimizer.pth")
    out = tmp_path / "weights"
    assert (
        main(["--from-pth", str(tmp_path / "model_and_optimizer.pth"), "--n-head", "4", "--out", str(out)])
        == 0
    )
    model = _check_logits(out / "gpt2-model_and_optimizer.safetensors", trained)
    assert torch.equal(model.h[1].attn.c_attn.bias[D : 2 * D], trained["trf_blocks.1.att.W_key.bias"])


def test_head_equal_to_embedding_is_stored_once(tmp_path):
    state = book_state(3, tied=True)
    torch.save(
        {"_orig_mod." + k: v for k, v in state.items()}, tmp_path / "compiled.pth"
    )  # torch.compile names
    out = tmp_path / "weights"
    assert main(["--from-pth", str(tmp_path / "compiled.pth"), "--n-head", "4", "--out", str(out)]) == 0
    model = _check_logits(out / "gpt2-compiled.safetensors", state)
    assert model.config.tied_head is True and model.lm_head is None


def test_size_must_match_the_tensors(tmp_path, capsys):
    torch.save(book_state(4), tmp_path / "model.pth")
    out = tmp_path / "weights"
    assert main(["--from-pth", str(tmp_path / "model.pth"), "--size", "124M", "--out", str(out)]) == 1
    assert "the tensors give width 64, but GPT-2 124M has 768 (wrong --size?)" in capsys.readouterr().err
    assert main(["--from-pth", str(tmp_path / "model.pth"), "--out", str(out)]) == 1
    assert "--from-pth needs --size" in capsys.readouterr().err
    assert not out.exists()


REFUSED = "refused: loading it would need to unpickle code or objects, which could run anything"


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PWNED_MARKER']}",))


def _bad_file(kind: str, path) -> str:
    """Write a refused input to `path`; return text the error must contain."""
    if kind == "code":
        torch.save({"model_state_dict": book_state(), "trap": _Payload()}, path)
        return f"{REFUSED} (it references posix.system)"
    if kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
        return f"{REFUSED} (it references torch.nn.modules.linear.Linear)"
    if kind == "junk":
        path.write_bytes(b"<html>404 Not Found</html>")
        return "is not a readable PyTorch checkpoint"
    state = book_state()
    if kind == "missing":
        del state["trf_blocks.1.ff.layers.2.bias"]
        msg = "tensor trf_blocks.1.ff.layers.2.bias is missing (expected shape (64,))"
    elif kind == "shape":
        state["trf_blocks.0.att.W_key.weight"] = torch.zeros(D, D + 1)
        msg = "tensor trf_blocks.0.att.W_key.weight has shape (64, 65), expected (64, 64)"
    elif kind == "extra":
        state["out_head.bias"] = torch.zeros(V)
        msg = "unexpected tensor out_head.bias with shape (50257,)"
    elif kind == "nan":
        state["trf_blocks.0.norm2.shift"][3] = float("nan")
        msg = "h.0.ln_2.bias contains NaN"
    elif kind == "optimizer-only":
        state = {"optimizer_state_dict": {"state": {}, "param_groups": []}}
        msg = "holds no model state dict"
    torch.save(state, path)
    return msg


@pytest.mark.parametrize(
    "kind", ["code", "module", "junk", "missing", "shape", "extra", "nan", "optimizer-only"]
)
def test_refused_inputs_write_nothing(kind, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    expected = _bad_file(kind, tmp_path / "bad.pth")
    out = tmp_path / "weights"
    assert main(["--from-pth", str(tmp_path / "bad.pth"), "--n-head", "4", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert not out.exists()
    assert not marker.exists()  # the pickled os.system call never ran
