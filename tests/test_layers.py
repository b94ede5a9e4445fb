"""The layer contract of docs/ARCHITECTURE.md, enforced: every module of src/camlens belongs to one layer of the
table under "## Layers", imports only from the layers below it (never from another entry of its own layer), and
no import cycle exists.

Imports are read from the AST of every file, including imports inside functions and under TYPE_CHECKING,
relative and absolute ones.  Importing ``camlens.a.b`` from outside ``camlens.a`` also runs ``camlens/a/__init__.py``,
so it counts as importing ``camlens.a`` too (the package's own modules are exempt: Python runs a package before
its modules).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "camlens"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

Graph = dict[str, set[str]]


def read_layers(text: str) -> list[list[str]]:
    """The layers, bottom first, from the table under ``## Layers``: rows ``| N | `a`, `b.c` | ... |``."""
    section = text.split("\n## Layers", 1)
    assert len(section) == 2, f"{ARCHITECTURE} has no '## Layers' section: the layer contract lives there"
    body = re.split(r"\n## ", section[1], maxsplit=1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", body, flags=re.M)
    layers = [re.findall(r"`([\w.]+)`", names) for _, names in sorted(rows, key=lambda r: int(r[0]))]
    assert [int(r[0]) for r in sorted(rows, key=lambda r: int(r[0]))] == list(range(len(rows))), "layers are 0..N"
    return layers


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path, package: str = PACKAGE) -> Graph:
    """Module -> the package modules it imports (anywhere in the file)."""
    files = {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}
    graph: Graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                for alias in node.names:  # `from . import zoo` imports the module camlens.zoo
                    sub = f"{origin}.{alias.name}"
                    targets.add(sub if sub in files else origin)
        deps: set[str] = set()
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            while target not in files:  # `import camlens.x.attr` style: the longest module prefix
                target = target.rpartition(".")[0]
            deps.add(target)
            parent = target.rpartition(".")[0]
            while parent and parent != package:  # running camlens.a.b runs camlens.a first
                if not (name == parent or name.startswith(parent + ".")):
                    deps.add(parent)
                parent = parent.rpartition(".")[0]
        deps.discard(name)
        graph[name] = deps
    return graph


def place(module: str, layers: list[list[str]], package: str = PACKAGE) -> tuple[int, str] | None:
    """(layer, entry) of the entry that is the longest prefix of ``module`` (``data`` covers
    ``camlens.data.images``), or None."""
    best: tuple[int, str] | None = None
    for index, entries in enumerate(layers):
        for entry in entries:
            full = package if entry == package else f"{package}.{entry}"
            if module == full or module.startswith(full + "."):
                if best is None or len(full) > len(best[1]):
                    best = (index, full)
    return best


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(graph: Graph, layers: list[list[str]], package: str = PACKAGE) -> list[str]:
    """One line per broken rule: a module in no layer, an import from a higher layer or from another entry of the
    same layer, a cycle."""
    problems = [
        f"{m} is in no layer: add it to the '## Layers' table of docs/ARCHITECTURE.md"
        for m in sorted(graph)
        if place(m, layers, package) is None
    ]
    for module in sorted(graph):
        mine = place(module, layers, package)
        for dep in sorted(graph[module]):
            theirs = place(dep, layers, package)
            if mine is None or theirs is None:
                continue
            if theirs[0] > mine[0]:
                problems.append(f"upward import: {module} (layer {mine[0]}) imports {dep} (layer {theirs[0]})")
            elif theirs[0] == mine[0] and theirs[1] != mine[1]:
                problems.append(f"sideways import: {module} imports {dep}, both in layer {mine[0]} (independent)")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return problems


def test_every_module_imports_only_its_own_layer_or_below_and_no_cycle_exists():
    problems = violations(import_graph(SRC), read_layers(ARCHITECTURE.read_text()))
    assert not problems, "the layer contract of docs/ARCHITECTURE.md is broken:\n" + "\n".join(problems)


def test_the_contract_catches_upward_imports_cycles_and_unplaced_modules(tmp_path):
    """The checker itself, on a planted package: an upward import inside a function, a relative cycle, a package
    whose __init__ a lower module runs by importing its submodule, and a module missing from the table."""
    pkg = tmp_path / "pkg"
    (pkg / "high").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from .high import tool\n")  # upward, hidden in a function
    (pkg / "mid.py").write_text("from . import low\nfrom .other import x\n")
    (pkg / "other.py").write_text("from pkg.mid import y\n")  # absolute: mid <-> other is a cycle
    (pkg / "high" / "__init__.py").write_text("")
    (pkg / "high" / "tool.py").write_text("from ..low import f\n")
    (pkg / "stray.py").write_text("import pkg.high.tool\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.low"] == {"pkg.high.tool", "pkg.high"}
    assert graph["pkg.high.tool"] == {"pkg.low"}  # its own package's __init__ is not a dependency
    layers = [["low"], ["mid", "other"], ["high"]]
    assert violations(graph, layers, "pkg") == [
        "pkg is in no layer: add it to the '## Layers' table of docs/ARCHITECTURE.md",
        "pkg.stray is in no layer: add it to the '## Layers' table of docs/ARCHITECTURE.md",
        "upward import: pkg.low (layer 0) imports pkg.high (layer 2)",
        "upward import: pkg.low (layer 0) imports pkg.high.tool (layer 2)",
        "sideways import: pkg.mid imports pkg.other, both in layer 1 (independent)",
        "sideways import: pkg.other imports pkg.mid, both in layer 1 (independent)",
        "import cycle: pkg.high.tool <-> pkg.low",
        "import cycle: pkg.mid <-> pkg.other",
    ]


def test_read_layers_takes_the_table_bottom_first():
    text = "# x\n## Layers\n\n| layer | modules |\n| --- | --- |\n| 1 | `b`, `c.d` |\n| 0 | `a` |\n\n## Next\n| 2 | `z` |\n"
    assert read_layers(text) == [["a"], ["b", "c.d"]]
