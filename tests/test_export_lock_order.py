"""An export extends its items' object locks in storage before its recording transaction, not in it.

The recording transaction (the package's item, its ``exported`` entries, each item's
``retention_changed``) once made one storage call per packaged item while it held SQLite's write
lock and, on both databases, the custody ledger's head: every other write of the service waited for
the storage (5.2 s seen in CI). The locks are now set first and recorded after; COMPLIANCE retention
only grows, so a failure or a crash between leaves storage stricter than the record, never looser,
and nothing recorded. Real SeaweedFS, both databases.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from chain_of_custody.entries import CustodyAction
from chain_of_custody.evidence import Provenance
from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents.export.build import ExportResult, build_package
from incidents.export.plan import ExportRequest, gather_items
from storage.objects import StorageUnavailable
from tests.test_export_package import INCIDENT, put_evidence

WAIT_S = 30.0
OTHER_WRITE_WITHIN_S = (
    5.0  # a custody append takes milliseconds; one queued behind the lock call waits for it
)


def _alarm(s: Any, n: int) -> EvidenceItem:
    """An item a package includes without an originals permission; locked one day (less than the package)."""
    body = json.dumps({"alarm": "sos", "n": n}).encode()
    return put_evidence(s, body, Provenance(kind="alarm", actor="t", content_type="application/json"))


def _request(retain_until: datetime) -> ExportRequest:
    return ExportRequest(
        export_id=str(uuid.uuid4()), incident=INCIDENT, actor="user:inv", retain_until=retain_until
    )


def _build(s: Any, item_ids: list[str], request: ExportRequest) -> ExportResult:
    with s.db.session() as session:
        items = gather_items(session, item_ids)
    return build_package(s.db, s.store, s.ledger, s.key, items, request)


def _recorded(s: Any, item_ids: list[str], action: CustodyAction) -> list[str]:
    with s.db.reading() as session:
        return list(
            session.scalars(
                select(CustodyEntry.item_id).where(
                    CustodyEntry.item_id.in_(item_ids), CustodyEntry.action == action
                )
            )
        )


def test_another_write_completes_while_a_packaged_items_lock_is_being_set(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = services
    packaged = [_alarm(s, n) for n in range(2)]
    other = _alarm(s, 99)
    request = _request(datetime.now(UTC) + timedelta(days=2))
    in_call, let_go = threading.Event(), threading.Event()
    set_retention = s.store.set_retention

    def slow_set_retention(key: str, version_id: str | None, until: datetime) -> None:
        in_call.set()  # a slow store: the call does not return until the test lets it
        let_go.wait(60)
        set_retention(key, version_id, until)

    monkeypatch.setattr(s.store, "set_retention", slow_set_retention)
    built: list[ExportResult] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            built.append(_build(s, [i.id for i in packaged], request))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    def other_write() -> None:  # any write of the service appends custody: here, a check of another item
        with s.db.session() as session:
            s.ledger.append(session, CustodyAction.VERIFIED, "test", item_id=other.id, details={"ok": True})
        wrote.set()

    builder = threading.Thread(target=build, name="export-build")
    builder.start()
    wrote = threading.Event()
    try:
        assert in_call.wait(WAIT_S), f"the build never set a lock: {failed}"
        writer = threading.Thread(target=other_write, name="other-write")
        writer.start()
        assert wrote.wait(OTHER_WRITE_WITHIN_S), (
            f"another write waited more than {OTHER_WRITE_WITHIN_S} s for a storage call of the export"
        )
    finally:
        let_go.set()
        builder.join(WAIT_S)
    writer.join(WAIT_S)
    assert not failed, failed
    # The package is recorded as before: both items locked as long as it, in storage and on record.
    (result,) = built
    assert sorted(_recorded(s, [i.id for i in packaged], CustodyAction.RETENTION_CHANGED)) == sorted(
        i.id for i in packaged
    )
    with s.db.reading() as session:
        for item in packaged:
            row = session.get(EvidenceItem, item.id)
            assert (
                row is not None and row.retain_until is not None and row.retain_until >= request.retain_until
            )
            assert s.store.info(item.object_key, item.version_id).retain_until >= row.retain_until
        assert session.get(EvidenceItem, result.export_id) is not None


def test_a_failed_lock_records_nothing_and_the_next_build_finds_storage_as_it_was_left(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second item's lock fails: no package item, no ``exported`` or ``retention_changed``
    entry, no record's retention moved; the first item's lock, already extended in storage, is
    stricter than its record, never looser. A build of the same package then sets (or finds) both
    locks and records them as storage holds them."""
    s = services
    packaged = [_alarm(s, n) for n in range(2)]
    ids = [i.id for i in packaged]
    with s.db.reading() as session:
        before = {i: session.get(EvidenceItem, i).retain_until for i in ids}  # type: ignore[union-attr]
    request = _request(datetime.now(UTC) + timedelta(days=2))
    set_retention = s.store.set_retention
    calls: list[str] = []

    def failing_set_retention(key: str, version_id: str | None, until: datetime) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise StorageUnavailable("the store went away")
        set_retention(key, version_id, until)

    monkeypatch.setattr(s.store, "set_retention", failing_set_retention)
    with pytest.raises(StorageUnavailable):
        _build(s, ids, request)
    assert len(calls) == 2
    with s.db.reading() as session:
        assert session.get(EvidenceItem, request.export_id) is None
        assert {i: session.get(EvidenceItem, i).retain_until for i in ids} == before  # type: ignore[union-attr]
    assert _recorded(s, ids + [request.export_id], CustodyAction.EXPORTED) == []
    assert _recorded(s, ids, CustodyAction.RETENTION_CHANGED) == []
    for item in packaged:  # storage never looser than the record: the first one stricter already
        held = s.store.info(item.object_key, item.version_id).retain_until
        assert held is not None and (before[item.id] is None or held >= before[item.id])
    first = next(i for i in packaged if i.object_key == calls[0])  # its lock was set before the failure
    assert s.store.info(first.object_key, first.version_id).retain_until >= request.retain_until
    monkeypatch.setattr(s.store, "set_retention", set_retention)
    again = _build(s, ids, _request(request.retain_until))
    with s.db.reading() as session:
        assert session.get(EvidenceItem, again.export_id) is not None
        for item in packaged:
            row = session.get(EvidenceItem, item.id)
            assert (
                row is not None and row.retain_until is not None and row.retain_until >= request.retain_until
            )
            assert s.store.info(item.object_key, item.version_id).retain_until == row.retain_until
    assert sorted(_recorded(s, ids, CustodyAction.RETENTION_CHANGED)) == sorted(ids)
