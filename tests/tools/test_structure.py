"""The shape of the code: the dependency rule, no import cycle, the size limits, one-line docstrings,
a README tree and an architecture page that match the code, an image that holds the whole runtime.
None of these needs a server."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

from tools import readme_tree

REPO = readme_tree.REPO
FUNCTION_LINES_MAX = 60  # from `def` to its last line, docstring and nested functions included
MODULE_LINES_MAX = 500  # lines of a runtime module, all of them
SUMMARY_CHARS_MAX = 100  # a docstring's first line, as the README tree shows it
# The packages the contracts see (the runtime and the tooling; tests stay outside), named once.
GRAPH_PACKAGES = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_import_contracts_hold():
    """`lint-imports` checks the contracts of pyproject.toml: layers, the client, the tooling, cycles."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is in the test extra: pip install -e '.[test]'"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_part_of_an_import_cycle():
    """Stricter than the acyclic_siblings contract, which compares siblings only: a package and one
    of its own modules importing each other (lazily or not) is a cycle too."""
    graph = grimp.build_graph(*GRAPH_PACKAGES, cache_dir=None)
    cycles = {
        frozenset(chain): " -> ".join((importer, *chain))
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if (chain := graph.find_shortest_chain(importer=imported, imported=importer))
    }
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles.values()))


def test_every_runtime_function_is_at_most_60_lines():
    offenders = [
        f"{_name(path)}:{node.lineno} {node.name} is {node.end_lineno - node.lineno + 1} lines"
        for path in readme_tree.runtime_modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES_MAX
    ]
    assert not offenders, f"functions over {FUNCTION_LINES_MAX} lines:\n" + "\n".join(offenders)


def test_every_runtime_module_is_at_most_500_lines():
    lengths = {_name(path): len(path.read_text(encoding="utf-8").splitlines()) for path in readme_tree.runtime_modules()}
    offenders = [f"{name} is {lines} lines" for name, lines in lengths.items() if lines > MODULE_LINES_MAX]
    assert not offenders, f"modules over {MODULE_LINES_MAX} lines:\n" + "\n".join(offenders)


def test_every_runtime_module_opens_with_a_one_line_summary():
    """PEP 257: a summary line that stands alone (the README tree shows it), then a blank line."""
    offenders = []
    for path in readme_tree.runtime_modules():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        lines = docstring.splitlines() or [""]
        if not lines[0].strip():
            offenders.append(f"{_name(path)}: no docstring")
        elif len(lines) > 1 and lines[1].strip():
            offenders.append(f"{_name(path)}: the summary goes on to a second line: {lines[0]!r}")
        elif len(lines[0]) > SUMMARY_CHARS_MAX:
            offenders.append(f"{_name(path)}: the summary is {len(lines[0])} characters: {lines[0]!r}")
    assert not offenders, "\n".join(offenders)


def test_the_readme_tree_is_the_one_the_code_gives():
    readme = readme_tree.README.read_text(encoding="utf-8")
    assert readme_tree.with_tree(readme, readme_tree.tree()) == readme, (
        "README.md's module tree is out of date: run `python -m tools.readme_tree --write`"
    )


def test_the_image_copies_every_runtime_package_and_no_tooling():
    """deploy/Dockerfile installs from the packages it copies; one left out is missing in production."""
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "/src/" in line}
    copied -= {"pyproject.toml"}
    assert copied == set(readme_tree.RUNTIME_PACKAGES), f"copied {sorted(copied)}"


def test_docs_architecture_names_only_code_that_exists():
    """A module, function or NATS subject renamed leaves docs/architecture.md naming what is gone."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    names = set(re.findall(r"`([A-Za-z_][\w./]*)`", text))
    missing = [name for name in sorted(names) if not _exists(name)]
    assert not missing, "docs/architecture.md names what the code no longer has: " + ", ".join(missing)


def _exists(name: str) -> bool:
    """A path (`ledger/outbox.py`, `audit/`), a dotted name under a runtime package
    (`projector.consumer.serve`), or a subject (`ledger.v1.transfers.committed`); anything else
    (tables, settings, commands) is not checked here."""
    if "/" in name:
        return (REPO / name).exists()
    package, _, rest = name.partition(".")
    if package not in readme_tree.RUNTIME_PACKAGES or not rest:
        return True
    if name.startswith("ledger.v1."):
        from ledger import bus

        return name in (bus.SUBJECT, bus.WATERMARK_SUBJECT)
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        return all((found := getattr(found, attribute, None)) is not None for attribute in parts[split:])
    return False
