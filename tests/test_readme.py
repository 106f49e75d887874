"""The README keeps its promises: the two commands first, CI runs the same test command, settings documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _settings_table() -> str:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.table())


def test_readme_opens_with_run_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block
    assert readme.index("```sh") < readme.index("## ")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_every_setting_is_documented_in_the_readme() -> None:
    assert _settings_table() in (ROOT / "README.md").read_text(), (
        "README configuration table is out of date: paste the output of `python scripts/settings_doc.py`"
    )


# Programs a fresh machine has (Debian's essential set), or the set-up installs with a service.
_BASE_SYSTEM = {"bash", "sh"}
_SERVICE_PACKAGES = {"mosquitto", "mosquitto_passwd", "pg_ctlcluster", "psql"}


def _programs_called(paths: list[Path]) -> set[str]:
    """The programs a ``subprocess`` call runs by name (the first item of a literal argument list)."""
    import ast

    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"):
                continue
            if node.args and isinstance(node.args[0], ast.List) and node.args[0].elts:
                first = node.args[0].elts[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
    return found


def test_every_program_the_tests_call_is_installed_by_the_set_up() -> None:
    """A fresh machine has only Python, make and git: whatever else the tests run by name must be
    installed by ``scripts/ensure-services.sh`` (which ``make test`` runs first)."""
    script = (ROOT / "scripts" / "ensure-services.sh").read_text()
    programs_line = next(line for line in script.splitlines() if line.startswith("PROGRAMS="))
    installed = {pair.split(":")[0] for pair in programs_line.split("=", 1)[1].strip('"').split()}
    sources = [p for p in (ROOT / "tests").rglob("*.py")] + [p for p in (ROOT / "demo").rglob("*.py")]
    called = _programs_called(sources)
    assert called, "no subprocess call found: the scan itself is broken"
    missing = called - installed - _BASE_SYSTEM - _SERVICE_PACKAGES
    assert not missing, f"the tests run {sorted(missing)}, which scripts/ensure-services.sh does not install"
