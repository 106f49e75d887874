"""Retention classes against the real object store, with a controllable clock for the sweeper.

Objects get short real locks (seconds) so that storage's own refusal and later permission can be
observed; the sweeper's clock is moved to day 30, 31 and beyond independently of real time.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, update
from typer.testing import CliRunner

from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import verify_service
from incidents.models import IncidentLink, LegalHold
from incidents.retention import RetentionRules, retention_loop, set_legal_hold, sweep
from incidents.service import IncidentDraft, Retention, create_incident, link_evidence, update_incident
from storage.objects import ObjectLocked, StorageError
from tests.conftest import make_settings, wait_for
from tests.test_incidents_kit import actions, login, store_item, user

DAY = timedelta(days=1)


@pytest.fixture
def svc(tmp_path, database_url, seaweed):  # type: ignore[no-untyped-def]
    """Services with the production footage class (31 days) and 90 days after an incident closes."""
    from ingest.services import build_services

    s = build_services(
        make_settings(tmp_path, database_url, seaweed, retention_days=31, incident_evidence_retention_days=90)
    )
    yield s
    s.db.dispose()


def _rules(s) -> RetentionRules:  # type: ignore[no-untyped-def]
    return RetentionRules.from_settings(s.settings)


def _status(s, item_id: str) -> str:  # type: ignore[no-untyped-def]
    with s.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None
        return item.status


def _incident(s, **kw):  # type: ignore[no-untyped-def]
    draft = dict(category="physical_assault", occurred_at=datetime.now(UTC), site="NORTH")
    draft.update(kw)
    with s.db.session() as session:
        return create_incident(session, IncidentDraft(**draft), "user:m", ledger=s.ledger)  # type: ignore[arg-type]


def test_unlinked_goes_at_day_31_linked_and_held_stay(svc) -> None:  # type: ignore[no-untyped-def]
    s, rules = svc, _rules(svc)
    t0 = datetime.now(UTC)
    short = timedelta(seconds=4)
    unlinked = store_item(s, wearer="S-1", start=t0, stop=t0, lock=short)
    linked = store_item(s, wearer="S-1", start=t0, stop=t0, lock=short)
    redacted = store_item(s, kind="redacted_clip", derived_from=linked.id, lock=short)
    held = store_item(s, wearer="S-2", start=t0, stop=t0, lock=short)
    long_locked = store_item(s, wearer="S-3", start=t0, stop=t0, lock=DAY)
    # Storage itself refuses to delete before the lock ends.
    with pytest.raises(ObjectLocked):
        s.store.delete_version(unlinked.object_key, unlinked.version_id)

    incident = _incident(s)
    with s.db.session() as session:
        link_evidence(
            session,
            s.ledger,
            incident.id,
            linked.id,
            "user:m",
            "shows it",
            retention=Retention(s.store, rules),
        )
        set_legal_hold(
            session, s.ledger, s.store, rules, "evidence", held.id, True, "police request", "user:m", t0
        )
    assert s.store.info(held.object_key, held.version_id).legal_hold
    assert actions(s, held.id)[-1] == "legal_hold"
    # The redacted copy follows its original's class: its lock was extended too.
    assert actions(s, redacted.id)[-1] == "retention_changed"

    day30 = sweep(s.db, s.ledger, s.store, rules, lambda: t0 + 30 * DAY)
    assert day30.deleted == [] and day30.refused == {}

    # Day 31: the database says the footage has expired. The day-long lock is still in force, so storage
    # refuses and the item is left exactly as it was.
    day31 = t0 + 31 * DAY + timedelta(seconds=1)
    first = sweep(s.db, s.ledger, s.store, rules, lambda: day31)
    assert "locked" in first.refused[long_locked.id]
    assert _status(s, long_locked.id) == "stored" and "deleted" not in actions(s, long_locked.id)

    # Once the short lock has passed in real time, the sweeper deletes the unlinked clip.
    wait_for(
        lambda: (
            unlinked.id in sweep(s.db, s.ledger, s.store, rules, lambda: day31).deleted
            or _status(s, unlinked.id) == "deleted"
        ),
        timeout=30,
        interval=0.5,
        what="storage to permit deleting the expired clip",
    )
    assert _status(s, unlinked.id) == "deleted"
    with pytest.raises(StorageError):
        s.store.info(unlinked.object_key, unlinked.version_id)
    with s.db.session() as session:
        tomb = [e for e in s.ledger.item_entries(session, unlinked.id) if e.body.action == "deleted"]
    assert (
        len(tomb) == 1
        and unlinked.sha256 in tomb[0].body.details
        and '"class":"unlinked"' in tomb[0].body.details
    )

    # Linked, derived-from-linked and held evidence stay, even years later; storage still has them.
    later = sweep(s.db, s.ledger, s.store, rules, lambda: t0 + 3650 * DAY)
    for item in (linked, redacted, held):
        assert item.id not in later.deleted and _status(s, item.id) == "stored"
        assert s.store.sha256_of(item.object_key, item.version_id)[0] == item.sha256
    with pytest.raises(ObjectLocked):
        s.store.delete_version(held.object_key, held.version_id)  # the legal hold, not the lock, refuses

    # The tombstone and everything else verify.
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    assert report.ok, report.problems

    # Released from hold, the held clip goes at the next sweep.
    with s.db.session() as session:
        set_legal_hold(
            session, s.ledger, s.store, rules, "evidence", held.id, False, "case dropped", "user:m", t0
        )
    assert not s.store.info(held.object_key, held.version_id).legal_hold
    wait_for(
        lambda: held.id in sweep(s.db, s.ledger, s.store, rules, lambda: day31).deleted,
        timeout=30,
        interval=0.5,
        what="the released clip to be swept once its short lock passed",
    )
    assert actions(s, held.id)[-3:] == ["legal_hold", "legal_hold", "deleted"]


def test_a_hold_deleted_in_the_database_releases_nothing(svc) -> None:  # type: ignore[no-untyped-def]
    """The sweeper acts on hold and link rows; before releasing or deleting it asks the ledger."""
    s, rules = svc, _rules(svc)
    t0 = datetime.now(UTC)
    short = timedelta(seconds=4)
    held = store_item(s, wearer="S-1", start=t0, stop=t0, lock=short)
    via_incident = store_item(s, wearer="S-1", start=t0, stop=t0, lock=short)
    incident = _incident(s)
    with s.db.session() as session:
        set_legal_hold(session, s.ledger, s.store, rules, "evidence", held.id, True, "police", "user:m", t0)
        link_evidence(session, s.ledger, incident.id, via_incident.id, "user:m", "shows it")
        set_legal_hold(
            session, s.ledger, s.store, rules, "incident", incident.id, True, "court", "user:m", t0
        )
    with s.db.session() as session:  # the hold on one deleted, the other's link deleted
        session.execute(delete(LegalHold).where(LegalHold.target_kind == "evidence"))
        session.execute(delete(IncidentLink))
    day31 = t0 + 31 * DAY + timedelta(seconds=1)
    report = sweep(s.db, s.ledger, s.store, rules, lambda: day31)
    assert "no active legal hold row" in report.refused[held.id], report
    # The link's custody entry still links the other to its incident, whose hold holds it: kept held.
    assert via_incident.id not in report.refused and via_incident.id not in report.deleted, report
    for item in (held, via_incident):
        assert s.store.info(item.object_key, item.version_id).legal_hold, item.id
    # Its row's hold flag cleared as well: the expiry pass asks the ledger before deleting.
    with s.db.session() as session:
        session.execute(update(EvidenceItem).values(legal_hold=False))
    report = sweep(s.db, s.ledger, s.store, rules, lambda: t0 + 3650 * DAY)  # past every lock it got
    assert report.deleted == [] and set(report.refused) == {held.id}, report
    assert s.store.info(via_incident.object_key, via_incident.version_id).legal_hold
    for item in (held, via_incident):
        assert _status(s, item.id) == "stored" and "deleted" not in actions(s, item.id)


def test_closed_incident_keeps_evidence_for_the_period_after_closure(svc) -> None:  # type: ignore[no-untyped-def]
    s, rules = svc, _rules(svc)
    t0 = datetime.now(UTC)
    item = store_item(s, wearer="S-1", start=t0 - 40 * DAY, stop=t0 - 40 * DAY, lock=timedelta(seconds=2))
    incident = _incident(s)
    r = Retention(s.store, rules)
    with s.db.session() as session:
        link_evidence(session, s.ledger, incident.id, item.id, "user:m", "relevant", retention=r)
    closed = t0 + 10 * DAY
    with s.db.session() as session:
        from incidents.models import Incident

        update_incident(
            session,
            s.ledger,
            session.get(Incident, incident.id),  # type: ignore[arg-type]
            {"status": "closed", "outcome": "no further action"},
            "user:m",
            retention=r,
            now=closed,
        )
    lock = s.store.info(item.object_key, item.version_id).retain_until
    assert lock is not None and lock >= closed + 90 * DAY
    assert sweep(s.db, s.ledger, s.store, rules, lambda: closed + 89 * DAY).refused == {}
    assert _status(s, item.id) == "stored"
    # After the period the class has run out, and only storage's lock (90 real days away) stands in the way.
    after = sweep(s.db, s.ledger, s.store, rules, lambda: closed + 91 * DAY)
    assert item.id in after.refused and _status(s, item.id) == "stored"


def test_incident_hold_covers_linked_evidence(svc) -> None:  # type: ignore[no-untyped-def]
    s, rules = svc, _rules(svc)
    a = store_item(s, wearer="S-1")
    incident = _incident(s)
    with s.db.session() as session:
        link_evidence(
            session, s.ledger, incident.id, a.id, "user:m", "relevant", retention=Retention(s.store, rules)
        )
        set_legal_hold(
            session,
            s.ledger,
            s.store,
            rules,
            "incident",
            incident.id,
            True,
            "tribunal",
            "user:m",
            datetime.now(UTC),
        )
    assert s.store.info(a.object_key, a.version_id).legal_hold
    # Evidence linked after the hold is held too (applied by the link itself).
    b = store_item(s, wearer="S-1")
    with s.db.session() as session:
        link_evidence(
            session, s.ledger, incident.id, b.id, "user:m", "also", retention=Retention(s.store, rules)
        )
    assert s.store.info(b.object_key, b.version_id).legal_hold
    with s.db.session() as session:
        set_legal_hold(
            session,
            s.ledger,
            s.store,
            rules,
            "incident",
            incident.id,
            False,
            "over",
            "user:m",
            datetime.now(UTC),
        )
    assert not s.store.info(a.object_key, a.version_id).legal_hold
    assert not s.store.info(b.object_key, b.version_id).legal_hold


def test_deleting_by_hand_needs_admin_and_is_recorded(live) -> None:  # type: ignore[no-untyped-def]
    s = live.services
    user(s, "manager", "security_manager", "NORTH")
    mgr = login(live.url, "manager")
    from tests.test_incidents_kit import staff

    staff(s, "S-1", site="NORTH")
    locked = store_item(s, wearer="S-1", lock=DAY)
    short = store_item(s, wearer="S-1", lock=timedelta(seconds=2))
    linked = store_item(s, wearer="S-1", lock=timedelta(seconds=2))
    incident = _incident(s)
    with s.db.session() as session:
        link_evidence(session, s.ledger, incident.id, linked.id, "user:m", "relevant")

    url = f"{live.url}/api/v1/evidence"
    r = httpx.delete(f"{url}/{short.id}", params={"reason": "recorded by mistake"}, headers=mgr)
    assert r.status_code == 403
    r = httpx.delete(f"{url}/{locked.id}", params={"reason": "recorded by mistake"}, headers=live.admin())
    assert r.status_code == 409 and r.json()["detail"]["reason"] == "storage_locked"
    r = httpx.delete(f"{url}/{linked.id}", params={"reason": "recorded by mistake"}, headers=live.admin())
    assert r.status_code == 409 and r.json()["detail"]["reason"] == "linked"
    assert _status(s, locked.id) == "stored" and _status(s, linked.id) == "stored"

    def attempt() -> bool:
        r = httpx.delete(f"{url}/{short.id}", params={"reason": "recorded by mistake"}, headers=live.admin())
        assert r.status_code in (204, 409), r.text
        return r.status_code == 204

    wait_for(attempt, timeout=30, interval=0.5, what="storage to permit deleting by hand")
    with s.db.session() as session:
        tomb = [e for e in s.ledger.item_entries(session, short.id) if e.body.action == "deleted"][0]
    assert tomb.body.actor == "user:admin" and "recorded by mistake" in tomb.body.details
    r = httpx.get(f"{url}/{short.id}/content", headers=live.admin())
    assert r.status_code == 410
    r = httpx.get(f"{url}/{short.id}/retention", headers=live.admin())
    assert r.status_code == 200 and r.json()["status"] == "deleted"


def _arrived(s, item: EvidenceItem, when: datetime) -> EvidenceItem:  # type: ignore[no-untyped-def]
    """Backdate an item's arrival (retention counts from capture only when capture is not before arrival
    by more than the footage class: an old capture alone no longer makes footage due)."""
    with s.db.session() as session:
        row = session.get(EvidenceItem, item.id)
        assert row is not None
        row.created_at = when
    return item


def test_sweep_command_and_loop(tmp_path, seaweed, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ingest.cli import app
    from ingest.services import build_services
    from ingest.settings import get_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'evidence.db'}", seaweed, retention_days=31)
    s = build_services(settings)
    try:
        old = datetime.now(UTC) - 40 * DAY
        by_cli = _arrived(s, store_item(s, wearer="S-1", start=old, stop=old, lock=timedelta(seconds=1)), old)
        for name in ("data_dir", "database_url", "s3_endpoint", "s3_access_key", "bucket", "staging_bucket"):
            monkeypatch.setenv(f"EVIDENCE_{name.upper()}", str(getattr(settings, name)))
        monkeypatch.setenv("EVIDENCE_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
        get_settings.cache_clear()
        runner = CliRunner()

        def swept() -> bool:
            result = runner.invoke(app, ["sweep", "--json"])
            assert result.exit_code == 0, result.output
            return (
                by_cli.id in result.output
                and '"deleted": [' in result.output
                and _status(s, by_cli.id) == "deleted"
            )

        wait_for(swept, timeout=30, interval=0.5, what="the sweep command to delete the expired clip")
        # The loop the application starts does the same, on its own schedule.
        by_loop = _arrived(
            s, store_item(s, wearer="S-1", start=old, stop=old, lock=timedelta(seconds=1)), old
        )

        async def run() -> None:
            task = asyncio.create_task(retention_loop(s.db, s.ledger, s.store, _rules(s), 0.2))
            try:
                await asyncio.to_thread(
                    wait_for, lambda: _status(s, by_loop.id) == "deleted", 30, 0.2, "the retention loop"
                )
            finally:
                task.cancel()

        asyncio.run(run())
        assert actions(s, by_loop.id)[-1] == "deleted"
    finally:
        get_settings.cache_clear()
        s.db.dispose()


def test_links_survive_a_storage_outage_and_the_sweeper_catches_up(svc) -> None:  # type: ignore[no-untyped-def]
    from storage.objects import ObjectStore
    from tests.conftest import free_port

    s, rules = svc, _rules(svc)
    item = store_item(s, wearer="S-1", lock=DAY)
    dead = ObjectStore(
        f"127.0.0.1:{free_port()}", "x", "y", bucket=s.store.bucket, staging_bucket="z", timeout_seconds=1
    )
    incident = _incident(s)
    with s.db.session() as session:
        link_evidence(
            session, s.ledger, incident.id, item.id, "user:m", "relevant", retention=Retention(dead, rules)
        )
    # The link stands (and already protects the item from deletion); the lock waits for the sweeper.
    assert actions(s, item.id)[-1] == "linked"
    assert s.store.info(item.object_key, item.version_id).retain_until < datetime.now(UTC) + 2 * DAY  # type: ignore[operator]
    report = sweep(s.db, s.ledger, s.store, rules)
    assert report.renewed == {item.id: ["retention_changed"]}
    lock = s.store.info(item.object_key, item.version_id).retain_until
    assert lock is not None and lock > datetime.now(UTC) + 89 * DAY
    assert (
        sweep(s.db, s.ledger, s.store, rules).renewed == {}
    )  # nothing more to do until half the period is used


def test_a_capture_time_claimed_in_the_future_counts_from_arrival(svc) -> None:  # type: ignore[no-untyped-def]
    """A device's word about when it recorded cannot keep footage for ever, nor have it deleted early."""
    s, rules = svc, _rules(svc)
    t0 = datetime.now(UTC)
    short = timedelta(seconds=2)
    future = store_item(s, wearer="S-1", start=t0 + 3650 * DAY, stop=t0 + 3650 * DAY, lock=short)
    ancient = store_item(s, wearer="S-1", start=t0 - 400 * DAY, stop=t0 - 400 * DAY, lock=short)
    # Day 30 after arrival: the ancient claim does not make the footage due (it counts from arrival).
    assert sweep(s.db, s.ledger, s.store, rules, lambda: t0 + 30 * DAY).deleted == []
    assert _status(s, ancient.id) == "stored"
    day31 = t0 + 31 * DAY + timedelta(seconds=1)
    wait_for(
        lambda: (
            {future.id, ancient.id}
            <= set(sweep(s.db, s.ledger, s.store, rules, lambda: day31).deleted)
            | {i for i in (future.id, ancient.id) if _status(s, i) == "deleted"}
        ),
        timeout=30,
        interval=0.5,
        what="both clips to be deleted 31 days after arrival",
    )
