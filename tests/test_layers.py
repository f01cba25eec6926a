"""The package's layers only look down: every import in src/reproscope, function-local ones included.

The order is written here and in the package docstring (``reproscope/__init__.py``); this test
checks both say the same. A module may import from its own layer or any layer below, never above,
and the module import graph (function-local imports included) has no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import reproscope

SRC = Path(reproscope.__file__).parent
LAYERS = (  # low -> high; a name is a top-level module or subpackage of reproscope
    ("config", "console", "papers", "recipes", "hardware", "plotting", "runfiles"),
    ("model",),
    ("runtime",),
    ("data",),
    ("train",),
    ("instrument",),
    ("checks",),
    ("report",),
    ("diagnostics",),
    ("launch", "ablate", "cli", "__main__", "__init__"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every reproscope import in ``path``, at any depth."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            out += [(node.lineno, t) for t in targets if t.split(".")[0] == "reproscope"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "reproscope"]
    return out


def _layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if module in ("reproscope", "reproscope.__init__"):
        top = "__init__"
    assert top in LAYER, f"{module}: not in any layer of tests/test_layers.py; add it to LAYERS and the package docstring"
    return top, LAYER[top]


def _files():
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_is_in_a_layer():
    for p in _files():
        _layer_of(_module_name(p))


def test_no_import_from_a_higher_layer():
    bad = []
    for p in _files():
        me = _module_name(p)
        my_top, mine = _layer_of(me)
        for line, target in _imports(p):
            top, theirs = _layer_of(target)
            if theirs > mine:
                bad.append(f"{p.relative_to(SRC.parent)}:{line} ({my_top}) imports {target} ({top})")
    assert not bad, "imports that run up a layer:\n" + "\n".join(bad)


def test_no_import_circle():
    modules = {_module_name(p): p for p in _files()}

    def resolve(target: str) -> str | None:  # "reproscope.train.trainer.Trainer" -> the module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {r for _, t in _imports(p) if (r := resolve(t)) and r != m} for m, p in modules.items()}
    # a package's __init__ re-exports its own submodules: that is an edge down, not a circle
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n.startswith(m + ".") or m == "reproscope" or n == "reproscope":
                continue
            if state.get(n) == 1:
                circles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_package_docstring_states_the_same_order():
    doc = reproscope.__doc__
    line = next((ln for ln in doc.splitlines() if ln.strip().startswith("Layers")), "")
    written = [[n.strip() for n in group.split(",")] for group in line.split(":", 1)[1].split("->")]
    assert [tuple(g) for g in written] == list(LAYERS), line
