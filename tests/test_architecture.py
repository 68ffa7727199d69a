"""The floors of the package (docs/architecture.md): imports only run down, no circles,
and the light parts import without the heavy ones.

The checks run on the import graph that grimp reads from the source (imports under
``if TYPE_CHECKING:`` excluded, imports inside functions included).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_after(statement: str) -> set[str]:
    """The modules ``sys.modules`` holds after running ``statement`` in a fresh Python."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


def _top_level(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


#: The floors, top first: a module may import only from floors below its own (names
#: on one floor, separated by "|", may not import each other). Every top-level module
#: and package of jaxdistill must appear. docs/architecture.md draws the same.
FLOORS = [
    "__main__",
    "cli",
    "pipeline",
    "sampling | validation | evaluate | curvature | fanout | importing",
    "labelling | train | md | export",
    "committee",
    "student | data | cluster",
    "config | potential | teachers",
    "models | graph | progress | diagnostics",
    "_version | _lazy | runtime | portable",
]


def _graph():
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("jaxdistill", exclude_type_checking_imports=True, cache_dir=None)


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _floor_of() -> dict[str, int]:
    return {
        name.strip(): level
        for level, floor in enumerate(reversed(FLOORS))
        for name in floor.split("|")
    }


def test_every_part_of_the_package_has_a_floor():
    graph = _graph()
    parts = {_top(m) for m in graph.modules if m != "jaxdistill"}
    assert parts == set(_floor_of()), "add new modules to FLOORS (and docs/architecture.md)"


def _upward_imports(graph) -> list[str]:
    floor = _floor_of()
    found = []
    for importer in sorted(graph.modules):
        if importer == "jaxdistill":
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = _top(importer), _top(imported)
            if imported == "jaxdistill" or a == b:
                continue
            if floor[b] >= floor[a]:
                found.append(f"{importer} -> {imported}")
    return found


def _sibling_cycles(graph) -> list[list[str]]:
    """Circles among the children of any package (modules and subpackages, each
    standing for everything inside it), as import-linter's acyclic_siblings."""
    cycles = []
    packages = [m for m in graph.modules if graph.find_children(m)]
    for package in sorted(packages):
        children = sorted(graph.find_children(package))
        edges = {c: set() for c in children}
        for child in children:
            inside = {child, *graph.find_descendants(child)}
            for module in inside:
                for imported in graph.find_modules_directly_imported_by(module):
                    for other in children:
                        if other != child and (
                            imported == other or imported.startswith(other + ".")
                        ):
                            edges[child].add(other)
        cycles += [c for c in _strongly_connected(edges) if len(c) > 1]
    return cycles


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            components.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return components


def test_imports_only_run_down_the_floors():
    assert _upward_imports(_graph()) == []


def test_no_import_circles():
    assert _sibling_cycles(_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle():
    """The two checks above can fail: a planted upward import and circle are found."""
    graph = _graph()
    graph.add_import(importer="jaxdistill.data.arrays", imported="jaxdistill.pipeline.stages")
    assert "jaxdistill.data.arrays -> jaxdistill.pipeline.stages" in _upward_imports(graph)
    graph.add_import(importer="jaxdistill.md.types", imported="jaxdistill.md.driver")
    cycles = _sibling_cycles(graph)
    assert any({"jaxdistill.md.driver", "jaxdistill.md.types"} <= set(c) for c in cycles)


def test_no_module_imports_the_package_root():
    """``from jaxdistill import x`` inside the package runs back up to the lazy root,
    which may import anything: modules import from the module that defines x."""
    assert _graph().find_modules_that_directly_import("jaxdistill") == set()


def test_config_imports_neither_jax_nor_teachers():
    modules = _top_level(_imported_after("import jaxdistill.config"))
    assert not modules & {"jax", "jax_md", "flax", "torch", "h5py"}, sorted(modules)


def test_package_import_is_light():
    modules = _top_level(_imported_after("import jaxdistill"))
    assert not modules & {"jax", "jax_md", "flax", "torch", "h5py"}, sorted(modules)


def test_training_core_imports_neither_h5py_nor_teachers():
    modules = _imported_after("import jaxdistill.train.loss, jaxdistill.train.step")
    assert "h5py" not in modules
    heavy = ("jaxdistill.teachers", "jaxdistill.data.store", "jaxdistill.train.loop")
    assert not {m for m in modules if m.startswith(heavy)}
    assert "torch" not in _top_level(modules)


def test_api_functions_are_not_shadowed_by_their_submodules():
    """``jaxdistill.train`` and ``jaxdistill.evaluate`` stay the functions even after
    their submodules were imported (Python would set the package attribute to them)."""
    code = (
        "import jaxdistill.train.loop, jaxdistill.evaluate, jaxdistill\n"
        "from jaxdistill import evaluate, train\n"
        "print(callable(train) and callable(evaluate), type(jaxdistill.train).__name__, "
        "sorted(set(jaxdistill.__all__) - {'__version__'}) == sorted(jaxdistill._EXPORTS))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["True", "function", "True"]
