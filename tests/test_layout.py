"""The house: ``methods`` and ``datasets`` stand on the shared basement only.

``benchmark`` is the roof (CLI, runner, leaderboards); what the packages below it need from
``benchmark`` is the basement: the registry, file writing (atomic, sealed) and lazy imports.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASEMENT = {"benchmark.registry", "benchmark.io", "benchmark.seal", "benchmark.lazy"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports: import statements anywhere (functions included) and
    the string arguments of ``lazy_import("...")``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "lazy_import"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(node.args[0].value)
    return found


@pytest.mark.parametrize("package", ["methods", "datasets"])
def test_package_imports_only_the_basement_of_benchmark(package):
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / package).glob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] == "benchmark" and module not in BASEMENT
    }
    assert not offending, sorted(offending)


def test_the_static_check_sees_function_level_and_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from benchmark.io import atomic_write\n"
        "def f():\n    from benchmark.config import resolve\n"
        "models = lazy_import('benchmark.models')\n"
    )
    assert imported_modules(source) == {"benchmark.io", "benchmark.config", "benchmark.models"}


def test_using_every_method_and_dataset_loads_no_other_benchmark_module():
    code = (
        "import sys, methods, datasets\n"
        "methods.list_methods(); datasets.list_datasets()\n"
        "for spec in methods.list_methods(specs=True): methods.create_method(spec)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmark'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(eval(out.stdout))  # a printed list of module names
    assert loaded - {"benchmark"} <= BASEMENT, loaded
