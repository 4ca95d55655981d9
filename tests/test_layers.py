"""The three layers' import structure (issue 12): read with ``ast``, nothing is run.

``packtool/`` (the library), ``exporters/`` (installed as ``packtool.exporters``) and ``cli/``
(``packtool.cli``): no import cycle, no import inside a function that dodges one, nothing in the
library importing upward, and the CLI on the public API only (``packtool`` and
``packtool.exporters``, no private names).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"packtool": "packtool", "packtool.exporters": "exporters", "packtool.cli": "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join([package, *parts]).removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(module: str) -> list[tuple[ast.stmt, list[str], bool]]:
    """Every import of ``module``: the node, the module names it may mean (``from a import b``
    may import ``a.b``), and whether it sits inside a function."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = {id(node) for f in ast.walk(tree)
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(f)}
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        result.append((node, names, id(node) in in_function))
    return result


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for _, names, _ in _imports(module):
            # A package's members importing the package's own __init__ is not a cycle.
            edges[module] |= {n for n in names if n in MODULES and n != module
                              and not module.startswith(n + ".")}
    return edges


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(edges[node])
    return False


def test_the_layers_are_found():
    assert {"packtool.pack", "packtool.lifecycle", "packtool.exporters.onnx",
            "packtool.cli.main"} <= set(MODULES)


def test_no_import_cycle():
    edges = _edges()
    cycles = sorted({" <-> ".join(sorted((a, b))) for a in edges for b in edges[a]
                     if _reaches(edges, b, a)})
    assert cycles == []


def test_no_import_hidden_in_a_function_to_dodge_a_cycle():
    edges = _edges()
    dodges = [f"{MODULES[m]}:{node.lineno}" for m in MODULES
              for node, names, in_function in _imports(m) if in_function
              for target in names if target in MODULES and target != m
              and _reaches(edges, target, m)]
    assert dodges == []


@pytest.mark.parametrize("layer", ["packtool", "packtool.exporters"])
def test_nothing_imports_upward(layer):
    above = {"packtool": ("packtool.exporters", "packtool.cli"),
             "packtool.exporters": ("packtool.cli",)}[layer]
    entry = "packtool.__main__"  # python -m packtool: the command line's entry point
    below = [m for m in MODULES if m != entry
             and (m == layer or (m.startswith(layer + ".") and not m.startswith(above)))]
    upward = [f"{m}: {name}" for m in below for _, names, _ in _imports(m)
              for name in names[:1] if name.startswith(above)]
    assert upward == []


def test_the_cli_uses_no_private_name():
    """The CLI imports the library's public modules and names (a module for each thing it
    uses, so a command loads only those), never a private one (``_lazy``, ``_anything``)."""
    wrong = []
    for module in (m for m in MODULES if m.startswith("packtool.cli")):
        for node, names, _ in _imports(module):
            target = names[0]
            if not target.startswith("packtool") or target.startswith("packtool.cli"):
                continue
            if any(part.startswith("_") for part in target.split(".")):
                wrong.append(f"{module} imports {target}")
            if isinstance(node, ast.ImportFrom):
                wrong += [f"{module} imports private {target}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert wrong == []
