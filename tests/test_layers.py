"""The package's layers: each folder imports only the ones below it, and no module imports itself back.

The order, top to bottom: the commands (cli), the render (jobs, the stream of one job, batches, resume,
publishing), the inputs (timelines, schedule, conditioning, prompts, input videos), the weights (hub,
checkpoints, LoRAs, quantization, memory plan, model registry), the engine (generator, KV/memory, compiled
block, decoders), the pure model modules, and errors.py, limits.py and input_files.py, which every layer may use. The package's face
(__init__) and the test-support package (testing/) sit above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import memflow_cli

PACKAGE = Path(memflow_cli.__file__).parent
LAYERS = ["cli", "render", "inputs", "weights", "engine", "model", "errors"]
BOTTOM = {"errors", "limits", "input_files"}  # what every layer shares: error types, sanity limits, the input-file check
ABOVE_ALL = {"__init__", "__main__", "testing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(("memflow_cli", *parts))


def layer_of(module: str) -> str:
    name = module.split(".")[1] if module.count(".") else "__init__"
    return "errors" if name in BOTTOM else name


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports at run time (anywhere in the file, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("memflow_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("memflow_cli"):
            for alias in node.names:  # `from memflow_cli.x import y` may name a module y or a name in x
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != "memflow_cli"}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def test_every_module_sits_in_a_known_layer():
    unknown = sorted(m for m in import_graph() if layer_of(m) not in LAYERS and layer_of(m) not in ABOVE_ALL)
    assert unknown == [], f"modules outside the layers {LAYERS}: {unknown}"


def test_no_layer_imports_a_layer_above_it():
    upward = []
    for module, imported in import_graph().items():
        if layer_of(module) in ABOVE_ALL:
            continue
        mine = LAYERS.index(layer_of(module))
        for other in imported:
            theirs = layer_of(other)
            if theirs in ABOVE_ALL or LAYERS.index(theirs) < mine:
                upward.append(f"{module} -> {other}")
    assert upward == [], "upward imports:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    # package __init__ files only re-export their own folder's modules: an edge from a module to its own
    # package's face is not a circle of the design (Python imports the face first anyway)
    state: dict[str, int] = {}
    circles = []

    def walk(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    assert circles == [], "import circles:\n" + "\n".join(circles)


def test_the_graph_sees_real_imports():
    """The walker itself: it finds imports inside functions and skips TYPE_CHECKING blocks."""
    graph = import_graph()
    assert any(graph.values())
    assert all(m.startswith("memflow_cli") for deps in graph.values() for m in deps)
