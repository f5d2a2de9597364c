"""minilens's modules import one another in one direction: the pipeline, with no cycles.

    loading -> config -> forward (ops) -> trace, generate -> model -> analysis -> show, course

The graph is built from the modules' own source (every ``import`` and ``from ... import``,
including those inside functions and under ``if TYPE_CHECKING``), so a lazy import cannot hide
a cycle. The analysis modules import nothing from show/: results draw themselves because
show.render attaches ``_repr_html_`` and ``__repr__`` to them, not because they import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minilens"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The minilens modules that ``name`` imports, resolved to module names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports a module; `from mod import name` imports from one
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "minilens":
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_imports():
    """The walker must see an import inside a function, or the next test proves nothing."""
    g = graph()
    assert "minilens.loading.fetch" in g["minilens.loading.checkpoint"]
    assert "minilens.show.render" in g["minilens.show.cli"], (
        "show.cli imports render inside its commands")


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, (
        f"import cycle: {' -> '.join(cycle)}. Move the shared piece down the pipeline.")


def test_analysis_imports_nothing_from_show():
    g = graph()
    for name in g:
        if name.startswith("minilens.analysis"):
            bad = sorted(m for m in g[name] if m.startswith("minilens.show"))
            assert not bad, (
                f"{name} imports {bad}: analysis results must not depend on how they are drawn")


def test_the_pipeline_flows_one_way():
    """Lower layers never import higher ones: loading and the forward pass know nothing of
    analysis."""
    # fast/workers.py (threads with BLAS pinned) and fast/pages.py (anonymous maps) import
    # nothing of minilens: the GGUF reader dequantizes with the one into memory from the other,
    # so they sit at the bottom with loading.
    layer = {"loading": 0, "config": 0, "errors": 0, "fast.workers": 0, "fast.pages": 0,
             "ops": 1, "forward": 1,
             "trace": 2, "fast": 2, "generate": 2, "model": 3, "analysis": 4, "show": 5,
             "course": 5}

    def stage(module: str) -> str | None:
        parts = module.split(".")[1:]
        return ".".join(parts[:2]) if ".".join(parts[:2]) in layer else (parts or [None])[0]
    g = graph()
    for bottom in ("minilens.fast.workers", "minilens.fast.pages"):
        assert not {m for m in g.get(bottom, ()) if m.startswith("minilens")}, (
            f"{bottom} must import nothing of minilens: loading uses it")
    for name, deps in g.items():
        top = stage(name) if name.count(".") else None
        if top not in layer:
            continue
        for dep in deps:
            dtop = stage(dep)
            if (dtop in layer and layer[dtop] > layer[top]
                    and not (top == "loading" and dtop == "config")):
                raise AssertionError(
                    f"{name} imports {dep}: a lower stage of the pipeline imports a higher one")
