"""`python -m benchmarks.first_visit --quick` runs end to end: three starts of `python app.py` against the
stand-in Hub (one to fill HF_HOME, one with an empty engine cache, one with it warm), and a results record
in the shape of the others. Timings are not asserted (the machine is shared); what each start measured is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import first_visit, results
from gpt2.engine import build

pytestmark = pytest.mark.slow  # starts the app twice


def test_quick_run_prints_and_saves_the_first_visit(tmp_path):
    out = tmp_path / "first_visit.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.first_visit", "--quick", "--save", str(out)],
        cwd=first_visit.common.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(first_visit.common.ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "first_visit" and record["settings"]["rounds"] == 1
    assert record["environment"]["command"] == f"python -m benchmarks.first_visit --quick --save {out}"
    r = record["results"]
    for kind in ("cold", "warm"):
        [run] = r[kind]["runs"]
        assert 0 < run["page_s"] <= run["first_token_s"] == r[kind]["first_token_s"]
    # Each start measured what its name says: the engine compiled with an empty cache, not with a warm one.
    engine = build.reason() is None
    assert r["cold"]["runs"][0]["compiled"] is engine
    assert r["warm"]["runs"][0]["compiled"] is False
    table = results.render_first_visit(record)
    assert f"| engine cache empty | {r['cold']['page_s']:.1f} s |" in table and table in proc.stdout
    assert record["environment"]["commit"] in table and record["environment"]["date"] in table
