"""The package's layout rules, checked by parsing its source (ast): nothing is imported or run.

* only provider.py and litellm_tuning.py import litellm or call import_litellm();
* each formatting or percentile helper is defined once in the package;
* each command is a module of batchrun/commands/ named after it, and cli.py registers them all;
* domain modules import no click;
* sim/ imports nothing of batchrun outside sim/.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import batchrun

PACKAGE = Path(batchrun.__file__).parent
LITELLM_MODULES = {"provider.py", "litellm_tuning.py"}
FORMAT_HELPERS = {"num", "pct", "usd", "ms", "table", "kv", "percentile", "percentiles", "round1",
                  "_num", "_pct", "_usd", "_ms", "_render", "_kv", "_r1", "_round", "_f", "_percentiles",
                  "_nice_width", "draw_plot", "write_charts"}
DOMAIN_MODULES = {"bench.py", "grading.py", "diffing.py", "plan.py", "rundir.py", "engine.py", "stats.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(module: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def calls_import_litellm(module: ast.Module) -> bool:
    for node in ast.walk(module):
        if isinstance(node, ast.Name) and node.id == "import_litellm":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "import_litellm":
            return True
        if isinstance(node, ast.alias) and node.name == "import_litellm":
            return True
    return False


def test_only_the_provider_and_its_tuning_module_touch_litellm():
    offenders = []
    for path in modules():
        module = tree(path)
        names = imported(module)
        touches = any(n == "litellm" or n.startswith("litellm.") for n in names) or calls_import_litellm(module)
        if touches and (path.parent != PACKAGE or path.name not in LITELLM_MODULES):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_the_litellm_check_sees_an_import():
    assert imported(ast.parse("import litellm")) == {"litellm"}
    assert "litellm.main" in imported(ast.parse("from litellm import main"))
    assert calls_import_litellm(ast.parse("from batchrun.provider import import_litellm"))
    assert not calls_import_litellm(ast.parse("from batchrun.provider import preload"))


def test_the_tuning_module_is_imported_by_the_provider_only():
    users = [path.name for path in modules()
             if {"batchrun.litellm_tuning", "batchrun.litellm_tuning.install"} & imported(tree(path))
             or any(n.startswith("batchrun.litellm_tuning") for n in imported(tree(path)))]
    users += [path.name for path in modules()
              if "batchrun.litellm_tuning" in {f"batchrun.{a.name}" for node in ast.walk(tree(path))
                                               if isinstance(node, ast.ImportFrom) and node.module == "batchrun"
                                               for a in node.names}]
    assert set(users) == {"provider.py"}


def test_no_formatting_or_percentile_helper_is_defined_twice():
    defined: Counter[str] = Counter()
    for path in modules():
        for node in tree(path).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in FORMAT_HELPERS:
                defined[node.name] += 1
    assert [name for name, n in defined.items() if n > 1] == []
    for gone in ("_num", "_pct", "_usd", "_ms", "_render", "_r1", "_round", "_percentiles"):
        assert gone not in defined, f"{gone}: use textfmt.py / stats.py"


def test_each_command_is_its_own_module_and_registered():
    from batchrun.cli import main

    commands = {path.stem for path in (PACKAGE / "commands").glob("*.py")} - {"__init__"}
    assert commands == set(main.commands)
    assert {"run", "status", "report", "diff", "plan", "bench", "sim"} <= commands
    for name, command in main.commands.items():
        assert command.callback.__module__ in (f"batchrun.commands.{name}", "batchrun.sim.command"), name


def test_domain_modules_have_no_click_and_no_main_block():
    for name in DOMAIN_MODULES:
        module = tree(PACKAGE / name)
        assert "click" not in imported(module), name
        assert "__main__" not in (PACKAGE / name).read_text(encoding="utf-8"), name


def test_sim_imports_nothing_of_batchrun_outside_sim():
    for path in (PACKAGE / "sim").rglob("*.py"):
        outside = {n for n in imported(tree(path)) if n.startswith("batchrun") and not n.startswith("batchrun.sim")}
        assert outside == set(), path.name
