"""Tampering with the ledger, an item row or a stored object is named precisely by verification."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update

from chain_of_custody.checkpoints import write_checkpoint
from chain_of_custody.entries import EntryBody
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry, EvidenceItem, LedgerHead
from chain_of_custody.verify import verify_service
from storage.db import Database
from storage.embedded import EmbeddedSeaweed
from tests.clipkit import sha256
from tests.test_altered_evidence import flip_on_disk


def _store_item(services, data: bytes, name: str) -> EvidenceItem:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    stored = services.store.put_bytes(
        f"test/{name}",
        data,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="application/octet-stream",
    )
    with services.db.session() as session:
        return record_evidence(
            session,
            services.ledger,
            stored,
            Provenance(kind="clip", actor="test"),
            received={"by": "test"},
            verified={"ok": True},
        )


def _kinds(services) -> set[str]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    return {p.kind for p in report.problems}


def test_clean_ledger_verifies(services) -> None:  # type: ignore[no-untyped-def]
    _store_item(services, b"a" * 1000, "a")
    assert _kinds(services) == set()


def test_edited_custody_row_is_named(services) -> None:  # type: ignore[no-untyped-def]
    item = _store_item(services, b"a" * 1000, "a")
    with services.db.session() as session:
        session.execute(
            update(CustodyEntry)
            .where(CustodyEntry.item_id == item.id, CustodyEntry.action == "received")
            .values(details=json.dumps({"by": "someone else"}))
        )
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    assert [p.kind for p in report.problems] == ["entry_altered"]
    assert "#1" in report.problems[0].where or "custody entry #" in report.problems[0].where


def test_deleted_entry_is_named(services) -> None:  # type: ignore[no-untyped-def]
    item = _store_item(services, b"b" * 1000, "b")
    with services.db.session() as session:
        seq = session.scalar(
            select(CustodyEntry.seq).where(CustodyEntry.item_id == item.id, CustodyEntry.action == "received")
        )
        session.execute(delete(CustodyEntry).where(CustodyEntry.seq == seq))
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    kinds = {p.kind for p in report.problems}
    assert {"entry_missing", "chain_broken", "item_chain_broken"} <= kinds
    assert any(f"#{seq}" in p.where for p in report.problems if p.kind == "entry_missing")


def test_truncated_tail_is_caught_by_checkpoint(services) -> None:  # type: ignore[no-untyped-def]
    _store_item(services, b"c" * 1000, "c")
    with services.db.session() as session:
        cp = write_checkpoint(session, services.store, services.key, retain_days=1)
    assert cp is not None
    # Remove the last entries and rewrite the head row to match, as a careful attacker would.
    with services.db.session() as session:
        session.execute(delete(CustodyEntry).where(CustodyEntry.seq >= cp.seq - 1))
        last = session.scalars(select(CustodyEntry).order_by(CustodyEntry.seq.desc()).limit(1)).first()
        session.execute(update(LedgerHead).values(last_seq=last.seq, last_hash=last.entry_hash))
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    # One cut, named once: the checkpoint and the newest tree head both say so, in one finding.
    # (The cut also took the item's 'stored' entry, which is named for the item.)
    kinds = [p.kind for p in report.problems]
    assert kinds.count("ledger_truncated") == 1 and set(kinds) <= {"ledger_truncated", "item_unrecorded"}, (
        kinds
    )
    assert "tree head" in report.problems[0].detail


@pytest.mark.parametrize("column", ["sha256", "blake3"])
def test_edited_item_row_is_named(services, column: str) -> None:  # type: ignore[no-untyped-def]
    """Either digest edited in the row (the export checks media against the row's BLAKE3)."""
    item = _store_item(services, b"d" * 1000, "d")
    with services.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == item.id).values({column: "0" * 64}))
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    assert [p.kind for p in report.problems] == ["item_row_altered"]
    assert report.problems[0].detail.startswith(f"{column} is '{'0' * 64}' in the database")


def test_swapped_object_version_is_named(services) -> None:  # type: ignore[no-untyped-def]
    """Someone writes a new version over the key and points the row (and only the row) at it."""
    from datetime import UTC, datetime, timedelta

    item = _store_item(services, b"e" * 1000, "e")
    forged = services.store.put_bytes(
        item.object_key,
        b"f" * 1000,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="application/octet-stream",
    )
    with services.db.session() as session:
        session.execute(
            update(EvidenceItem)
            .where(EvidenceItem.id == item.id)
            .values(version_id=forged.version_id, sha256=sha256(b"f" * 1000))
        )
    kinds = _kinds(services)
    assert kinds == {"item_row_altered"}
    # The original version is still there, untouched, under lock.
    assert services.store.sha256_of(item.object_key, item.version_id)[0] == sha256(b"e" * 1000)


