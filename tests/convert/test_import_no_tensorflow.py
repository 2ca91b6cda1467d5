"""The runtime never needs TensorFlow: importing `gpt2` or `app` in a fresh interpreter leaves it unloaded.

TensorFlow is installed in the test environment (the convert tests need it), so this checks what the code
imports, not what happens to be missing (the probe lists any `tensorflow` or `tensorflow.*` module).
The convert CLI's PyTorch routes and `--help` must not load it
either: it is imported lazily by the TensorFlow route alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts a fresh Python process

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    importlib.import_module(name)\n"
    "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))\n"
)


def _loaded_tf_modules(*modules: str) -> str:
    env = dict(os.environ, NO_PROXY="localhost,127.0.0.1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "modules",
    [
        (
            "gpt2",
            "gpt2.model",
            "gpt2.formats.weights",
            "gpt2.tokenizer",
            "gpt2.decoding.generate",
            "gpt2.decoding.sampling",
        ),
        ("app",),
        (
            "convert.__main__",
            "convert.download",
            "convert.from_pth",
            "convert.from_hf",
            "convert.tf_checkpoint",
        ),
    ],
    ids=["gpt2", "app", "convert-lazy"],
)
def test_import_does_not_load_tensorflow(modules):
    assert _loaded_tf_modules(*modules) == "[]"


def test_cli_help_needs_neither_torch_nor_tensorflow():
    probe = (
        "import sys, convert.__main__ as cli\n"
        "assert '--from-pth' in cli.build_parser().format_help()\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'requests') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_cli_choices_match_the_tables():
    from convert import __main__ as cli
    from convert.common import DTYPES
    from convert.download import KNOWN_SIZES
    from gpt2 import SIZES

    assert cli.SIZES == tuple(KNOWN_SIZES) == tuple(SIZES)
    assert tuple(DTYPES) == cli.DTYPE_NAMES
