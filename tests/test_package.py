"""`pip install .` gives a working library outside the checkout: the package, its BPE files and the C
engine's source (compiled on first use), and a generation with the engine bound."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
from helpers.models import ROOT

pytestmark = pytest.mark.slow  # builds a wheel and starts a fresh Python


def test_installed_package_generates_outside_the_checkout(tmp_path):
    target, source = tmp_path / "site", tmp_path / "source"
    # The checkout's tracked files, copied: setuptools builds in the source tree, which must stay clean.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():
        if not (ROOT / name).is_file():  # deleted in the working tree, not yet in git
            continue
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--target"]
    build = subprocess.run(
        [*install, str(target), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert (target / "gpt2" / "bpe" / "LICENSE").is_file() and (
        target / "gpt2" / "engine" / "csrc" / "decode.c"
    ).is_file()
    code = """
import gpt2, torch
from gpt2.engine import build
assert gpt2.__file__.startswith(SITE), gpt2.__file__
torch.manual_seed(0)
model = gpt2.prepare(gpt2.GPT2(gpt2.GPT2Config(n_ctx=64, n_embd=64, n_head=4, n_layer=2)).eval(), "fp32",
                     engine=build.available())
tok = gpt2.load_tokenizer()
text = "".join(gpt2.generate(model, tok, "Hello", max_new_tokens=8, seed=1))
print(repr(text), model.runtime.engine is not None, build.available())
""".replace("SITE", repr(str(target)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), GPT2_NATIVE_CACHE=str(tmp_path / "engine-cache"))
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text, bound, available = run.stdout.strip().rsplit(" ", 2)
    assert len(ast.literal_eval(text)) > 0 and bound == available  # the engine is bound wherever it can be
    if shutil.which("cc") and os.environ.get("GPT2_NATIVE", "1") != "0":
        assert bound == "True"
