"""The neutral floor (``ntkit.budget``, ``ntkit.tiling``, ``ntkit.sources``) imports no kernel
package (the other rooms rules — linalg vs the engines, private modules — are in
``test_rooms.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ntkit

ROOT = Path(ntkit.__file__).parent
FLOOR = ("budget", "tiling", "sources")


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield ".".join(parts), is_pkg, path


def _imports(name: str, is_pkg: bool, path: Path) -> set[str]:
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from . import _x`
    return {m for m in out if m == "ntkit" or m.startswith("ntkit.")}


MODULES = list(_modules())


@pytest.mark.parametrize("floor", FLOOR)
def test_floor_imports_no_kernel_package(floor):
    name, is_pkg, path = next(m for m in MODULES if m[0] == f"ntkit.{floor}")
    kernels = ("ntkit.infinite", "ntkit.empirical", "ntkit.linalg", "ntkit.predict", "ntkit.lab")
    assert [i for i in _imports(name, is_pkg, path) if i.startswith(kernels)] == []
