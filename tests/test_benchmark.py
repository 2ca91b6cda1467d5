"""The decode benchmark runs end to end (its --quick mode) and prints the table it promises.

Timings are not asserted (the machine is shared and noisy); the table's shape, the plot, and the
correctness line (every variant's greedy tokens equal to the fast fp32 path's) are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gpt2.fast import bf16_supported

from benchmarks.decode import COLUMNS, LABELS, VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_full_table(tmp_path):
    png, out = tmp_path / "bench.png", tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.decode", "--quick", "--plot", str(png), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(COLUMNS)
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(rows) == {LABELS[v] for v in VARIANTS}
    for label, row in rows.items():
        assert len(row) == len(COLUMNS)
        tok_s, ms_tok = float(row[1]), float(row[2])
        assert tok_s > 0 and abs(tok_s * ms_tok - 1000) < 0.02 * 1000, label
        assert all(float(row[i]) > 0 for i in (3, 4, 5, 6))  # CPU ms, TTFT, prefill, MB/token
    assert rows[LABELS["hf"]][9] == rows[LABELS["hf"]][10] == "1.00"  # ratios are to HF
    if bf16_supported():  # else int8 falls back to fp32
        assert float(rows[LABELS["int8"]][6]) < 0.3 * float(rows[LABELS["fp32"]][6])
    assert "greedy tokens equal to fast fp32: hf yes, plain yes, fp32 yes" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(out.read_text())
    assert summary["columns"] == list(COLUMNS) and len(summary["rows"]) == len(VARIANTS)
    assert all(len(r["tok_s"]) == 1 for r in summary["results"].values())
