"""medai's layering, read from the source: every import (module level and inside
functions, not ``if TYPE_CHECKING:`` blocks) of every module under ``src/medai``.

- no cycle between medai's top-level parts (``inference``, ``training``, ``evaluation``,
  ``networks`` …): a lazy import inside a function is an edge like any other;
- ``medai.runtime`` and every medai module it imports, transitively, import neither
  torch nor monai;
- ``medai.evaluation`` imports neither ``medai.inference`` nor ``medai.training`` (nor,
  transitively, them, ``medai.networks``, torch or monai): evaluation consumes
  predictions, it does not load models.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import medai

ROOT = Path(medai.__file__).resolve().parent
FORBIDDEN_IN_RUNTIME = ("torch", "monai")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import in ``node``, skipping the body of ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for stmt in node.orelse:
            yield from _import_nodes(stmt)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _import_nodes(child)


@cache
def _lazy_names(package: str) -> dict[str, str]:
    """Name → module for a package that imports on attribute access (PEP 562): the
    string-valued dict literals of an ``__init__`` that defines ``__getattr__``."""
    path = _modules().get(package)
    if path is None or path.name != "__init__.py":
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = tree.body
    if not any(isinstance(s, ast.FunctionDef) and s.name == "__getattr__" for s in body):
        return {}
    names: dict[str, str] = {}
    for stmt in body:
        value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
        if not isinstance(value, ast.Dict):
            continue
        for key, target in zip(value.keys, value.values, strict=True):
            if (
                isinstance(key, ast.Constant)
                and isinstance(target, ast.Constant)
                and target.value in _modules()
            ):
                names[str(key.value)] = str(target.value)
    return names


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` → ``[a, a.b, a.b.c]``: importing a module runs its packages' __init__."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def _imports(module: str) -> frozenset[str]:
    """Absolute names of the modules ``module`` imports (medai's resolved to files)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        found.add(base)
        for alias in node.names:  # ``from medai.inference import study``: a submodule
            if f"{base}.{alias.name}" in _modules():
                found.add(f"{base}.{alias.name}")
            lazy = _lazy_names(base).get(alias.name)  # ``from medai.inference import load_run``
            if lazy is not None:
                found.add(lazy)
    out: set[str] = set()
    for name in found:
        out.update(n for n in _with_parents(name) if n != module)
    return frozenset(out)


def _part(module: str) -> str | None:
    """The top-level part of medai a module belongs to (``medai.io.dicom`` → ``io``)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "medai" and len(parts) > 1 else None


def _part_edges() -> dict[tuple[str, str], list[str]]:
    """(part, part) → the module imports that make that edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module in _modules():
        src = _part(module)
        for target in _imports(module):
            dst = _part(target)
            if src is not None and dst is not None and dst != src and target in _modules():
                edges.setdefault((src, dst), []).append(f"{module} → {target}")
    return edges


def _cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one part (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _reachable(start: str) -> dict[str, str]:
    """Every module imported from ``start``, transitively → the module that imports it."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        module = todo.pop()
        for target in sorted(_imports(module)):
            if target not in seen:
                seen[target] = module
                if target in _modules():
                    todo.append(target)
    return seen


def _chain(seen: dict[str, str], end: str) -> str:
    chain = [end]
    while seen[chain[-1]]:
        chain.append(seen[chain[-1]])
    return " → ".join(reversed(chain))


def test_scanner_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The scan is worth its verdicts: a function-level import and ``from pkg import mod``
    are edges; a TYPE_CHECKING import is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from medai.inference import study\n"
        "if TYPE_CHECKING:\n    import torch\nelse:\n    import numpy\n"
        "def f():\n    from medai.training.trainer import train\n    return train\n"
    )
    names = {n.names[0].name if isinstance(n, ast.Import) else n.module
             for n in _import_nodes(ast.parse(source))}  # fmt: skip
    assert names == {"typing", "medai.inference", "numpy", "medai.training.trainer"}
    assert "medai.inference.study" in _imports("medai.runtime.predict")
    assert "medai.inference" in _imports("medai.runtime.predict")
    assert _lazy_names("medai.inference")["load_run"] == "medai.inference.predict"
    assert _cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [
        ["a", "b", "c"]
    ]


def test_no_cycle_between_medai_parts() -> None:
    edges = _part_edges()
    assert ("runtime", "inference") in edges  # the scan sees real edges
    cycles = _cycles(edges)
    detail = [
        f"{a} → {b}: {edges[(a, b)][0]}"
        for group in cycles
        for a in group
        for b in group
        if (a, b) in edges
    ]
    assert not cycles, f"import cycles between parts {cycles}:\n" + "\n".join(detail)


def test_runtime_never_imports_torch_or_monai() -> None:
    seen = _reachable("medai.runtime")
    assert "medai.inference.study" in seen  # it does reach the shared study flow
    bad = [_chain(seen, name) for name in seen if name.split(".")[0] in FORBIDDEN_IN_RUNTIME]
    assert not bad, "medai.runtime reaches torch/monai:\n" + "\n".join(sorted(bad))


def test_evaluation_imports_neither_inference_nor_training() -> None:
    bad = [
        line
        for (src, dst), lines in _part_edges().items()
        if src == "evaluation" and dst in {"inference", "training"}
        for line in lines
    ]
    assert not bad, "evaluation must consume predictions, not load models:\n" + "\n".join(bad)
    seen = _reachable("medai.evaluation")
    assert "medai.evaluation.run_report" in seen
    banned = ("medai.inference", "medai.training", "medai.networks", *FORBIDDEN_IN_RUNTIME)
    reached = [_chain(seen, n) for n in seen if n.startswith(banned)]
    assert not reached, "evaluation reaches model code:\n" + "\n".join(sorted(reached))
