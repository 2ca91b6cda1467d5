"""`gpt2.formats.hub`: weights from the Hugging Face Hub, against a stand-in Hub on 127.0.0.1.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE into `huggingface_hub.constants` when it
is imported; in-process tests patch those constants, and the offline test runs a fresh interpreter with
the real environment variables, as a Space or a user would set them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.hub_server import FakeHub, point_hub_at
from helpers.models import ROOT, TINY, random_hf_model, random_model
from transformers import GPT2LMHeadModel

from gpt2 import generate_steps, save_model
from gpt2.formats.hub import HubError, HubUnreachable, is_hub_spec, load_hub_model, model_name, parse_spec

HF_DIMS = dict(vocab_size=50257, n_positions=128, n_embd=64, n_head=4, n_layer=2)
PROMPT = "Every effort moves you"


def hf_model(seed: int) -> GPT2LMHeadModel:
    return random_hf_model(seed, **HF_DIMS)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The stand-in Hub with the repositories the tests load, and the models they were made from."""
    tmp = tmp_path_factory.mktemp("hub-repos")
    hf = hf_model(1)
    hf.save_pretrained(tmp / "tiny")
    tiny = folder_files(tmp / "tiny")
    ours = random_model(TINY, seed=5)
    save_model(ours, tmp / "gpt2-tiny.safetensors", name="tiny")
    ours_bytes = (tmp / "gpt2-tiny.safetensors").read_bytes()
    llama = {
        **tiny,
        "config.json": json.dumps({**json.loads(tiny["config.json"]), "model_type": "llama"}).encode(),
    }
    with FakeHub() as hub:
        # A pickle beside the safetensors, as on the real openai-community/gpt2: it must never be fetched.
        hub.add_repo("org/tiny-gpt2", {**tiny, "pytorch_model.bin": b"\x80\x04 a pickle, never to be loaded"})
        hub.add_repo("me/ours", {"gpt2-tiny.safetensors": ours_bytes, "README.md": b"# weights"})
        hub.add_repo("me/two", {"gpt2-a.safetensors": ours_bytes, "sub/gpt2-b.safetensors": ours_bytes})
        hub.add_repo("org/llama", llama)
        hub.add_repo("org/truncated", {**tiny, "model.safetensors": tiny["model.safetensors"][:5000]})
        hub.add_repo(
            "org/pickle-only", {"config.json": tiny["config.json"], "pytorch_model.bin": b"\x80\x04"}
        )
        yield hub, hf, ours


@pytest.fixture
def hub(published, monkeypatch, tmp_path):
    server, hf, ours = published
    server.requests.clear()
    point_hub_at(monkeypatch, server.url, tmp_path / "hf-cache")
    return server, hf, ours


def greedy_ids_ours(model, tokenizer, n: int) -> list[int]:
    steps = generate_steps(model, tokenizer, PROMPT, max_new_tokens=n, temperature=0.0)
    return [s.token for s in steps if s.token is not None]


