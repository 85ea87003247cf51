"""core/ in layers: every import (function-local ones too) points down or sideways, never up, and
no modules import each other in a circle. Plugins import only the public API.

The layers, bottom to top, are the folders of core/ (README, Layout): util and kernels; the plugin
contract (the modules at core/'s top); data; scoring; model; measure; run; evaluation (with the
lmms bridge); cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"core": "dynvlm", "plugins": "dynvlm.plugins", "kernels": "dynvlm.kernels"}

#: module prefix -> layer (the longest matching prefix wins)
LAYERS = {
    "dynvlm.util": 0,
    "dynvlm.kernels": 0,
    "dynvlm": 1,  # the contract: interfaces, hookspecs, registry, config, schema, budget, records
    "dynvlm.data": 2,
    "dynvlm.scoring": 3,
    "dynvlm.model": 4,
    "dynvlm.measure": 5,
    "dynvlm.run": 6,
    "dynvlm.evaluation": 7,
    "dynvlm.lmms": 7,
    "dynvlm.cli": 8,
    "dynvlm.__main__": 8,
    "dynvlm.plugins": 9,  # plugins sit on the public API (checked apart below)
}
NAMES = {0: "util/kernels", 1: "contract", 2: "data", 3: "scoring", 4: "model", 5: "measure", 6: "run",
         7: "evaluation", 8: "cli", 9: "plugins"}
#: what a plugin may import: the public API (docs/plugins.md)
PLUGIN_API = ("dynvlm", "dynvlm.interfaces", "dynvlm.budget", "dynvlm.plugins")


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_files() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = module_files()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str) -> set[str]:
    """The dynvlm modules ``module`` imports anywhere in its file (not under ``if TYPE_CHECKING``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from X import y" imports X.y when y is a module
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_walk_found_the_layers():
    assert {layer(m) for m in MODULES} == set(NAMES)
    assert "dynvlm.model.video_llm" in GRAPH["dynvlm.run.train"]  # the walk sees real edges


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({NAMES[layer(m)]}) imports {d} ({NAMES[layer(d)]})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _cycles() -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert not _cycles(), f"modules importing each other in a circle: {_cycles()}"


def test_the_circle_check_fails_on_a_circle():
    saved = {m: set(d) for m, d in GRAPH.items()}
    try:
        GRAPH["dynvlm.budget"].add("dynvlm.data.video")  # data.video imports budget: now a circle
        assert _cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("dynvlm.plugins.")))
def test_plugins_import_only_the_public_api(module):
    private = sorted(d for d in GRAPH[module]
                     if not (d in PLUGIN_API or d.startswith("dynvlm.plugins.")
                             or (d.startswith("dynvlm.kernels") and not any(p.startswith("_") for p in d.split(".")))))
    assert not private, f"{module} imports non-public modules {private}"
