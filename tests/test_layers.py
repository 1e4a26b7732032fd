"""agf's modules import only downwards, and never another module's private names.

The layers, lowest first: the base (errors, version, progress, output), the store, the engine,
ingest, models (the estimators and their store adapters), app (the use cases: tag, similar,
evaluate, demo, the Python API) and the CLI; ``agf/__init__.py`` is the package's face above
them all. A module may import its own layer or any below it.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agf"
LAYERS = {
    "agf.errors": 0, "agf.version": 0, "agf.progress": 0, "agf.output": 0,
    "agf.store": 1,
    "agf.engine": 2,
    "agf.ingest": 3,
    "agf.models": 4,
    "agf.app": 5,
    "agf.cli": 6,
    "agf": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rpartition(".")[0]
    return LAYERS[module]


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import of an agf module, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "agf"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "agf":
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_every_module_has_a_layer():
    assert all(_layer(name) >= 0 for name in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_below(module):
    climbing = [imported for imported, _ in _imports(MODULES[module]) if _layer(imported) > _layer(module)]
    assert not climbing, f"{module} (layer {_layer(module)}) imports {climbing} from above"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_uses_no_private_name_of_another(module):
    tree = ast.parse(MODULES[module].read_text())
    private = [f"{imported}.{name}" for imported, names in _imports(MODULES[module])
               for name in names if name.startswith("_") and name != "__version__"]
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names if (getattr(node, "module", None) or alias.name).startswith("agf")}
    private += [f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not private, f"{module} reaches into {private}"


def test_the_import_graph_has_no_circle():
    graph = {m: {imported for imported, names in _imports(p) for imported in
                 [imported] + [f"{imported}.{n}" for n in names]} & set(MODULES) - {m}
             for m, p in MODULES.items()}
    state: dict[str, str] = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import circle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for following in sorted(graph[node]):
            visit(following, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_the_estimators_know_nothing_of_the_store():
    assert not [m for m, _ in _imports(MODULES["agf.models.group_factors"]) if m.startswith("agf.store")]
