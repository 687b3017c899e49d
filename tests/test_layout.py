"""The house in layers: ``foundation`` at the bottom, ``methods`` and ``datasets`` on it,
``benchmark`` (the harness) on top, and no circles inside ``benchmark``.

``foundation`` (registry, lazy imports, atomic io, sealed JSON) imports none of the three
packages; ``methods`` and ``datasets`` import nothing from ``benchmark``, and using them loads
no ``benchmark`` module. Inside ``benchmark`` the import graph of its modules (module level,
function level and ``if TYPE_CHECKING:`` imports alike) has no cycle, nor has the graph of
its subpackages (``training``, ``protocol``, ``publish``, ``run``) and top-level modules.
Each check has a test of its own that it can fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# each package and the packages it must not import
FORBIDDEN = {
    "foundation": {"benchmark", "methods", "datasets"},
    "methods": {"benchmark"},
    "datasets": {"benchmark"},
}


def module_name(path: Path, root: Path) -> str:
    """``benchmark/publish/page.py`` -> ``benchmark.publish.page``; a package's
    ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: Collection[str] = (), root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports: import statements anywhere (functions and
    ``if TYPE_CHECKING:`` blocks included) and the string arguments of ``lazy_import("...")``.
    ``from package import name`` is ``package.name`` when that is one of the ``known``
    modules (a submodule), else ``package``; relative imports are resolved from ``path``'s
    place under ``root``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                name = module_name(path, root).split(".")
                package = name if path.name == "__init__.py" else name[:-1]
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in known else module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "lazy_import"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(node.args[0].value)
    return found


def offending_imports(package: Path, forbidden: Collection[str]) -> list[str]:
    """``file: module`` for every import in ``package`` (subpackages included) of a module
    of one of the ``forbidden`` top-level packages."""
    return sorted(
        f"{path.relative_to(package.parent).as_posix()}: {module}"
        for path in sorted(package.rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] in forbidden
    )


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (its subpackages' included); a
    submodule import also imports each package above it (their ``__init__``)."""
    root = package.parent
    paths = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        edges = set()
        for module in imported_modules(path, paths, root):
            parts = module.split(".")
            edges |= {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        graph[name] = {m for m in edges & paths.keys() if m != name}
    return graph


def find_cycle(graph: Mapping[str, Collection[str]]) -> list[str] | None:
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first, in sorted order)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layers(graph: Mapping[str, Collection[str]], package: str) -> dict[str, set[str]]:
    """``graph`` with each subpackage of ``package`` as one node (``benchmark.publish.page``
    -> ``benchmark.publish``); its top-level modules stay nodes of their own, the package's
    own ``__init__`` is left out (every module's import of a submodule passes through it)."""

    def unit(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2])

    merged: dict[str, set[str]] = {}
    for name, edges in graph.items():
        if name == package:
            continue
        node = unit(name)
        merged.setdefault(node, set())
        merged[node] |= {unit(m) for m in edges if m != package and unit(m) != node}
    return merged


# --- foundation, methods and datasets ------------------------------------------------------


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_none_of_the_packages_above_it(package):
    offending = offending_imports(ROOT / package, FORBIDDEN[package])
    assert not offending, offending


def test_the_static_check_sees_function_level_and_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from foundation.io import atomic_write\n"
        "def f():\n    from benchmark.config import resolve\n"
        "models = lazy_import('benchmark.training.models')\n"
    )
    assert imported_modules(source) == {
        "foundation.io",
        "benchmark.config",
        "benchmark.training.models",
    }


def test_the_static_check_finds_a_forbidden_import_in_a_subpackage(tmp_path):
    package = tmp_path / "methods"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from foundation.registry import Registry\n")
    (package / "sub" / "m.py").write_text("def f():\n    from benchmark import config\n")
    assert offending_imports(package, {"benchmark"}) == ["methods/sub/m.py: benchmark"]


