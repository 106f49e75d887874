"""``evidence verify`` exits 0 on an intact service and 1 naming the problem after tampering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update

from chain_of_custody.models import EvidenceItem
from tests.conftest import settings_env
from tests.test_custody_tamper import _store_item


def _verify(settings, cwd: Path) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    """The installed command, run away from the source tree: every package it needs is installed."""
    r = subprocess.run(
        [str(Path(sys.executable).parent / "evidence"), "verify", "--json"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert r.stdout, r.stderr[-2000:]
    return r.returncode, json.loads(r.stdout)


def test_verify_command_reports_and_exits(sqlite_services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = sqlite_services
    item = _store_item(s, b"clip bytes" * 100, "cli")
    code, report = _verify(s.settings, tmp_path)
    assert code == 0 and report["ok"] and report["entries_checked"] == 3
    with s.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == item.id).values(size=1))
    code, report = _verify(s.settings, tmp_path)
    assert code == 1 and not report["ok"]
    assert report["problems"] == [
        {
            "kind": "item_row_altered",
            "where": f"evidence item {item.id}",
            "detail": "size is 1 in the database but 1000 in the custody record",
        }
    ]


def test_from_a_directory_without_the_services_data_the_command_says_what_it_needs(tmp_path: Path) -> None:
    """Commands that work on the service's data (verify, enrolment, the sweep) say where they looked
    and what to set, and leave no fresh ``./var`` behind; creating a user says it starts new data."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EVIDENCE_")}
    command = str(Path(sys.executable).parent / "evidence")
    for args in (["verify", "--skip-objects"], ["device", "staff", "S-1", "Alex Morgan"], ["sweep"]):
        r = subprocess.run(
            [command, *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        assert r.returncode == 2, (args, r.stdout, r.stderr[-2000:])
        said = " ".join(r.stderr.split())
        assert f"no service data at {tmp_path / 'var'}" in said and "EVIDENCE_DATA_DIR" in said, (args, said)
        assert not (tmp_path / "var").exists(), args
    r = subprocess.run(
        [command, "user", "add", "first", "--role", "admin"],
        env={**env, "EVIDENCE_NEW_USER_PASSWORD": "a long enough password"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "starting a new service's data there" in " ".join(r.stderr.split())
