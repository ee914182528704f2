"""Rooms: which module may import which (docs/DESIGN.md, "Layers and rooms").

* A private module ``pkg._name`` belongs to its package: it may be imported by modules of
  ``pkg`` and of its sub-packages, never from outside (``ntkit._validation`` serves the whole
  library; ``ntkit.predict._x`` serves ``ntkit.predict`` only).
* ``ntkit.linalg`` is generic linear algebra over kernel sources: it imports nothing from
  ``ntkit.infinite`` or ``ntkit.empirical``.

The imports are read from the source (``ast``), including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ntkit

ROOT = Path(ntkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ``import``/``from ... import`` in ``path``.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            for alias in node.names:
                candidate = f"{mod}.{alias.name}"
                rel = candidate.split(".")[1:]
                if rel and (ROOT.joinpath(*rel).with_suffix(".py").exists() or ROOT.joinpath(*rel).is_dir()):
                    found.append((node.lineno, candidate))
    return [(line, mod) for line, mod in found if mod == "ntkit" or mod.startswith("ntkit.")]


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _private_owner(module: str) -> str | None:
    """The package that owns the first private component of ``module`` (None: all public)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_the_scan_sees_imports():
    """The checker reads relative, absolute and function-level imports (else it checks nothing)."""
    imports = dict((mod, line) for line, mod in _imports(ROOT / "infinite" / "conv.py"))
    assert "ntkit.spatial" in imports and "ntkit.infinite._spatial" in imports
    assert _private_owner("ntkit.infinite._spatial") == "ntkit.infinite"
    assert _private_owner("ntkit._validation") == "ntkit"
    assert _private_owner("ntkit.linalg.solve") is None


def test_no_module_imports_another_packages_private_module():
    bad = []
    for path in _sources():
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
        for line, mod in _imports(path):
            owner = _private_owner(mod)
            if owner is not None and not (package == owner or package.startswith(owner + ".")):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_linalg_imports_nothing_from_the_kernel_engines():
    bad = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {mod}"
        for path in sorted((ROOT / "linalg").rglob("*.py"))
        for line, mod in _imports(path)
        if mod.startswith(("ntkit.infinite", "ntkit.empirical"))
    ]
    assert not bad, "\n".join(bad)
