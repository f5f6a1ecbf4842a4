"""No module under accm/ imports from a package that sits above it in the layering written in
docs/DESIGN.md ("Layout and dependency direction"): imports only run down (or sideways within a
layer), so each floor can be used and tested without the ones above it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "accm"

#: lowest first; a module may import from its own layer and the layers below it
LAYERS = [
    {"errors", "files", "inputs", "stats", "bundle", "assets"},
    {"data"},
    {"models"},
    {"pruning"},
    {"engines"},
    {"runtime"},
    {"compensation", "precision", "train", "export"},
    {"measure", "serve", "doctor", "kernels"},
    {"cli"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    rel = path.relative_to(ROOT)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
            target = base + (node.module.split(".") if node.module else [])
            names = [target[0]] if target else [a.name for a in node.names]
            yield from ((n, node.lineno) for n in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("accm."):
            yield node.module.split(".")[1], node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name.split(".")[1], node.lineno) for a in node.names if a.name.startswith("accm."))


def test_every_package_has_a_layer():
    units = {_unit(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert units <= set(LEVEL), sorted(units - set(LEVEL))


def test_imports_never_run_back_up():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for target, line in _imports(path):
            if target in LEVEL and LEVEL[target] > LEVEL[unit]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} {unit} -> {target}")
    assert not upward, "\n".join(upward)