def greedy_ids_transformers(hf: GPT2LMHeadModel, tokenizer, n: int) -> list[int]:
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(hf(ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tokenizer.eot_token:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_hf_format_repo_generates_what_transformers_does(hub, tokenizer):
    server, hf, _ = hub
    model = load_hub_model("hf://org/tiny-gpt2")
    assert model.runtime.name == "org/tiny-gpt2" and model.config.n_layer == 2 and model.config.tied_head
    assert all(p.dtype == torch.float32 for p in model.parameters())
    want = greedy_ids_transformers(hf, tokenizer, 24)
    assert greedy_ids_ours(model, tokenizer, 24) == want and len(want) == 24 and len(set(want)) > 1
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= 1e-4
    fetched = server.fetched()
    assert sorted(fetched) == [
        "/org/tiny-gpt2/resolve/main/config.json",
        "/org/tiny-gpt2/resolve/main/model.safetensors",
    ]
    # A second load is served from huggingface_hub's cache: no file body is fetched again.
    server.requests.clear()
    load_hub_model("hf://org/tiny-gpt2")
    assert server.fetched() == []


def test_own_format_repo_loads_the_same_tensors(hub):
    _, _, ours = hub
    for spec in (
        "hf://me/ours",
        "hf://me/ours/gpt2-tiny.safetensors",
        "hf://me/two@main/sub/gpt2-b.safetensors",
    ):
        model = load_hub_model(spec)
        assert model.config == ours.config and model.runtime.name == model_name(spec)
        for key, value in ours.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


def test_explicit_hf_file_uses_the_config_beside_it(hub, tokenizer):
    _, hf, _ = hub
    model = load_hub_model("hf://org/tiny-gpt2/model.safetensors")
    assert greedy_ids_ours(model, tokenizer, 8) == greedy_ids_transformers(hf, tokenizer, 8)


FAILURES = [
    ("hf://org/missing", "repository org/missing not found on http://127.0.0.1"),
    ("hf://org/tiny-gpt2/nope.safetensors", "org/tiny-gpt2@main has no file 'nope.safetensors'"),
    ("hf://org/tiny-gpt2@v9", "revision 'v9' not found in org/tiny-gpt2"),
    ("hf://org/llama", "model_type is 'llama', not \"gpt2\"; this model cannot be served faithfully"),
    ("hf://org/truncated", "model.safetensors is not a readable safetensors file (truncated or corrupt"),
    ("hf://org/pickle-only", "no model.safetensors; only safetensors are loaded from the Hub"),
    ("hf://me/two", "holds 2 weights files (gpt2-a.safetensors, sub/gpt2-b.safetensors): name one"),
]


@pytest.mark.parametrize("spec,message", FAILURES, ids=[s.split("//")[1] for s, _ in FAILURES])
def test_failures_are_one_clear_line(hub, spec, message):
    server, _, _ = hub
    with pytest.raises(HubError) as info:
        load_hub_model(spec)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(spec), text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback to read
    assert not any(p.endswith("pytorch_model.bin") for p in server.fetched())


def test_offline_with_nothing_cached_is_one_clear_line(hub, monkeypatch, tmp_path):
    server, _, _ = hub
    point_hub_at(monkeypatch, server.url, tmp_path / "empty-cache", offline=True)
    for spec in ("hf://org/tiny-gpt2", "hf://org/tiny-gpt2/model.safetensors"):
        with pytest.raises(HubError, match="HF_HUB_OFFLINE is set and .* not in the local cache") as info:
            load_hub_model(spec)
        assert "\n" not in str(info.value)
    assert server.requests == []  # offline means offline


def test_unreachable_hub_with_nothing_cached_is_one_clear_line_at_once(monkeypatch, tmp_path):
    with FakeHub() as dead:
        url = dead.url
    point_hub_at(monkeypatch, url, tmp_path / "cache")
    # huggingface_hub retries a refused connection with backoff (the file list alone took 25 s): the
    # loader asks once whether the Hub answers at all, and goes to the cache at once when it does not.
    for spec, what in (
        ("hf://org/x/model.safetensors", "model.safetensors"),
        ("hf://org/x", "the file list"),
    ):
        start = time.monotonic()
        with pytest.raises(HubUnreachable, match=f"cannot reach {url} and {what} of org/x@main is not in"):
            load_hub_model(spec)
        assert time.monotonic() - start < 5


OFFLINE_PROBE = """
import sys, torch
from gpt2.formats.hub import load_hub_model
idx = torch.arange(40).unsqueeze(0)
for spec in sys.argv[1:]:
    with torch.no_grad():
        print(spec, float(load_hub_model(spec)(idx).double().sum()))
"""


@pytest.mark.slow
def test_second_load_works_offline_from_the_cache(published, monkeypatch, tmp_path):
    """Load once online, stop the Hub, then a fresh process with HF_HUB_OFFLINE=1 loads from the cache."""
    home = tmp_path / "hf-home"
    with FakeHub() as server:
        tiny = {k: v for k, v in published[0].repos["org/tiny-gpt2"][1].items() if k != "pytorch_model.bin"}
        server.add_repo("org/tiny-gpt2", tiny)
        server.add_repo("me/ours", published[0].repos["me/ours"][1])
        url = server.url
        point_hub_at(monkeypatch, url, home / "hub")
        idx = torch.arange(40).unsqueeze(0)
        with torch.no_grad():
            want = {
                s: float(load_hub_model(s)(idx).double().sum())
                for s in ("hf://org/tiny-gpt2", "hf://me/ours")
            }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=url, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))

    def probe(*specs: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", OFFLINE_PROBE, *specs]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    proc = probe(*want)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(line.split() for line in proc.stdout.strip().splitlines())
    assert {k: float(v) for k, v in got.items()} == pytest.approx(want, rel=1e-6)
    # Offline, a repository never downloaded is still a one-line error, not a traceback.
    proc = probe("hf://org/never-seen")
    assert proc.returncode == 1
    assert "HubUnreachable: hf://org/never-seen: HF_HUB_OFFLINE is set" in proc.stderr


@pytest.mark.parametrize(
    "spec,repo,revision,filename",
    [
        ("hf://openai-community/gpt2", "openai-community/gpt2", None, None),
        ("hf://me/my.gpt2@v1.0", "me/my.gpt2", "v1.0", None),
        ("hf://me/m@" + "a" * 40 + "/dir/gpt2-x.safetensors", "me/m", "a" * 40, "dir/gpt2-x.safetensors"),
    ],
)
def test_spec_parsing(spec, repo, revision, filename):
    s = parse_spec(spec)
    assert (s.repo_id, s.revision, s.filename) == (repo, revision, filename)
    assert is_hub_spec(spec) and str(s) == spec and model_name(spec) == spec[len("hf://") :]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("hf://gpt2", "expected hf://OWNER/REPO"),
        ("hf://", "expected hf://OWNER/REPO"),
        ("hf://a/b/", "invalid file path"),
        ("hf://-a/b", "invalid owner '-a'"),
        ("hf://a/b--c", "invalid repository name 'b--c'"),
        ("hf://a/b@", "invalid revision ''"),
        ("hf://a/b@x y", "invalid revision 'x y'"),
        ("hf://a/b/../c.safetensors", "invalid file path"),
        ("hf://a/b/pytorch_model.bin", "only .safetensors weights are loaded"),
        ("weights/", "is not a Hub spec"),
    ],
)
def test_bad_specs_are_refused_before_any_network(spec, message):
    with pytest.raises(HubError, match=message) as info:
        load_hub_model(spec)
    assert "\n" not in str(info.value)


