"""Layering, read from the source (every import, also those inside functions): the verbs
(``nar_bench/run/``) are imported by nobody but themselves and the CLI, and ``config.py`` (schemas,
YAML, overrides, sweeps) imports none of the components whose config slices it holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nar_bench"
VERBS = "nar_bench.run"
CONFIG_MUST_NOT_IMPORT = ("nar_bench.paradigms", "nar_bench.tokenizers", "nar_bench.metrics", "nar_bench.checkpoints")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the code of ``module``) may import, at any depth of the code:
    ``import a.b`` gives a.b; ``from a import b`` gives a and a.b (b may be a submodule); relative
    imports are resolved; ``importlib.import_module("a.b")`` / ``__import__("a.b")`` with a literal
    name give a.b."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("source, module, expected", [
    ("import nar_bench.run.train", "nar_bench.lit.module", True),
    ("def f():\n    from nar_bench.run.evaluate import evaluate\n", "nar_bench.lit.module", True),
    ("from nar_bench import run", "nar_bench.lit.module", True),
    ("from ..run import sweep", "nar_bench.lit.module", True),
    ("from .. import run", "nar_bench.lit.module", True),
    ("import importlib\nimportlib.import_module('nar_bench.run.sample')", "nar_bench.lit.module", True),
    ("from nar_bench import runtime_stats", "nar_bench.lit.module", False),
    ("import nar_bench.registry", "nar_bench.lit.module", False),
])
def test_the_scan_sees_every_form_of_import(source, module, expected):
    assert any(within(name, VERBS) for name in imported_modules(source, module)) == expected


def test_only_the_verbs_and_the_cli_import_the_verbs():
    offenders = []
    for path in package_files():
        module = module_name(path)
        if within(module, VERBS) or module == "nar_bench.cli":
            continue
        names = imported_modules(path.read_text(), module, path.name == "__init__.py")
        offenders += [f"{module} imports {name}" for name in sorted(names) if within(name, VERBS)]
    assert not offenders, offenders


def test_config_imports_no_component_it_configures():
    path = PACKAGE / "config.py"
    names = imported_modules(path.read_text(), "nar_bench.config")
    offenders = sorted(name for name in names for banned in CONFIG_MUST_NOT_IMPORT if within(name, banned))
    assert not offenders, offenders
    assert "nar_bench.errors" in names  # the scan reads this file's imports
