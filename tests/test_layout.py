"""The layout is the architecture: which part of the project may import which, no import circles, and
README.md's diagram drawn from the real import graph (`python tests/test_layout.py` prints it).

Every `import` in the project's Python files is read (module level and inside functions alike) and
resolved to the project module it names; nothing is imported to find out.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The parts of the project, in the order the diagram lists them, and what each may import.
# gpt2/'s layers: the specification, then the engine that runs it fast, then weights in and out and
# decoding (side by side: neither needs the other), then serving on top.
PARTS = {
    "app.py + ui/": ("app", "ui"),
    "benchmarks/": ("benchmarks",),
    "convert/": ("convert",),
    "gpt2/serving/": ("gpt2.serving",),
    "gpt2/decoding/": ("gpt2.decoding",),
    "gpt2/formats/": ("gpt2.formats",),
    "gpt2/engine/": ("gpt2.engine",),
    "gpt2/ spec": ("gpt2.config", "gpt2.model", "gpt2.tokenizer"),
}
GPT2 = ("gpt2/serving/", "gpt2/decoding/", "gpt2/formats/", "gpt2/engine/", "gpt2/ spec")
MAY_IMPORT = {
    "app.py + ui/": {"app.py + ui/", "gpt2", *GPT2},
    "benchmarks/": {"benchmarks/", "app.py + ui/", "gpt2", *GPT2},
    "convert/": {"convert/", "gpt2", *GPT2},
    "gpt2/serving/": set(GPT2),
    "gpt2/decoding/": {"gpt2/decoding/", "gpt2/engine/", "gpt2/ spec"},
    "gpt2/formats/": {"gpt2/formats/", "gpt2/engine/", "gpt2/ spec"},
    "gpt2/engine/": {"gpt2/engine/", "gpt2/ spec"},
    "gpt2/ spec": {"gpt2/ spec"},
}
# Third-party packages only some parts may use: the runtime never needs Gradio or TensorFlow.
ONLY_IN = {"gradio": {"app.py + ui/", "benchmarks/"}, "tensorflow": {"convert/"}}
# gpt2/__init__.py re-exports the public names of every layer for users (app, convert, benchmarks);
# nothing inside gpt2/ imports it.
FACADE = "gpt2"


def project_modules() -> dict[str, Path]:
    """Dotted name → file, for every Python file of the project outside tests/."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "weights", "node_modules") or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules and top-level packages `name` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return out


def part_of(module: str) -> str | None:
    if module == FACADE:
        return "gpt2"
    for part, prefixes in PARTS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return part
    return None


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module → project modules it imports, part → parts it imports), the facade left out."""
    modules = project_modules()
    edges: dict[str, set[str]] = {}
    parts: dict[str, set[str]] = {part: set() for part in PARTS}
    for name, path in modules.items():
        targets = {t for t in imports_of(name, path, modules) if t in modules or t.split(".")[0] in ONLY_IN}
        edges[name] = {t for t in targets if t in modules}
        here = part_of(name)
        if here in (None, "gpt2"):
            continue
        for t in targets:
            there = part_of(t) or t.split(".")[0]
            if there != here:
                parts[here].add(there)
    return edges, parts


def diagram(parts: dict[str, set[str]]) -> str:
    """README's architecture block: each part and what it imports, from the real graph."""
    order = ["gpt2", *PARTS, *sorted(ONLY_IN)]
    lines = []
    for part in PARTS:
        if part == "gpt2/ spec":  # the bottom: config.py, model.py, tokenizer.py and their libraries
            uses = "config.py, model.py, tokenizer.py (" + ", ".join(sorted(third_party("gpt2/ spec"))) + ")"
        else:
            uses = ", ".join("gpt2 (public names)" if p == "gpt2" else p for p in order if p in parts[part])
            uses = uses.replace(", ".join(GPT2), "gpt2/ (all layers)")
        lines.append(f"{part:<15} ──► {uses}")
    return "\n".join(lines)


def third_party(part: str) -> set[str]:
    """Top-level packages outside the project and the standard library that `part` imports."""
    modules = project_modules()
    found = set()
    for name, path in modules.items():
        if part_of(name) == part:
            for t in imports_of(name, path, modules):
                top = t.split(".")[0]
                if (
                    t not in modules
                    and top not in sys.stdlib_module_names
                    and top != "gpt2"
                    and top != "__future__"
                ):
                    found.add(top)
    return found


def test_each_part_imports_only_what_it_may():
    edges, parts = graph()
    for part, uses in parts.items():
        for used in uses:
            if used in ONLY_IN:
                assert part in ONLY_IN[used], f"{part} imports {used}"
            else:
                assert used in MAY_IMPORT[part], f"{part} imports {used}, which it may not"
    inside = [m for m, targets in edges.items() if part_of(m) in GPT2 and FACADE in targets]  # (a circle)
    assert not inside, f"modules inside gpt2/ import the facade `gpt2`: {inside}"


def test_nothing_outside_tests_imports_them():
    """The tests' helpers stay theirs: no module of the project imports from tests/ (by package or by the
    names tests/ puts on sys.path)."""
    modules = project_modules()
    test_names = {"tests", "conftest"} | {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
    test_names |= {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    test_names -= {name.split(".")[0] for name in modules}  # tests/app mirrors app.py + ui/: not a package
    for name, path in modules.items():
        used = {t.split(".")[0] for t in imports_of(name, path, modules)} & test_names
        assert not used, f"{name} imports the tests' {sorted(used)}"


def test_no_import_circles():
    edges, _ = graph()
    edges = {m: t - {FACADE} for m, t in edges.items() if m != FACADE}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_readme_diagram_is_the_import_graph():
    block = diagram(graph()[1])
    assert block in (ROOT / "README.md").read_text(), f"README.md's diagram should read:\n{block}"


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """Mutation check: a spec module importing the engine is reported."""
    fake = tmp_path / "gpt2"
    fake.mkdir()
    (fake / "model.py").write_text("from .engine import prepare\n")
    (fake / "engine").mkdir()
    (fake / "engine" / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    _, parts = graph()
    assert parts["gpt2/ spec"] == {"gpt2/engine/"}


if __name__ == "__main__":
    print(diagram(graph()[1]))
