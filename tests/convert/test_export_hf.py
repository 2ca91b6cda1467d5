"""`python -m convert --to-hf / --push`: our weights in the Hub's GPT-2 layout, checked against transformers
(`GPT2LMHeadModel.from_pretrained`, its tokenizers) and against the stand-in Hub used for `hf://`."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time

import pytest
import torch
from helpers.hub_server import FakeHub, point_hub_at
from helpers.models import TINY, random_hf_model, random_model
from helpers.reference import hf_config
from safetensors import safe_open
from transformers import AutoTokenizer, GPT2LMHeadModel

from convert.__main__ import main
from gpt2 import GPT2Config, generate, generate_steps, load_model, save_model
from gpt2.formats.hf import config_from_hf, config_to_hf, hf_to_ours, ours_to_hf
from gpt2.tokenizer import PACKAGED_BPE_DIR

TOL = 1e-5
UNTIED = GPT2Config(**{**TINY.to_hparams(), "tied_head": False})
EXPORT_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
}
PROMPT = "Every effort moves you"
TOKEN = "hf_test_write_token"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["tied", "untied"])
def converted(request, tmp_path_factory):
    """A file `python -m convert` made (random weights, TINY dims), tied or untied head."""
    config = TINY if request.param == "tied" else UNTIED
    path = tmp_path_factory.mktemp("weights") / f"gpt2-{request.param}.safetensors"
    save_model(random_model(config, seed=7), path, name=request.param, source="random test weights")
    return path


def export(source_args: list[str], out, *extra: str) -> None:
    assert main([*source_args, "--to-hf", str(out), *extra]) == 0


def greedy_transformers(hf: GPT2LMHeadModel, ids: list[int], n: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(hf(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == 50256:
                break
    return out


def test_one_name_table_both_ways():
    """ours → HF → ours is exact, and the HF side has exactly transformers' own names and shapes."""
    for config in (TINY, UNTIED):
        model = random_model(config, seed=1)
        state = model.state_dict()
        hf_state = ours_to_hf(state, config)
        want = {
            k: tuple(v.shape)
            for k, v in GPT2LMHeadModel(hf_config(model)).state_dict().items()
            if not (config.tied_head and k == "lm_head.weight")  # a tied head is not stored
        }
        assert {k: tuple(v.shape) for k, v in hf_state.items()} == want
        back, back_config = hf_to_ours(hf_state, config_from_hf(config_to_hf(config), "x"), "x")
        assert back_config == config and back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)


