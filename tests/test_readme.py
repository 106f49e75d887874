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
