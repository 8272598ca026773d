"""The shape of the code, checked like behaviour: functions a reader can see whole, and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "vaegen"
SOURCES = sorted(PACKAGE.rglob("*.py")) + [REPO / "ui.py"]
MAX_LINES, MAX_PARAMETERS = 80, 8


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def parameters(node: ast.FunctionDef) -> int:
    args = node.args
    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
    return count - (1 if args.args and args.args[0].arg in ("self", "cls") else 0)


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_function_is_short_and_takes_few_parameters(path):
    too_long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in functions(path)
                if node.end_lineno - node.lineno + 1 > MAX_LINES]
    too_wide = [f"{node.name} ({parameters(node)} parameters)" for node in functions(path) if parameters(node) > MAX_PARAMETERS]
    assert not too_long + too_wide, f"over {MAX_LINES} lines or {MAX_PARAMETERS} parameters: {too_long + too_wide}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The vaegen modules `path` imports when it is imported (imports inside functions run later, and are left out)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaegen"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vaegen")}
    return found


def test_no_module_imports_itself_back():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {other for other in top_level_imports(path) if other in modules and other != name} for name, path in modules.items()}

    def cycle_from(start: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph[start]):
            if nxt == seen[0]:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name, (name,)))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"


def test_the_shape_checks_catch_what_they_look_for(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("def f(a, b, c, d, e, f, g, h, i):\n" + "    x = 1\n" * 85)
    (node,) = functions(long)
    assert parameters(node) == 9 and node.end_lineno - node.lineno + 1 == 86
    (tmp_path / "vaegen").mkdir()
    cyclic = tmp_path / "vaegen" / "a.py"
    cyclic.write_text("from vaegen.b import x\nimport vaegen.c\ndef g():\n    from vaegen.d import y\n")
    assert top_level_imports(cyclic) == {"vaegen.b", "vaegen.b.x", "vaegen.c"}


def imported_test_modules(path: Path) -> list[str]:
    """The test modules (test_*) `path` imports, at its top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[-1].startswith("test_")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1].startswith("test_"):
            found.append(node.module)
        elif isinstance(node, ast.ImportFrom):  # `from tests import test_train`, `from . import test_train`
            found += [alias.name for alias in node.names if alias.name.startswith("test_")]
    return found


def test_no_test_module_imports_another(tmp_path):
    """Shared helpers live in conftest.py (fixtures) and helpers.py, so each test file reads on its own."""
    tests = sorted((REPO / "tests").rglob("test_*.py"))
    offenders = [f"{path.relative_to(REPO)} imports {', '.join(found)}" for path in tests if (found := imported_test_modules(path))]
    assert not offenders, f"a test module imports another: {offenders}"

    sample = tmp_path / "test_sample.py"
    sample.write_text("import helpers\nfrom test_train import SAMPLE\n"
                      "def f():\n    import tests.test_tune\n    from . import test_fid\n")
    assert sorted(imported_test_modules(sample)) == ["test_fid", "test_train", "tests.test_tune"]


def all_imports(path: Path) -> set[str]:
    """Every vaegen module `path` imports, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaegen"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vaegen")}
    return found


def test_the_config_imports_nothing_else_of_the_package():
    outside = {(path.name, name) for path in (PACKAGE / "config").glob("*.py") for name in all_imports(path)
               if not name.startswith("vaegen.config") and name != "vaegen.errors"}
    assert not outside


def test_the_commands_do_not_import_diffusers_until_a_diffusion_model_is_built():
    import subprocess
    import sys

    script = ("import sys, vaegen.apps.cli, vaegen.apps.gallery, vaegen.models\n"
              "print('diffusers' in sys.modules)\n"
              "from vaegen.config import ModelConfig\n"
              "from vaegen.models import build_model\n"
              "build_model(ModelConfig(name='ddpm', widths=[8, 16]), (16, 16), 3, 1)\n"
              "print('diffusers' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]


def test_every_module_imports_alone(tmp_path):
    import subprocess
    import sys

    names = sorted(module_name(path) for path in PACKAGE.rglob("*.py") if path.name != "__main__.py")
    script = ("import importlib, sys\nfor name in sys.argv[1:]:\n"
              "    for loaded in [m for m in sys.modules if m == 'vaegen' or m.startswith('vaegen.')]:\n"
              "        del sys.modules[loaded]\n"
              "    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(names) > 30
