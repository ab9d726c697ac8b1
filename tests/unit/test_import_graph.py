"""No import cycles in the package, ``if TYPE_CHECKING:`` imports included.

A cycle that only type checking closes is still a cycle for the reader: the two modules are
one concept split in two, and the next runtime import between them fails at import time.
Two modules that must know each other's shape break the cycle with a ``Protocol`` in the
lower one (``handlers/agent/deadlines.py``, ``handlers/stats/closer.py``,
``topics/kafka_consumer.py``). import-linter's ``acyclic_siblings`` contract checks cycles
between sibling packages; this test checks single modules, a package and its own modules
included. The graph is grimp's, the one import-linter reads.
"""

from __future__ import annotations

from collections.abc import Iterable

import grimp


def cycles(graph: grimp.ImportGraph, modules: Iterable[str]) -> list[list[str]]:
    """The import cycles among ``modules``: each strongly connected component of more than
    one module, sorted (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_package_has_no_import_cycles() -> None:
    graph = grimp.build_graph("agentstream", exclude_type_checking_imports=False)
    found = cycles(graph, graph.modules)
    assert found == [], "import cycles (TYPE_CHECKING imports count):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_check_finds_a_cycle_and_a_package_importing_its_importer() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [
        ("p.a", "p.b"),
        ("p.b", "p.c"),
        ("p.c", "p.a"),  # a three-module cycle
        ("p", "p.d"),
        ("p.d", "p"),  # a package and its own module
        ("p.e", "p.a"),  # not part of any cycle
    ]:
        graph.add_import(importer=importer, imported=imported)
    assert cycles(graph, graph.modules) == [["p", "p.d"], ["p.a", "p.b", "p.c"]]
