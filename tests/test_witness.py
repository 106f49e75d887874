"""A witness fetches the custody log's tree heads over HTTP from the running service, checks each
extends the last it countersigned, countersigns it and keeps its own record; it refuses a log whose
history was rewritten, and a service whose key is not the one it was given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chain_of_custody.signed_tree_head import TreeHead
from chain_of_custody.witness import RECORD_FILE, WitnessRefused, last_cosigned, witness
from tests.test_export_api import Server, server  # noqa: F401 - the live-server fixture


def _append(services: Any, n: int) -> None:
    for _ in range(n):
        with services.db.session() as session:
            services.ledger.append(session, "viewed", "user:test", details={"n": 1})


def test_witness_countersigns_a_growing_log_and_refuses_a_rewritten_one(
    server: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    s: Any = server.services
    state = tmp_path / "police-witness"
    token, fp = server.tokens["audit"], s.key.fingerprint
    _append(s, 3)
    first = witness(server.url, token, fp, state)
    assert first.previous_size is None and first.head.signed_by(s.key.public)
    _append(s, 5)
    second = witness(server.url, token, fp, state)
    assert second.previous_size == first.head.tree_size < second.head.tree_size
    records = [json.loads(line) for line in (state / RECORD_FILE).read_text().splitlines()]
    assert [r["tree_head"]["tree_size"] for r in records] == [first.head.tree_size, second.head.tree_size]

    # The same size with another root, or a history the new head does not extend, is refused and
    # not recorded: here the witness's record says it countersigned a root the log never had.
    forged = last_cosigned(state)
    assert forged is not None
    fake = TreeHead(forged.tree_size, "ab" * 32, forged.timestamp, forged.key_id, forged.signature)
    with open(state / RECORD_FILE, "a") as f:
        f.write(json.dumps({"tree_head": fake.to_json()}) + "\n")
    _append(s, 1)
    with pytest.raises(WitnessRefused, match="does not extend"):
        witness(server.url, token, fp, state)
    assert len((state / RECORD_FILE).read_text().splitlines()) == 3

    # A key other than the one the witness was given, or no auditor's token, is refused too.
    with pytest.raises(WitnessRefused, match="fingerprint"):
        witness(server.url, token, "ab" * 32, tmp_path / "other")
    with pytest.raises(WitnessRefused, match="did not answer"):
        witness(server.url, server.tokens["inv"], fp, tmp_path / "other")


def test_witness_command(server: Server, tmp_path: Path) -> None:  # noqa: F811
    s: Any = server.services
    _append(s, 2)
    cmd = [
        str(Path(sys.executable).parent / "evidence"),
        "witness",
        server.url,
        "--key-fingerprint",
        s.key.fingerprint,
        "--state",
        str(tmp_path / "w"),
        "--token",
        server.tokens["audit"],
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "COUNTERSIGNED" in r.stdout, r.stdout + r.stderr
    _append(s, 2)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "consistent with 2" in " ".join(r.stdout.split()), r.stdout + r.stderr
