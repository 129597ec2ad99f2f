"""The package's imports point down the data flow: config -> leaves -> engine/hub -> cli.

Leaves (data, modeling, objectives, metrics) never import one another, so each can be built and tested alone.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reid_accel"

LEAVES = ("data", "modeling", "objectives", "metrics")
LAYER = (
    {"errors": 0, "fileio": 0, "seeding": 0, "config": 1}
    | dict.fromkeys(LEAVES, 2)
    | {"engine": 3, "hub": 3, "inference": 3, "export": 3, "cli": 4, "train": 5}
)


def _unit(module: str) -> str:
    """`reid_accel.data.hf` -> `data`; `reid_accel` itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


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
    unit = rel.parts[0].removesuffix(".py")
    if unit == "__init__":
        assert not _imports(path), "the package root imports nothing, so importing it stays cheap"
        return
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
