"""Incident records on both databases: reference numbers, links with custody, alarm windows and clips."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chain_of_custody.models import EvidenceItem
from chain_of_custody.verify import verify_service
from incidents.models import Incident, IncidentLink
from incidents.retention import RetentionRules
from incidents.service import (
    IncidentDraft,
    IncidentRefused,
    Retention,
    auto_link_clip,
    create_incident,
    link_evidence,
    open_or_join_incident_for_wearer,
    unlink_evidence,
    update_incident,
)
from tests.test_incidents_kit import actions, staff, store_item

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
JOIN = timedelta(minutes=30)


def _draft(**kw) -> IncidentDraft:  # type: ignore[no-untyped-def]
    values = dict(category="verbal_abuse", occurred_at=T0, site="NORTH", title="shouting at reception")
    values.update(kw)
    return IncidentDraft(**values)  # type: ignore[arg-type]


def _retention(services) -> Retention:  # type: ignore[no-untyped-def]
    return Retention(services.store, RetentionRules.from_settings(services.settings))


def test_references_are_sequential_per_year(services) -> None:  # type: ignore[no-untyped-def]
    refs = []
    with services.db.session() as session:
        for _ in range(3):
            refs.append(create_incident(session, _draft(), "test", now=T0, ledger=services.ledger).reference)
        refs.append(
            create_incident(
                session, _draft(), "test", now=datetime(2027, 1, 1, tzinfo=UTC), ledger=services.ledger
            ).reference
        )
    assert refs == ["INC-2026-000001", "INC-2026-000002", "INC-2026-000003", "INC-2027-000001"]
    with pytest.raises(IncidentRefused), services.db.session() as session:
        create_incident(session, _draft(category="arson"), "test", now=T0, ledger=services.ledger)
    # A refused creation returns nothing to the counter: the next number follows on.
    with services.db.session() as session:
        assert (
            create_incident(session, _draft(), "test", now=T0, ledger=services.ledger).reference
            == "INC-2026-000004"
        )


def test_concurrent_creation_on_postgres_is_gapless(pg_url, tmp_path, seaweed) -> None:  # type: ignore[no-untyped-def]
    from ingest.services import build_services
    from tests.conftest import make_settings

    s = build_services(make_settings(tmp_path, pg_url, seaweed))
    try:
        refs: list[str] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            try:
                barrier.wait(10)
                for _ in range(5):
                    with s.db.session() as session:
                        refs.append(
                            create_incident(session, _draft(), "test", now=T0, ledger=s.ledger).reference
                        )
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(refs) == [f"INC-2026-{n:06d}" for n in range(1, 41)]
    finally:
        s.db.dispose()


def test_link_and_unlink_are_custody_entries_and_extend_the_lock(services) -> None:  # type: ignore[no-untyped-def]
    item = store_item(services, wearer="S-1", start=T0, stop=T0 + timedelta(minutes=1))
    before = services.store.info(item.object_key, item.version_id).retain_until
    with services.db.session() as session:
        incident = create_incident(session, _draft(), "user:alice", ledger=services.ledger)
        link = link_evidence(
            session,
            services.ledger,
            incident.id,
            item.id,
            "user:alice",
            "shows the assault",
            retention=_retention(services),
        )
        again = link_evidence(session, services.ledger, incident.id, item.id, "user:alice", "again")
        assert again.id == link.id  # linking twice is harmless
    assert actions(services, item.id)[-2:] == ["linked", "retention_changed"]
    after = services.store.info(item.object_key, item.version_id).retain_until
    assert before is not None and after is not None
    assert after > datetime.now(UTC) + timedelta(days=services.settings.incident_evidence_retention_days - 1)
    with services.db.session() as session:
        assert session.get(EvidenceItem, item.id).retain_until >= after  # type: ignore[union-attr]
        unlink_evidence(session, services.ledger, incident.id, item.id, "user:alice", "wrong camera")
        links = list(session.scalars(select(IncidentLink).where(IncidentLink.target_id == item.id)))
    assert len(links) == 1 and links[0].unlinked_at is not None and links[0].unlink_reason == "wrong camera"
    assert actions(services, item.id)[-1] == "unlinked"
    with services.db.session() as session:
        trail = [e for e in services.ledger.item_entries(session, item.id) if e.body.action == "linked"]
        report = verify_service(session, services.store, services.key)
    assert report.ok, report.problems
    assert '"incident":"INC-' in trail[0].body.details and "shows the assault" in trail[0].body.details


def test_alarm_opens_then_joins_within_window(services) -> None:  # type: ignore[no-untyped-def]
    staff(services, "S-7", "porter", "NORTH")
    with services.db.session() as session:
        first, opened = open_or_join_incident_for_wearer(
            session, services.ledger, "S-7", T0, "lone_worker_alarm", None, "alarm:1", JOIN
        )
        assert opened and first.site == "NORTH" and first.wearer == "S-7"
        assert (first.window_start, first.window_end) == (T0 - JOIN, T0 + JOIN)
        second, opened2 = open_or_join_incident_for_wearer(
            session,
            services.ledger,
            "S-7",
            T0 + timedelta(minutes=20),
            "lone_worker_alarm",
            "NORTH",
            "alarm:2",
            JOIN,
        )
        assert not opened2 and second.id == first.id
        assert second.window_end == T0 + timedelta(minutes=50)
        third, opened3 = open_or_join_incident_for_wearer(
            session,
            services.ledger,
            "S-7",
            T0 + timedelta(minutes=61),
            "lone_worker_alarm",
            "NORTH",
            "alarm:3",
            JOIN,
        )
        assert opened3 and third.id != first.id
        # Another wearer never joins S-7's incident.
        other, opened4 = open_or_join_incident_for_wearer(
            session, services.ledger, "S-8", T0, "lone_worker_alarm", "SOUTH", "alarm:4", JOIN
        )
        assert opened4 and other.id != first.id and other.site == "SOUTH"
        # A closed incident is not joined.
        update_incident(
            session, services.ledger, third, {"status": "closed", "outcome": "test alarm"}, "user:m"
        )
        fourth, opened5 = open_or_join_incident_for_wearer(
            session,
            services.ledger,
            "S-7",
            T0 + timedelta(minutes=65),
            "lone_worker_alarm",
            "NORTH",
            "alarm:5",
            JOIN,
        )
        assert opened5 and fourth.id != third.id


def test_whichever_arrives_first_clip_and_alarm_meet(services) -> None:  # type: ignore[no-untyped-def]
    r = _retention(services)
    # Clip first: stored before the alarm; the alarm side links it when it opens the incident.
    early = store_item(
        services, wearer="S-9", start=T0 - timedelta(minutes=5), stop=T0 + timedelta(minutes=2)
    )
    unrelated = store_item(
        services, wearer="S-9", start=T0 - timedelta(hours=3), stop=T0 - timedelta(hours=2)
    )
    other_wearer = store_item(services, wearer="S-10", start=T0, stop=T0 + timedelta(minutes=1))
    with services.db.session() as session:
        incident, _ = open_or_join_incident_for_wearer(
            session, services.ledger, "S-9", T0, "lone_worker_alarm", "NORTH", "alarm:x", JOIN, retention=r
        )
        incident_id = incident.id
    # Alarm first: a clip arriving later is linked by the clip hook (run here as the upload path runs it).
    late = store_item(
        services, wearer="S-9", start=T0 + timedelta(minutes=10), stop=T0 + timedelta(minutes=12)
    )
    with services.db.session() as session:
        item = session.get(EvidenceItem, late.id)
        assert item is not None
        links = auto_link_clip(session, services.ledger, item, retention=r)
        assert [link.incident_id for link in links] == [incident_id]
        linked = set(
            session.scalars(
                select(IncidentLink.target_id).where(
                    IncidentLink.incident_id == incident_id, IncidentLink.unlinked_at.is_(None)
                )
            )
        )
    assert linked == {early.id, late.id}
    assert unrelated.id not in linked and other_wearer.id not in linked
    assert "linked" in actions(services, early.id) and "linked" in actions(services, late.id)
    assert "linked" not in actions(services, unrelated.id)


def test_closing_needs_outcome_and_extends_retention_from_closure(services) -> None:  # type: ignore[no-untyped-def]
    item = store_item(services, wearer="S-1", start=T0, stop=T0)
    r = _retention(services)
    with services.db.session() as session:
        incident = create_incident(session, _draft(), "user:m", ledger=services.ledger)
        link_evidence(session, services.ledger, incident.id, item.id, "user:m", "evidence", retention=r)
        with pytest.raises(IncidentRefused) as exc:
            update_incident(session, services.ledger, incident, {"status": "closed"}, "user:m", retention=r)
        assert exc.value.reason == "outcome_required"
    closed_at = datetime.now(UTC) + timedelta(days=400)  # a far-future closure must push the lock further out
    with services.db.session() as session:
        incident = session.get(Incident, incident.id)
        update_incident(
            session,
            services.ledger,
            incident,  # type: ignore[arg-type]
            {"status": "closed", "outcome": "words of advice"},
            "user:m",
            retention=r,
            now=closed_at,
        )
        assert incident.closed_at == closed_at  # type: ignore[union-attr]
    info = services.store.info(item.object_key, item.version_id)
    assert info.retain_until is not None and info.retain_until >= closed_at + r.rules.after_closure
    assert actions(services, item.id).count("retention_changed") == 2


def test_clip_uploaded_after_the_alarm_joins_its_incident(live, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real dock path: an alarm opened the incident first; the clip arriving later is linked by the hook."""
    from tests.clipkit import enrol
    from tests.media import make_test_clip
    from tests.test_dock_upload_e2e import tus_upload

    s = live.services
    fleet = enrol(live.url, live.admin(), wearer="S-21")
    alarm_at = datetime(2026, 11, 22, 10, 5, tzinfo=UTC)  # the clip kit records 10:00-10:01 that day
    with s.db.session() as session:
        incident, _ = open_or_join_incident_for_wearer(
            session,
            s.ledger,
            "S-21",
            alarm_at,
            "lone_worker_alarm",
            "NORTH",
            "alarm:e2e",
            JOIN,
            retention=_retention(s),
        )
        incident_id, reference = incident.id, incident.reference
    data = make_test_clip(tmp_path / "clip.mp4", seconds=1).read_bytes()
    r = tus_upload(fleet, data)
    item_id = r.headers["evidence-item-id"]
    trail = actions(s, item_id)
    assert trail[:4] == ["captured", "received", "stored", "verified"]
    assert "linked" in trail and "retention_changed" in trail
    with s.db.session() as session:
        link = session.scalar(select(IncidentLink).where(IncidentLink.target_id == item_id))
        item = session.get(EvidenceItem, item_id)
    assert link is not None and link.incident_id == incident_id and link.linked_by == "service:auto-link"
    assert reference in link.reason
    assert item is not None and item.retain_until is not None
    lock = s.store.info(item.object_key, item.version_id).retain_until
    assert lock is not None and lock > datetime.now(UTC) + timedelta(
        days=s.settings.incident_evidence_retention_days - 1
    )


