"""Imports point one way, folder by folder (the README's "Layout"; layers bottom first):

0. `foresight_client` (packages/foresight-client): numpy, pyzmq, msgpack; nothing of ours.
1. `foresight.engines` (engines/): runtime backends.
2. `sim_bridge`: common < data < simulator < apps; of the project it uses only the client.
3. `foresight` (model, pipeline, node server, training, evaluation, CLI) and `foresight.export`
   (export/), free to use everything below.

No folder imports a folder above it, and no two units import each other in a circle; units are
the folders above, each sub-package of `foresight` and each module at its root. Every import
counts, including ones inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder
SOURCES = {
    "foresight_client": ROOT / "packages" / "foresight-client" / "src" / "foresight_client",
    "foresight.engines": ROOT / "engines",
    "foresight.export": ROOT / "export",
    "foresight": ROOT / "foresight",
    "sim_bridge": ROOT / "sim_bridge",
}
LAYERS = {"foresight_client": 0, "foresight.engines": 1, "sim_bridge.common": 2,
          "sim_bridge.data": 3, "sim_bridge.simulator": 4, "sim_bridge.apps": 5, "sim_bridge": 2,
          "foresight": 6, "foresight.export": 6}
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "onnxruntime", "tensorrt")


def project_modules() -> dict[str, Path]:
    modules = {}
    for name, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            dotted = ".".join([name, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            if dotted.startswith(("foresight.engines", "foresight.export")) and name == "foresight":
                continue  # not there: the folders live at the top
            modules[dotted] = path
    return modules


def imported_names(path: Path, package: str) -> list[str]:
    """Every dotted name `path` imports (resolved relative imports, `from a import b` as a.b)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names] + [base]
    return names


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `module` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for name in imported_names(path, package):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def unit(module: str) -> str:
    """The folder (or, at the root of `foresight`, the module) a module belongs to."""
    for top in ("foresight_client", "foresight.engines", "foresight.export"):
        if module == top or module.startswith(top + "."):
            return top
    parts = module.split(".")
    return ".".join(parts[:2])


def layer(unit_name: str) -> int:
    while unit_name not in LAYERS:
        unit_name = unit_name.rpartition(".")[0]
    return LAYERS[unit_name]


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


def test_no_import_circle():
    graph = unit_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({' imports '.join(graph[a][b])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import circle:\n  " + "\n  ".join(edges))


def test_no_folder_imports_a_folder_above_it():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)}): {' imports '.join(how)}"
              for a, targets in unit_graph().items() for b, how in targets.items()
              if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_the_top_level_folders_are_imported_by_their_installed_names():
    """`engines`/`export` resolve only inside a checkout; installed, they are foresight.*."""
    stray = [f"{path.relative_to(ROOT)}: {name}" for module, path in project_modules().items()
             for name in imported_names(path, module.rpartition(".")[0])
             if name.split(".")[0] in {"engines", "export"}]
    for path in [*ROOT.glob("bench/*.py"), *ROOT.glob("tests/*.py")]:
        stray += [f"{path.relative_to(ROOT)}: {name}" for name in imported_names(path, "")
                  if name.split(".")[0] in {"engines", "export"}]
    assert not stray, stray


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {module for module, path in project_modules().items()
             if path.name == "__init__.py" and not module.startswith("foresight_client")}
    data = {"foresight.weights", "foresight.weights.tiny", "foresight.training.presets"}  # files, no code
    assert found | data == listed, f"pyproject lacks {sorted(found - listed)}, lists {sorted(listed - found - data)}"
    assert config["package-dir"] == {"foresight.engines": "engines", "foresight.export": "export"}


def test_the_checks_find_what_they_look_for():
    assert find_cycle({"a": {"b": ()}, "b": {"c": ()}, "c": {"a": ()}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ()}, "b": {}, "c": {"a": ()}}) is None
    assert unit("foresight.training.data") == "foresight.training"
    assert unit("foresight.engines.select") == "foresight.engines"
    assert layer(unit("sim_bridge.apps.replay")) > layer(unit("sim_bridge.data.readers"))
    assert layer(unit("foresight_client.wire")) < layer(unit("sim_bridge.common.imaging"))
    modules = project_modules()
    assert "foresight.engines.select" in modules and "foresight_client.client" in modules
    assert imports_of("sim_bridge.data.readers", modules["sim_bridge.data.readers"], modules) >= {
        "sim_bridge.data.lerobot", "sim_bridge.data.episode"}


def test_client_side_and_simulator_load_no_model_stack():
    code = ("import sys, foresight_client, sim_bridge.apps.replay, sim_bridge.apps.planner, "
            "sim_bridge.apps.demo, sim_bridge.data.readers, sim_bridge.simulator.gym_env; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
