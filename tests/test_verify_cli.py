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
