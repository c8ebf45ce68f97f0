"""The package's layers: the engine needs no FiftyOne, no module imports in a
circle, and operators use only the library's public names and their shared helpers."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = Path(REPO_ROOT) / "clustering"
OPERATORS = Path(REPO_ROOT) / "operators"


def _module_name(path):
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path):
    """Modules imported when `path` is imported (imports inside functions excluded)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _top_level_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_circle_in_the_library():
    graph = _graph()
    assert len(graph) > 20, sorted(graph)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package importing its own submodules is how a package exposes them
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_engine_and_feature_transforms_import_no_fiftyone():
    code = (
        "import sys\n"
        "import clustering.engine.kmeans, clustering.engine.methods, clustering.engine.selection\n"
        "import clustering.engine.stability, clustering.engine.metrics, clustering.features.transform\n"
        "from clustering import choose_k, GeneralizedKMeans\n"
        "print(sorted(m for m in sys.modules if m == 'fiftyone' or m.startswith('fiftyone.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_the_engine_layer_imports_nothing_from_the_layers_above():
    graph = _graph()
    engine = [m for m in graph if m.startswith("clustering.engine")]
    assert engine
    for module in engine:
        above = {m for m in graph[module] if m.startswith("clustering.") and not m.startswith("clustering.engine")}
        assert not above, f"{module} imports {sorted(above)}"


def test_operators_use_public_names_and_share_helpers_through_common():
    for path in OPERATORS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
                if node.level and path.name != "__init__.py":
                    assert node.module == "common", f"{path.name} imports from operators.{node.module}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                value = node.value
                if isinstance(value, ast.Name) and value.id in {"clustering", "ce", "cl", "cr", "bb", "ca", "cp", "browse", "plots"}:
                    raise AssertionError(f"{path.name}:{node.lineno} uses private {value.id}.{node.attr}")
