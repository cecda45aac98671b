"""The architecture, held by tests: which package may import which, no import cycle, modules of a
readable size, code that reads without an outside document, and a docs page for every model."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from benchmarks.run.discovery import model_entries

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "baselines", "benchmarks", "data_prep")
MAX_LINES = 500
# What each package may import from the project: the models see only their own blocks and the
# data layer's vocabulary; the baselines see the models; the data layer sees nothing above it.
ALLOWED = {
    "data_prep": {"data_prep"},
    "models": {"models", "data_prep"},
    "baselines": {"baselines", "models", "data_prep"},
    "benchmarks": {"benchmarks", "models", "data_prep"},
    "run_all": {"benchmarks", "models", "data_prep"},
}


def _modules() -> dict[str, Path]:
    out = {"run_all": ROOT / "run_all.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The project modules ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            # the deepest project module the import names (``from models.graphs import knn``)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_is_read_correctly(graph):
    # the walker must see a relative import, an import inside a function and a from-import of a module
    assert "data_prep.errors" in graph["data_prep.dataset"]  # from .errors import DataError
    assert "benchmarks.report.writer" in graph["benchmarks.experiment"]  # imported inside run()
    assert "models.graphs.knn" in graph["models.dgmrec"]


def test_packages_import_only_what_lies_below_them(graph):
    wrong = [f"{mod} imports {dep}" for mod, deps in graph.items() for dep in deps
             if dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle(graph):
    done, path = set(), []

    def visit(mod):
        assert mod not in path, "import cycle: " + " -> ".join(path[path.index(mod):] + [mod])
        if mod in done:
            return
        path.append(mod)
        for dep in sorted(graph[mod]):
            visit(dep)
        path.pop()
        done.add(mod)

    for mod in sorted(graph):
        visit(mod)


def test_no_module_outside_the_tests_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# Pointers into documents that are not in the repository ("spec 3.2", "§5", "block G1", "defect #7").
POINTER = re.compile(r"\bspec\s*§?\d|§\s*\d|\bblock G\d|\(G\d+\)|\bdefect #\d", re.IGNORECASE)


def test_code_and_configs_read_without_an_outside_document():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*") if p.suffix in (".py", ".yaml")]
    files += [ROOT / "run_all.py", ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "tests").glob("*.py")]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p != Path(__file__).resolve()
            for i, line in enumerate(p.read_text().splitlines(), 1) if POINTER.search(line)]
    assert not hits, "\n".join(hits)


def test_the_pointer_pattern_finds_what_it_is_for():
    for text in ("(spec 3.2)", "spec §5.20", "§1.3", "block G8", "graph (G5)", "Defect #12"):
        assert POINTER.search(text), text
    for text in ("a specific part", "G^m", "the reference defect", "step 3"):
        assert not POINTER.search(text), text


def test_every_registered_model_has_a_docs_page_with_every_option():
    docs = ROOT / "docs" / "models"
    index = (docs / "index.md").read_text()
    shipped = [e for e in model_entries() if e.cls.__module__.split(".")[0] in ("models", "baselines")]
    assert len(shipped) >= 20  # tests register models of their own; those need no page
    for entry in shipped:
        page = docs / f"{entry.name}.md"
        assert page.is_file(), f"{entry.name}: no page {page.relative_to(ROOT)}"
        text = page.read_text()
        assert f"({entry.name}.md)" in index, f"{entry.name}: docs/models/index.md does not link its page"
        module = Path(__import__(entry.cls.__module__, fromlist=["_"]).__file__)
        config = module.parent / "configs" / f"{entry.name}.yaml"
        keys = set(yaml.safe_load(config.read_text()).get("defaults") or {}) if config.is_file() else set()
        undocumented = sorted(k for k in keys if f"`{k}`" not in text)
        assert not undocumented, f"{page.relative_to(ROOT)} does not describe {undocumented}"
