"""The package's structure: its layers hold (import-linter), no import cycle, few
function-level imports, one list of public names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dynflow

PACKAGE = Path(dynflow.__file__).parent
REPO = PACKAGE.parent


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Each module's top-level dynflow imports (not under TYPE_CHECKING), and the
    imports of dynflow modules made inside functions."""
    top: dict[str, set[str]] = {}
    inner: list[tuple[str, str]] = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        top[module] = set()

        def walk(
            node: ast.AST, in_function: bool, type_checking: bool, module: str = module
        ) -> None:
            for child in ast.iter_child_nodes(node):
                checking = type_checking or (
                    isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
                )
                if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("dynflow"):
                    if in_function:
                        inner.append((module, child.module))
                    elif not checking:
                        top[module].add(child.module)
                function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                walk(child, in_function or function, checking, module)

        walk(ast.parse(path.read_text()), False, False)
    return top, inner


def test_layers_contract_holds():
    """Lower layers never import higher ones (pyproject.toml's [tool.importlinter])."""
    lint = shutil.which("lint-imports") or pytest.fail("import-linter is not installed")
    proc = subprocess.run([lint], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_no_import_cycle_and_few_function_level_imports():
    top, inner = _imports()
    # depth-first search for a cycle among the top-level imports
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(top.get(module, ())):
            if dep not in top or dep == module:
                continue
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, module, dep]))
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(top):
        if module not in state:
            visit(module, [])
    # the facade methods only (Node.compute, visualize, _repr_html_, ...)
    assert len(inner) <= 10, inner
    assert {m.split(".")[1] for _, m in inner} <= {"client", "views"}, inner


def test_the_public_names_are_one_sorted_list():
    assert dynflow.__all__ == sorted(dynflow._EXPORTS)
    for name in dynflow.__all__:
        assert getattr(dynflow, name) is not None
    with pytest.raises(AttributeError):
        dynflow.no_such_name  # noqa: B018


def test_importing_the_scheduler_extension_loads_no_client_code():
    """What a scheduler or worker imports to run dynflow's tasks stays below the client."""
    code = (
        "import sys; import dynflow.extension._splice, dynflow.worker._calls; "
        "print(sorted(m for m in sys.modules if m.startswith('dynflow.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # noqa: S307 - our own output
    assert not [m for m in loaded if m.split(".")[1] in ("client", "views", "lowering")], loaded