def test_hub_weights_match_the_converter(hub, tmp_path):
    """The Hub loader and `convert --from-hf` share one mapping: the same tensors from the same files."""
    from convert.from_hf import load_hf_model

    server = hub[0]
    for name, data in server.repos["org/tiny-gpt2"][1].items():
        if name != "pytorch_model.bin":  # the converter would read it if it were the only weights
            (tmp_path / name).write_bytes(data)
    converted, loaded = (
        load_hf_model(tmp_path).state_dict(),
        load_hub_model("hf://org/tiny-gpt2").state_dict(),
    )
    assert converted.keys() == loaded.keys()
    assert all(torch.equal(converted[k], loaded[k]) for k in converted)


def test_app_serves_a_hub_spec(hub, tokenizer):
    import app

    _, hf, _ = hub
    registry = app.ModelRegistry.from_path("hf://org/tiny-gpt2")
    assert registry.names == ["org/tiny-gpt2"] and registry.default == "org/tiny-gpt2"
    model = registry.get("org/tiny-gpt2")
    assert greedy_ids_ours(model, registry.tokenizer, 6) == greedy_ids_transformers(hf, tokenizer, 6)
    with pytest.raises(SystemExit) as info:  # a repository that does not exist stops the app with one line
        app.main(["--weights", "hf://org/missing"])
    assert "repository org/missing not found" in str(info.value.code) and "\n" not in str(info.value.code)


def test_app_default_weights(monkeypatch, tmp_path):
    from gpt2.serving import HUB_DEFAULT
    from ui import startup as app

    monkeypatch.setattr(app, "DEFAULT_WEIGHTS", tmp_path)  # an empty weights/ folder
    for var in ("GPT2_WEIGHTS", "SPACE_ID"):
        monkeypatch.delenv(var, raising=False)
    # Nothing converted, on a Space or not: OpenAI's four sizes from the Hub, the smallest first.
    assert (
        app.parse_args([]).weights
        == HUB_DEFAULT
        == (
            "hf://openai-community/gpt2,hf://openai-community/gpt2-medium,"
            "hf://openai-community/gpt2-large,hf://openai-community/gpt2-xl"
        )
    )
    save_model(random_model(TINY), tmp_path / "gpt2-tiny.safetensors", name="tiny")
    assert app.parse_args([]).weights == str(tmp_path)  # converted weights in weights/ win
    monkeypatch.setenv("GPT2_WEIGHTS", "hf://me/ours")
    assert app.parse_args([]).weights == "hf://me/ours"
    assert app.parse_args(["--weights", "hf://a/b@v1"]).weights == "hf://a/b@v1"
