"""``evidence verify`` reads a bounded number of signed tree heads however old the log (every commit
writes one and nothing compacts them), on both databases: the newest (a cut tail is checked against
it), the oldest and a random sample, and says so; a rewritten and re-signed history is still named,
and an unsigned object placed above the newest is named without hiding the newest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from chain_of_custody.entries import EntryBody
from chain_of_custody.ledger import to_signed
from chain_of_custody.models import CustodyEntry, LedgerHead
from chain_of_custody.tree_heads import PREFIX
from chain_of_custody.verify import VerifyOptions, verify_service

COMMITS = 40


def _append(services: Any) -> None:
    with services.db.session() as session:
        services.ledger.append(session, "viewed", "user:test", details={"n": 1})


def _counting_reads(services: Any) -> list[str]:
    """Every tree head object the store is asked for from now on (the store's own read path)."""
    reads: list[str] = []
    store = services.store
    original = store.get_bytes

    def get_bytes(key: str, version_id: str | None = None) -> bytes:
        if key.startswith(PREFIX):
            reads.append(key)
        return original(key, version_id)

    store.get_bytes = get_bytes
    return reads


def test_verify_reads_a_bounded_sample_of_tree_heads_and_still_names_a_rewrite(services: Any) -> None:
    for _ in range(COMMITS):
        _append(services)
    stored = len(services.store.list_keys(PREFIX))
    assert stored >= COMMITS
    reads = _counting_reads(services)
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    assert report.ok, [str(p) for p in report.problems]
    sample = VerifyOptions().tree_head_sample
    assert sample is not None and len(reads) <= sample + 2 < stored, (len(reads), stored)
    newest = max(services.store.list_keys(PREFIX))
    assert newest in reads
    assert any(f"of {stored} signed tree heads" in n for n in report.notes), report.notes
    # Everything, when asked for.
    reads.clear()
    with services.db.session() as session:
        whole = verify_service(
            session, services.store, services.key, VerifyOptions(check_objects=False, tree_head_sample=None)
        )
    assert whole.ok and len(reads) == stored and not whole.notes

    # An object that is no signed tree head, named above the newest: named, and the newest still read.
    services.store.put_bytes(
        f"{PREFIX}{10**14:015d}-forged.json",
        json.dumps({"tree_size": 10**14}).encode(),
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="application/json",
    )
    # An insider with the key rewrites an early entry and re-signs the chain after it.
    with services.db.session() as session:
        rows = session.scalars(select(CustodyEntry).order_by(CustodyEntry.seq)).all()
        prev = rows[0].prev_hash
        for i, row in enumerate(rows):
            body = to_signed(row).body
            new = EntryBody(
                **{**body.__dict__, "details": '{"n":2}' if i == 1 else body.details, "prev_hash": prev}
            )
            row.details, row.prev_hash = new.details, prev
            row.entry_hash, row.signature = new.digest(), services.key.sign(new.canonical())
            prev = row.entry_hash
        head = session.get(LedgerHead, 1)
        assert head is not None
        head.last_hash = prev
    reads.clear()
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key, VerifyOptions(check_objects=False))
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["bad_tree_head", "tree_head_mismatch"], [str(p) for p in report.problems]
    assert newest in reads and len(reads) <= sample + 3