def test_alarm_and_clip_racing_on_postgres_still_meet(pg_url, tmp_path, seaweed) -> None:  # type: ignore[no-untyped-def]
    """The clip's transaction is still open when the alarm arrives: the alarm waits for it, then links it."""
    import psycopg

    from chain_of_custody.evidence import Provenance, record_evidence
    from ingest.services import build_services
    from tests.conftest import make_settings, wait_for

    s = build_services(make_settings(tmp_path, pg_url, seaweed))
    try:
        until = datetime.now(UTC) + timedelta(days=1)
        stored = s.store.put_bytes("test/race", b"clip" * 256, retain_until=until, content_type="video/mp4")
        clip_open, clip_commit = threading.Event(), threading.Event()
        opened: dict[str, str] = {}

        def clip_side() -> None:
            with s.db.session() as session:
                item = record_evidence(
                    session,
                    s.ledger,
                    stored,
                    Provenance(
                        kind="clip",
                        actor="dock:D",
                        wearer="S-30",
                        captured_start=T0,
                        captured_stop=T0 + JOIN / 30,
                    ),
                    received={"dock": "D"},
                )
                assert auto_link_clip(session, s.ledger, item) == []  # no incident yet, as far as it can see
                opened["item"] = item.id
                clip_open.set()
                assert clip_commit.wait(30)

        def alarm_side() -> None:
            with s.db.session() as session:
                incident, _ = open_or_join_incident_for_wearer(
                    session, s.ledger, "S-30", T0, "lone_worker_alarm", "NORTH", "alarm:race", JOIN
                )
                opened["incident"] = incident.id

        clip = threading.Thread(target=clip_side)
        clip.start()
        assert clip_open.wait(30)
        alarm = threading.Thread(target=alarm_side)
        alarm.start()

        def alarm_is_waiting() -> bool:
            with psycopg.connect(pg_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                ).fetchone()
                return bool(row and row[0])

        wait_for(alarm_is_waiting, 30, 0.05, "the alarm's transaction to wait for the clip's")
        clip_commit.set()
        clip.join(30)
        alarm.join(30)
        with s.db.session() as session:
            link = session.scalar(select(IncidentLink).where(IncidentLink.target_id == opened["item"]))
        assert link is not None and link.incident_id == opened["incident"]
    finally:
        s.db.dispose()
