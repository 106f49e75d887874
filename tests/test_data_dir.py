"""A command run from another directory finds the project's data (``ingest.settings.locate_data``).

The zero-config data directory is ``./var``, relative to where the command runs. Run from elsewhere
with no ``var/`` there, ``evidence`` once made a fresh, empty service beside the project's (a new
database over the same embedded store, which then refused its writes as ``ObjectLocked``); it now
takes the project's ``var/``. A ``var/`` where the command runs, or a data directory named in the
environment, is still the one used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import settings as service_settings
from ingest.settings import get_settings


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A project whose ``var/`` holds its data, and another directory the command is run from."""
    project_var = tmp_path / "project" / "var"
    project_var.mkdir(parents=True)
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.setattr(service_settings, "PROJECT_DATA_DIR", project_var)
    monkeypatch.delenv("EVIDENCE_DATA_DIR", raising=False)
    monkeypatch.chdir(here)
    get_settings.cache_clear()
    yield project_var, here
    get_settings.cache_clear()


def test_a_command_run_from_another_directory_uses_the_projects_data(elsewhere: tuple[Path, Path]) -> None:
    project_var, here = elsewhere
    assert get_settings().data_dir == project_var
    assert not (here / "var").exists()


def test_a_var_where_the_command_runs_is_its_own(elsewhere: tuple[Path, Path]) -> None:
    _, here = elsewhere
    (here / "var").mkdir()
    assert get_settings().data_dir == Path("var")


def test_a_data_directory_named_in_the_environment_is_kept(
    elsewhere: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "named"
    monkeypatch.setenv("EVIDENCE_DATA_DIR", str(named))
    assert get_settings().data_dir == named


def test_without_the_projects_data_the_default_stands(
    elsewhere: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_settings, "PROJECT_DATA_DIR", tmp_path / "no-project" / "var")
    assert get_settings().data_dir == Path("var")
