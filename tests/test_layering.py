"""The package's imports point down the data flow: ground floor -> config -> leaves -> methods -> card -> hub -> engine ->
cli.

Leaves (data, modeling, objectives, metrics) never import one another, so each can be built and tested alone.
`clustering` sits just above the leaves (it reuses the k-reciprocal encoding of `metrics`) and below the methods. A
package whose modules sit on different floors (`generators`) lists each module.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reid_accel"

LEAVES = ("data", "modeling", "objectives", "metrics")
LAYER = (
    {"errors": 0, "fileio": 1, "seeding": 1, "layout": 1, "folders": 1, "config": 2, "generators.synthetic": 2}
    | dict.fromkeys(LEAVES, 3)
    | {"clustering": 3.5}
    | {
        "generators.lookalike": 4,
        "methods": 4,
        "inference": 4,
        "export": 4,
        "card": 4.5,
        "hub": 5,
        "gallery": 5,
        "engine": 6,
        "cli": 7,
        "train": 8,
    }
)


def _unit(module: str) -> str:
    """`reid_accel.data.hf` -> `data`, `reid_accel.generators.synthetic` -> `generators.synthetic`; the package
    root -> `__init__`."""
    parts = module.split(".")
    if len(parts) < 2:
        return "__init__"
    return ".".join(parts[1:3]) if ".".join(parts[1:3]) in LAYER else parts[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("reid_accel.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reid_accel"):
            if node.module == "reid_accel":
                found |= {f"reid_accel.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "reid_ranking" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    rel = path.relative_to(PACKAGE)
    if rel.name == "__init__.py" and rel.parent.name in {"", "generators"}:
        assert not _imports(path), f"{rel} imports nothing, so importing it stays cheap (and cycle-free)"
        return
    unit = _unit("reid_accel." + ".".join(rel.with_suffix("").parts))
    assert unit in LAYER, f"{rel}: new top-level unit {unit!r} needs a place in the layer table"
    for module in _imports(path):
        other = _unit(module)
        if other == unit:
            continue
        assert LAYER[other] < LAYER[unit], f"{rel} imports {module}: {other!r} is not below {unit!r}"


def test_only_the_metric_module_imports_evaluate():
    offenders = [p for p in MODULES if "evaluate" in {n.split(".")[0] for n in _all_imported_names(p)}]
    assert not offenders, f"`evaluate` may only be imported by the shipped metric module: {offenders}"


def _all_imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