def test_blake3_that_disagrees_with_the_object_is_named(services) -> None:  # type: ignore[no-untyped-def]
    """The SHA-256 matches but the recorded BLAKE3 (which exports re-check with) does not: named, so
    that the refused exports it would cause are explained."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    stored = services.store.put_bytes(
        "test/g", b"g" * 1000, retain_until=datetime.now(UTC) + timedelta(days=1), content_type="audio/ogg"
    )
    with services.db.session() as session:
        item = record_evidence(
            session,
            services.ledger,
            replace(stored, blake3="3" * 64),
            Provenance(kind="voice_memo", actor="t"),
        )
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    found = [(p.kind, p.where) for p in report.problems]
    assert found == [("digest_mismatch", f"evidence item {item.id}")], found
    assert "BLAKE3 is " + str(stored.blake3) in report.problems[0].detail


@pytest.fixture
def own_seaweed(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A private store: damaging a volume on disk must not break the session's shared store."""
    from tests.conftest import free_base_port

    store = EmbeddedSeaweed(tmp_path / "own-s3", free_base_port(), "512MiB")
    store.start()
    yield store
    store.kill()  # thrown away with tmp_path: no graceful stop (about 2 s)


def test_object_altered_at_rest_is_named(tmp_path: Path, own_seaweed) -> None:  # type: ignore[no-untyped-def]
    """Bytes changed on the storage server's disk, behind S3's back, are caught by re-hashing."""
    from ingest.services import build_services
    from tests.conftest import make_settings

    seaweed = own_seaweed
    services = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", seaweed))
    marker = b"EVIDENCE-AT-REST-" + uuid.uuid4().hex.encode()
    data = marker + os.urandom(300_000)
    item = _store_item(services, data, "at-rest")
    flip_on_disk(seaweed, marker)
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    hits = [p for p in report.problems if item.id in p.where]
    assert hits and hits[0].kind in {"object_altered", "object_unreadable"}, report.problems
    services.db.dispose()


def test_entry_signed_by_another_key_is_named(services) -> None:  # type: ignore[no-untyped-def]
    item = _store_item(services, b"i" * 1000, "i")
    rogue = ServiceKey(Ed25519PrivateKey.generate())
    with services.db.session() as session:
        row = session.scalars(
            select(CustodyEntry).where(CustodyEntry.item_id == item.id, CustodyEntry.action == "verified")
        ).one()
        body = EntryBody(
            row.seq,
            row.id,
            row.at,
            row.action,
            row.actor,
            row.item_id,
            row.item_seq,
            json.dumps({"ok": True, "note": "rewritten"}, separators=(",", ":"), sort_keys=True),
            row.prev_hash,
            row.item_prev_hash,
            row.key_id,
        )
        row.details, row.entry_hash, row.signature = body.details, body.digest(), rogue.sign(body.canonical())
    kinds = _kinds(services)
    assert "bad_signature" in kinds


@pytest.mark.parametrize("seq", [0, -7])
def test_entry_planted_below_the_chain_is_named(services, seq: int) -> None:  # type: ignore[no-untyped-def]
    """A row at seq 0 or below sits before the chain's first entry, where a walk of the chain from #1
    never looks; code that takes "the earliest entry" would. Verification names it, however well it is
    signed (here with the service's own key, as a copy of a genuine entry would be)."""
    item = _store_item(services, b"j" * 1000, "j")
    with services.db.session() as session:
        row = session.scalars(
            select(CustodyEntry).where(CustodyEntry.item_id == item.id, CustodyEntry.action == "received")
        ).one()
        body = EntryBody(
            seq,
            str(uuid.uuid4()),
            "2020-01-01T00:00:00Z",
            row.action,
            row.actor,
            None,
            None,
            row.details,
            "0" * 64,
            None,
            row.key_id,
        )
        planted_row = CustodyEntry(**{k: getattr(body, k) for k in body.__dataclass_fields__})
        planted_row.entry_hash, planted_row.signature = body.digest(), services.key.sign(body.canonical())
        session.add(planted_row)
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    planted = [p for p in report.problems if p.kind == "entry_outside_chain"]
    assert len(planted) == 1, [str(p) for p in report.problems]
    assert f"#{seq}" in planted[0].where


@pytest.mark.postgres
def test_concurrent_appends_make_one_chain(pg_url: str, tmp_path: Path) -> None:
    """Eight threads in separate connections append at once; the chain has no gaps or forks."""
    from chain_of_custody.ledger import Ledger
    from ingest.migrations_runner import upgrade_database

    upgrade_database(pg_url)
    key = ServiceKey.load_or_create(tmp_path / "k.pem")
    ledger = Ledger(key)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        db = Database(pg_url)
        try:
            for i in range(40):
                with db.session() as session:
                    ledger.append(session, "viewed", f"user:{n}", item_id=f"item-{i % 5}", details={"i": i})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    from chain_of_custody.entries import ChainReport, check_global_chain

    db = Database(pg_url)
    with db.session() as session:
        report = ChainReport()
        check_global_chain(Ledger.all_entries(session), ledger.verifier, report)
        per_item = {i: Ledger.item_entries(session, f"item-{i}") for i in range(5)}
    db.dispose()
    assert report.ok and report.entries_checked == 320
    from chain_of_custody.entries import check_item_chain

    for i, chain in per_item.items():
        assert len(chain) == 64
        assert check_item_chain(f"item-{i}", chain, ledger.verifier) == []
