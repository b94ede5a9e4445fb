"""Packages split by concept (issue 21) still answer for every name: each public name that a public module of
``camlens.boxes`` or ``camlens.evaluation`` defines is in the package's ``__all__`` and is the same object there,
so ``from camlens.boxes import X`` and ``camlens.evaluation.X`` work whichever module X lives in."""

from __future__ import annotations

import ast
import importlib
import pkgutil

import pytest


def defined_names(module) -> set[str]:
    """The public names a module defines at top level (functions, classes, constants), read from its source."""
    with open(module.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("package", ["camlens.boxes", "camlens.evaluation"])
def test_the_package_exports_every_public_name_of_its_modules(package):
    pkg = importlib.import_module(package)
    modules = [m.name for m in pkgutil.iter_modules(pkg.__path__)]
    assert len(modules) >= 4, modules
    exported, defined = set(pkg.__all__), set()
    for name in modules:
        module = importlib.import_module(f"{package}.{name}")
        names = defined_names(module)
        defined |= names
        if name.startswith("_"):  # a private module's helpers stay inside the package
            names &= exported
        assert names <= exported, f"{package}.{name}: {sorted(names - exported)} missing from {package}.__all__"
        for n in names:
            assert getattr(pkg, n) is getattr(module, n), f"{package}.{n} is not {package}.{name}.{n}"
    assert exported <= defined, f"{package}.__all__ names what none of its modules defines: {exported - defined}"
