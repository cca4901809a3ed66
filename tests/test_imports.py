"""Imports between packages point one way; the client side and the simulator load no model stack.

Units: `engines`, `export`, `sim_bridge`, the model package `foresight`, and four light parts of
it that others may use without it: the node's client side (`foresight.node` client, wire,
protocol, process), the frame helpers (`foresight.imaging`), the clip metrics
(`foresight.metrics`) and the logging set-up (`foresight.logs`). Every import counts, including
ones inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("foresight", "engines", "export", "sim_bridge")
CLIENT_SIDE = {"foresight.node", "foresight.node.client", "foresight.node.wire",
               "foresight.node.protocol", "foresight.node.process"}
LIGHT = {"foresight.imaging", "foresight.metrics", "foresight.logs"}
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "onnxruntime", "tensorrt")


def unit(module: str) -> str:
    if module in CLIENT_SIDE:
        return "foresight.node (client)"
    if module in LIGHT:
        return module
    return module.split(".")[0]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `module` imports anywhere in its file."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def unit_graph() -> dict[str, dict[str, tuple[str, str]]]:
    """unit -> {imported unit: (an importing module, the imported module)}."""
    modules = project_modules()
    graph: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for module, path in modules.items():
        for imported in imports_of(module, path, modules):
            if unit(imported) != unit(module):
                graph[unit(module)].setdefault(unit(imported), (module, imported))
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_loop_between_packages():
    graph = unit_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({' imports '.join(graph[a][b])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import loop between packages:\n  " + "\n  ".join(edges))
    assert "foresight" not in graph.get("sim_bridge", {}), graph["sim_bridge"]
    for light in ("foresight.node (client)", *LIGHT):
        assert not graph.get(light), f"{light} must stay a leaf, imports {graph.get(light)}"


def test_cycle_finder_finds_a_loop():
    assert find_cycle({"a": {"b": ()}, "b": {"c": ()}, "c": {"a": ()}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ()}, "b": {}, "c": {"a": ()}}) is None


def test_client_side_and_simulator_load_no_model_stack():
    code = ("import sys, foresight.node.client, foresight.node.wire, sim_bridge.replay, "
            "sim_bridge.planner, sim_bridge.readers, sim_bridge.scoring; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