def loaded_modules(code: str) -> set[str]:
    """The modules of ``benchmark``, ``methods``, ``datasets`` and ``foundation`` that a
    fresh interpreter has loaded after running ``code`` in the repository."""
    code += (
        "\nimport sys\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'benchmark', 'methods', 'datasets', 'foundation'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(eval(out.stdout))  # a printed list of module names


def test_using_every_method_and_dataset_loads_no_benchmark_module():
    code = (
        "import methods, datasets\n"
        "methods.list_methods(); datasets.list_datasets()\n"
        "for spec in methods.list_methods(specs=True): methods.create_method(spec)\n"
    )
    loaded = loaded_modules(code)
    assert {"methods.cam_methods", "datasets.synthetic", "foundation.registry"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] == "benchmark"}, sorted(loaded)


def test_foundation_loads_none_of_the_packages_above_it():
    loaded = loaded_modules("import foundation.registry, foundation.lazy, foundation.io")
    loaded |= loaded_modules("import foundation.seal")
    assert {m.split(".")[0] for m in loaded} == {"foundation"}, sorted(loaded)


def test_the_runtime_check_sees_a_benchmark_module():
    assert "benchmark.config" in loaded_modules("import methods\nimport benchmark.config")


# --- no circles inside benchmark -------------------------------------------------------------


def test_benchmark_modules_import_each_other_without_a_cycle():
    graph = import_graph(ROOT / "benchmark")
    assert "benchmark.commands.run" in graph  # subpackages are in it
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_benchmark_subpackages_stand_in_layers():
    merged = layers(import_graph(ROOT / "benchmark"), "benchmark")
    assert {"benchmark.training", "benchmark.protocol", "benchmark.publish"} <= merged.keys()
    assert {"benchmark.run", "benchmark.config"} <= merged.keys()
    cycle = find_cycle(merged)
    assert cycle is None, "subpackages in a cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_function_level_type_only_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
    )
    (package / "c.py").write_text("from pkg import a\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg", "pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg", "pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    assert find_cycle(layers(graph, "pkg")) == ["pkg.a", "pkg.sub", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import pkg\n")  # the package's __init__: no cycle
    assert find_cycle(import_graph(package)) is None


# Modules over about 500 lines, each with the reason it stays one module (issue 24).
LONG = 500
LONG_MODULES = {
    "methods/tomography.py": "the shared core (DESIGN): one function per equation of 3.1-3.5 "
    "and A.1-A.5, their batched forms and the iterative solver, imported as one module",
    "datasets/base.py": "one class, VolumeDataset: scanning, the content-keyed cache, "
    "verification and the errors naming files share the cache's state",
    "datasets/brain.py": "one phantom: a subject's anatomy built structure by structure, "
    "each step reading the frame and the tissue map of the ones before",
    "benchmark/training/train.py": "the training loop alone (the run's data, files and "
    "estimate are apart): train() and _Loop share one run's state",
    "benchmark/config.py": "the one place of every setting (DESIGN): the frozen dataclasses, "
    "their presets and named checks, which the CLI and checkpoints read together",
}


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_modules(root: Path, limit: int = LONG) -> set[str]:
    """The .py files of the four packages under ``root`` longer than ``limit`` lines."""
    return {
        path.relative_to(root).as_posix()
        for package in ("foundation", "methods", "datasets", "benchmark")
        for path in (root / package).rglob("*.py")
        if line_count(path) > limit
    }


def test_every_long_module_states_why_and_the_list_stays_true():
    assert long_modules(ROOT) == set(LONG_MODULES)


def test_the_length_check_sees_a_long_module_in_a_subpackage(tmp_path):
    deep = tmp_path / "benchmark" / "run" / "big.py"
    deep.parent.mkdir(parents=True)
    deep.write_text("x = 1\n" * (LONG + 1))
    (tmp_path / "benchmark" / "run" / "small.py").write_text("x = 1\n" * LONG)
    assert long_modules(tmp_path) == {"benchmark/run/big.py"}
