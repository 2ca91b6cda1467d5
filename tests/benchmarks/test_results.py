"""README's speed and serving tables (and docs/benchmarks.md's sizes table) are rendered from the results
files the benchmarks write: a committed table that differs from its file fails here."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from benchmarks import common, results


def test_committed_tables_are_rendered_from_the_results_files():
    for name in results.DOCUMENTS:
        text = (results.ROOT / name).read_text()
        stale = f"{name} is stale: run python -m benchmarks.results --render"
        assert text == results.render_document(text), stale


def test_readme_holds_the_speed_and_serving_tables():
    blocks = {m.group(2) for m in results.BLOCK.finditer((results.ROOT / "README.md").read_text())}
    assert blocks == {"decode", "serving", "first_visit"}
    docs = {m.group(2) for m in results.BLOCK.finditer((results.ROOT / "docs/benchmarks.md").read_text())}
    assert {"sizes", "inspect"} <= docs


def test_each_table_says_where_its_numbers_came_from():
    saved = [name for name in results.RENDERERS if (results.RESULTS / f"{name}.json").is_file()]
    assert {"decode", "serving", "sizes"} <= set(saved)
    for name in saved:
        record = results.load(name)
        env, text = record["environment"], results.render(name, record)
        for fact in (env["date"], env["commit"], env["cpu"], env["command"], f"{env['bandwidth_gbs']} GB/s"):
            assert fact in text, (name, fact)
        assert " ".join(env["flags"]) in text


def test_a_changed_measurement_changes_the_table(tmp_path):
    """The check can fail: a number edited in a copy of the results file shows in the rendered README."""
    shutil.copytree(results.RESULTS, tmp_path, dirs_exist_ok=True)
    record = json.loads((tmp_path / "decode.json").read_text())
    record["variants"][0]["tok_s"] = 12345.6
    (tmp_path / "decode.json").write_text(json.dumps(record))
    readme = (results.ROOT / "README.md").read_text()
    rendered = results.render_document(readme, tmp_path)
    assert rendered != readme and "| 12345.6 |" in rendered


def test_a_block_without_a_results_file_says_it_is_not_measured_yet(tmp_path):
    shutil.copytree(results.RESULTS, tmp_path, dirs_exist_ok=True)
    (tmp_path / "inspect.json").unlink(missing_ok=True)
    text = "<!-- results:decode -->\n<!-- /results -->\n<!-- results:inspect -->\nold\n<!-- /results -->\n"
    rendered = results.render_document(text, tmp_path)
    assert f"<!-- results:inspect -->\n{results.not_measured('inspect')}\n<!-- /results -->" in rendered
    assert results.render("decode", results.load("decode", tmp_path)) in rendered  # a saved one: its table


def test_check_command_reports_a_stale_document(tmp_path, monkeypatch, capsys):
    block = "<!-- results:sizes -->\nold table\n<!-- /results -->\n"
    (tmp_path / "README.md").write_text(f"before\n{block}after\n")
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "DOCUMENTS", ("README.md",))
    assert results.main(["--check"]) == 1 and "out of date: README.md" in capsys.readouterr().out
    assert results.main(["--render"]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("before\n<!-- results:sizes -->\n| size |")
    assert text.endswith("<!-- /results -->\nafter\n")
    assert results.main(["--check"]) == 0


def test_unknown_blocks_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown results block 'nope'"):
        results.render_document("<!-- results:nope -->\n<!-- /results -->")
    with pytest.raises(SystemExit, match=re.escape(f"no results file {tmp_path / 'decode.json'}")):
        results.load("decode", tmp_path)


def test_variants_follow_the_library_precisions(monkeypatch):
    """Our rows are the precisions gpt2.PRECISIONS has, each beside its llama.cpp peer; llama.cpp's own
    types are raced whatever we have."""
    assert common.variants()[:4] == ["hf", "plain", "fp32", "llama-f32"]
    assert {"llama-q4_0", "llama-q4_K_M"} <= set(common.variants())
    monkeypatch.setattr(common, "PRECISIONS", ("fp32", "bf16", "f16", "int8", "int4"))
    got = common.variants()
    assert got[got.index("llama-f16") + 1] == "f16" and got[got.index("int4") + 1] == "llama-q4_0"
    assert common.peer_of("int4") == "llama-q4_0" and common.peer_of("f16") == "llama-f16"
    monkeypatch.setattr(common, "PRECISIONS", ("fp32",))
    assert "int8" not in common.variants() and "llama-q8_0" in common.variants()