def test_export_loads_in_transformers_with_the_same_logits(converted, tmp_path, tokenizer, capsys):
    out = tmp_path / "export"
    export(["--from-weights", str(converted)], out)
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    ours = load_model(converted)
    tied = ours.config.tied_head
    assert ("note: separate output head" in capsys.readouterr().out) is not tied

    cfg = json.loads((out / "config.json").read_text())
    c = ours.config
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["model_type"] == "gpt2"
    assert (cfg["n_ctx"], cfg["n_positions"], cfg["n_embd"], cfg["n_head"], cfg["n_layer"]) == (
        c.n_ctx,
        c.n_ctx,
        c.n_embd,
        c.n_head,
        c.n_layer,
    )
    assert cfg["vocab_size"] == 50257 and cfg["activation_function"] == "gelu_new"
    assert cfg["layer_norm_epsilon"] == 1e-5 and cfg["tie_word_embeddings"] is tied
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = f.keys()
        assert ("lm_head.weight" in names) is not tied
        assert tuple(f.get_tensor("transformer.h.0.mlp.c_fc.weight").shape) == (c.n_embd, 4 * c.n_embd)

    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings is tied
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) is tied
    if not tied:
        assert torch.equal(hf.lm_head.weight, ours.lm_head.weight)
    idx = torch.randint(0, 50257, (2, c.n_ctx), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = hf(idx).logits, ours(idx)
    assert (got - want).abs().max().item() <= TOL and want.abs().max().item() > 0.1

    steps = generate_steps(ours, tokenizer, PROMPT, max_new_tokens=24, temperature=0.0)
    greedy = [s.token for s in steps if s.token is not None]
    assert greedy == greedy_transformers(hf, tokenizer.encode(PROMPT), 24) and len(set(greedy)) > 1

    card = (out / "README.md").read_text()
    assert sha256(converted) in card and sha256(out / "model.safetensors") in card
    assert f"converted weights file {converted.name} (converted from: random test weights)" in card


@pytest.mark.parametrize("route", ["--from-hf", "--from-pth"])
def test_other_routes_export_the_same_model(route, tmp_path):
    """A Hugging Face folder and an HF-named .pth (untied heads) leave as the model they came in as."""
    hf = random_hf_model(3, tied=False, vocab_size=50257, n_positions=64, n_embd=64, n_head=4, n_layer=2)
    if route == "--from-hf":
        hf.save_pretrained(tmp_path / "source")
        source = [route, str(tmp_path / "source")]
        hashed = tmp_path / "source" / "model.safetensors"
    else:
        torch.save(hf.state_dict(), tmp_path / "finetune.pth")
        source = [route, str(tmp_path / "finetune.pth"), "--n-head", "4"]
        hashed = tmp_path / "finetune.pth"
    export(source, tmp_path / "export")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    assert not back.config.tie_word_embeddings
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (back(idx).logits - hf(idx).logits).abs().max().item() <= TOL
    assert sha256(hashed) in (tmp_path / "export" / "README.md").read_text()


def test_openai_checkpoint_exports(tmp_path, bpe_dir):
    pytest.importorskip("tensorflow")
    from helpers.tf_checkpoints import hf_reference, random_arrays, write_checkpoint

    hp = dict(n_vocab=50257, n_ctx=32, n_embd=32, n_head=2, n_layer=2)
    ckpt = write_checkpoint(tmp_path / "ckpt", hp, random_arrays(hp, 2), bpe_dir)
    export(["--source-dir", str(ckpt), "--name", "tf"], tmp_path / "export")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (back(idx).logits - hf_reference(ckpt)(idx).logits).abs().max().item() <= TOL
    card = (tmp_path / "export" / "README.md").read_text()
    assert (
        sha256(ckpt / "model.ckpt.data-00000-of-00001") in card and sha256(ckpt / "model.ckpt.index") in card
    )


TRICKY = [
    "Every effort moves you",
    "  two leading spaces, three trailing   ",
    "naïve café — “quotes”, 日本語, emoji 🤖🏳️‍🌈",
    "\n\n\ttabs and\r\nnewlines\n",
    "don't it's we'll I'M 12345 3.14159",
    "<|endoftext|>",
    "text<|endoftext|>more text",
]


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "gpt2-tiny.safetensors"
    save_model(random_model(TINY, seed=9), src, name="tiny")
    out = tmp_path_factory.mktemp("exports") / "tiny"
    export(["--from-weights", str(src)], out)
    return src, out


def test_exported_tokenizer_encodes_the_same_ids(exported_tiny, tokenizer, tmp_path):
    from tokenizers import Tokenizer

    _, out = exported_tiny
    for ours, theirs in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        assert sha256(out / theirs) == sha256(PACKAGED_BPE_DIR / ours)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    raw.encode_special_tokens = True  # text typed by a user is text, as in our tokenizer
    fast = AutoTokenizer.from_pretrained(out)
    slow_dir = tmp_path / "no-tokenizer-json"  # what a folder written without `tokenizers` holds
    shutil.copytree(out, slow_dir, ignore=shutil.ignore_patterns("tokenizer.json"))
    from_merges = AutoTokenizer.from_pretrained(slow_dir)
    for text in TRICKY:
        want = tokenizer.encode(text)
        assert raw.encode(text).ids == want, text
        for hf_tok in (fast, from_merges):
            assert hf_tok.encode(text, add_special_tokens=False, split_special_tokens=True) == want, text
            if "<|endoftext|>" not in text:
                assert hf_tok.encode(text, add_special_tokens=False) == want
                assert hf_tok.decode(want) == text
    # By default Hugging Face tokenizers read "<|endoftext|>" typed in a prompt as the special token.
    assert fast.encode("<|endoftext|>", add_special_tokens=False) == [50256]
    assert fast.eos_token_id == 50256 and fast.model_max_length == TINY.n_ctx


def test_without_tokenizers_the_export_says_tokenizer_json_was_skipped(tmp_path, monkeypatch, capsys):
    src = tmp_path / "gpt2-tiny.safetensors"
    save_model(random_model(TINY, seed=9), src, name="tiny")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` raises ImportError
        export(["--from-weights", str(src)], tmp_path / "export")
    assert "tokenizer.json skipped: the `tokenizers` library is not installed" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "export").iterdir()} == EXPORT_FILES - {"tokenizer.json"}


def test_half_precision_export(exported_tiny, tmp_path):
    src, _ = exported_tiny
    export(["--from-weights", str(src), "--dtype", "float16"], tmp_path / "fp16")
    assert json.loads((tmp_path / "fp16" / "config.json").read_text())["torch_dtype"] == "float16"
    with safe_open(str(tmp_path / "fp16" / "model.safetensors"), "pt") as f:
        names = f.keys()
        assert all(f.get_tensor(k).dtype == torch.float16 for k in names)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "fp16")
    assert hf.dtype == torch.float16
    assert torch.equal(hf.transformer.wte.weight, load_model(src).wte.weight.half())


# ---------------------------------------------------------------------------------------------------------
# Publishing, against the stand-in Hub


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        point_hub_at(monkeypatch, server.url, tmp_path / "hf-cache")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def writes(hub: FakeHub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in hub.requests if m != "GET" and m != "HEAD"]


def test_push_uploads_the_export_in_one_commit_and_loads_back(exported_tiny, hub, tmp_path, tokenizer):
    src, _ = exported_tiny
    out = tmp_path / "export"
    export(["--from-weights", str(src), "--push", "hf://me/exported", "--private"], out)
    commit, files = hub.repos["me/exported"]
    assert set(files) == EXPORT_FILES | {".gitattributes"}
    assert all(files[p.name] == p.read_bytes() for p in out.iterdir())  # what was written is what is up
    assert "hf://me/exported" in files["README.md"].decode() and hub.created["me/exported"]["visibility"]
    assert hub.commits == [("me/exported", "Upload tiny (GPT-2)")] and set(hub.tokens) == {TOKEN}
    assert [p for _, p in writes(hub)][-1] == "/api/models/me/exported/commit/main"

    # The same stand-in Hub now serves it to the app's loader: the same text as the original file.
    from gpt2.formats.hub import load_hub_model

    loaded = load_hub_model("hf://me/exported")
    original = load_model(src)
    args = dict(max_new_tokens=32, temperature=0.9, top_k=40, seed=1234)
    text = "".join(generate(loaded, tokenizer, PROMPT, **args))
    assert text == "".join(generate(original, tokenizer, PROMPT, **args)) and len(text) > 10


def test_push_without_a_folder_uses_the_login_cache(exported_tiny, hub, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "token").write_text("hf_cached_login\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    hub.add_repo("me/existing", {"README.md": b"old card"})
    assert main(["--from-weights", str(exported_tiny[0]), "--push", "hf://me/existing", "--private"]) == 0
    assert set(hub.tokens) == {"hf_cached_login"} and "me/existing" not in hub.created
    assert set(hub.repos["me/existing"][1]) == EXPORT_FILES
    assert "visibility was left as it was" in capsys.readouterr().out


FAILURES = [
    # (step told to fail, HTTP status, pre-existing repository?, words the error must contain)
    ("commit", 500, False, "step 3/3 (upload): {url} answered HTTP 500: commit failed (told to); the "
     "repository this run created was deleted again (nothing was published)"),
    ("preupload", 500, False, "step 3/3 (upload)"),
    ("commit", 500, True, "step 3/3 (upload): {url} answered HTTP 500: commit failed (told to); the "
     "repository is as it was before"),
    ("create", 403, False, "step 2/3 (create the repository): {url} answered HTTP 403: create failed (told "
     "to) (does the token have write access there?)"),
]  # fmt: skip


@pytest.mark.parametrize("step,status,existing,message", FAILURES)
def test_failed_push_is_reported_and_leaves_nothing_half_written(
    exported_tiny, hub, monkeypatch, tmp_path, capsys, step, status, existing, message
):
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub retries a 5xx preupload
    before = hub.add_repo("me/model", {"README.md": b"v1"}) if existing else None
    hub.fail[step] = status
    out = tmp_path / "export"
    args = ["--from-weights", str(exported_tiny[0]), "--to-hf", str(out), "--push", "hf://me/model"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: push to hf://me/model failed at ") and err.count("\n") == 1, err
    assert message.format(url=hub.url) in err, err
    assert f"the export in {out} is complete" in err and {p.name for p in out.iterdir()} == EXPORT_FILES
    if existing:
        assert hub.repos["me/model"] == (before, {"README.md": b"v1"})
    else:
        assert "me/model" not in hub.repos and hub.commits == []


def test_failed_clean_up_says_the_empty_repository_is_left(exported_tiny, hub, capsys):
    hub.fail.update(commit=500, delete=500)
    assert main(["--from-weights", str(exported_tiny[0]), "--push", "hf://me/model"]) == 1
    err = capsys.readouterr().err
    assert "the repository this run created is still there, empty, and could not be deleted" in err
    assert hub.repos["me/model"][1].keys() == {".gitattributes"}  # nothing of the export


def test_no_token_fails_before_any_request(exported_tiny, hub, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["--from-weights", str(exported_tiny[0]), "--push", "hf://me/model"]) == 1
    assert "failed at step 1/3 (find a token): no Hugging Face token" in capsys.readouterr().err
    assert writes(hub) == []


def test_bad_options_are_refused_before_any_work(exported_tiny, tmp_path, capsys):
    src, out = exported_tiny
    hf_file, missing = out / "model.safetensors", tmp_path / "missing.safetensors"
    cases = [
        (["--from-weights", str(src), "--private"], "--private applies to --push only"),
        (["--from-weights", str(src), "--push", "hf://a/b@v1"], "--push takes hf://OWNER/REPO"),
        (["--from-weights", str(src), "--push", "hf://a/b/x.safetensors"], "--push takes hf://OWNER/REPO"),
        (["--from-weights", str(src), "--push", "me/repo"], "is not a Hub spec"),
        (["--from-weights", str(src), "--to-hf", str(out)], "exists and is not an empty folder"),
        (["--from-weights", str(src), "--to-hf", str(tmp_path / "x"), "--out", str(tmp_path)], "--out is"),
        (["--from-weights", str(hf_file), "--to-hf", str(tmp_path / "y")], "converts with --from-hf"),
        (["--from-weights", str(missing), "--to-hf", str(tmp_path / "z")], "not a file"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_folder(exported_tiny, tmp_path, monkeypatch, capsys):
    import convert.to_hf
    from convert.common import ConvertError

    def broken(*args):
        raise ConvertError("the export read back with a different h.0.attn.c_attn.weight")

    monkeypatch.setattr(convert.to_hf, "_verify", broken)
    out = tmp_path / "new" / "export"
    assert main(["--from-weights", str(exported_tiny[0]), "--to-hf", str(out)]) == 1
    assert "read back with a different" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the folder, its parent, nor a hidden partial one
