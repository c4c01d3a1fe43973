"""Imports point one way: the contracts in .importlinter hold, and no two modules import each
other, directly or round a loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is in the dev extra: pip install -e '.[dev]'"
    # This checkout's sources first, as the tests import them.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([lint, "--no-cache", "--no-logo", str(ROOT / ".importlinter")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout and "2 kept" in run.stdout, run.stdout


def test_every_top_level_module_has_a_layer():
    """A module the layers contract does not name is bound by nothing: a new one must be placed."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    placed = {name.strip() for line in config["importlinter:contract:layers"]["layers"].split("\n")
              for name in line.split("|") if name.strip()}
    package = ROOT / "src" / "mmpipe"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    assert modules - placed == set(), "not in any layer of .importlinter"
    assert placed - modules == set(), "layers name modules that do not exist"


def test_no_module_import_cycles():
    # As .importlinter: imports under `if TYPE_CHECKING:` only name types, and never run.
    # No cache: a stale one would check an older tree.
    graph = grimp.build_graph("mmpipe", exclude_type_checking_imports=True, cache_dir=None)
    assert graph.find_modules_directly_imported_by("mmpipe.cli")  # the graph is real, not empty
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == [], "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of the module import graph, iteratively (a
    recursive walk would hit Python's stack limit on a deep chain of imports)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on_stack:
                    low[module] = min(low[module], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    components.append(sorted(component))
    return components


def test_strongly_connected_finds_a_loop():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    for importer, imported in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")):
        graph.add_import(importer=importer, imported=imported)
    assert sorted(c for c in strongly_connected(graph) if len(c) > 1) == [["a", "b", "c"]]
