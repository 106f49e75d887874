"""Old personal data is forgotten: position trail points and console sessions past their retention,
by a periodic job that one instance at a time does (``storage.schedule``), on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from accounts.models import UserSession
from accounts.service import create_user
from accounts.sessions import SessionPolicy, end_session, start_session
from alarms.models import LoneWorkerPosition
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from ingest.app import forget_personal_data_when_due
from storage.schedule import run_when_due
from tests.test_alarms_kit import enrol


def test_trail_points_and_sessions_past_their_retention_are_forgotten_by_one_instance(services: Any) -> None:
    s = services
    now = datetime.now(UTC)
    days = s.settings.position_trail_retention_days
    quiet = enrol(s, "LW-QUIET", staff_id=None)
    busy = enrol(s, "LW-BUSY", staff_id=None)
    s.alarms.handle(*busy.sos())  # an alarm still open: its trail is being followed
    old, recent = now - timedelta(days=days + 1), now - timedelta(days=days - 1)
    with s.db.session() as session:
        for device in (quiet.device_id, busy.device_id):
            for at in (old, recent):
                session.add(LoneWorkerPosition(device_id=device, at=at, lat=51.5, lon=-0.1, accuracy_m=5))
        user = create_user(session, "nurse-lead", "a long enough password", "operator", key=s.key)
        policy = SessionPolicy(idle=timedelta(minutes=15), absolute=timedelta(hours=12))
        seal = s.key.derived_secret(CREDENTIAL_SEALS)
        long_ago = now - timedelta(days=s.settings.ended_session_retention_days + 1)
        ended, _ = start_session(session, user, policy, seal, now=long_ago)
        end_session(session, ended, now=long_ago)
        start_session(session, user, policy, seal, now=long_ago)  # expired long ago, never signed out
        start_session(session, user, policy, seal, now=now)  # in use
        yesterday = now - timedelta(days=1)
        recent_end, _ = start_session(session, user, policy, seal, now=yesterday)
        end_session(session, recent_end, now=yesterday)

    assert forget_personal_data_when_due(s, now)
    assert not forget_personal_data_when_due(s, now + timedelta(seconds=1))  # not due again yet

    with s.db.session() as session:
        points = {(p.device_id, p.at == old) for p in session.scalars(select(LoneWorkerPosition))}
        sessions = list(session.scalars(select(UserSession)))
    assert points == {("LW-QUIET", False), ("LW-BUSY", False), ("LW-BUSY", True)}
    assert len(sessions) == 2 and all(x.created_at >= now - timedelta(days=2) for x in sessions)
    # Due again after the sweep interval.
    later = now + timedelta(seconds=s.settings.personal_data_sweep_seconds + 1)
    assert forget_personal_data_when_due(s, later)


def test_a_periodic_job_is_done_by_one_instance_at_a_time_and_again_after_a_failure(services: Any) -> None:
    s = services
    now = datetime.now(UTC)
    every = timedelta(hours=1)
    seen: list[str] = []

    def inside(at: datetime) -> None:
        seen.append("first")
        # Another instance looks while the first is at it: the job is held.
        assert not run_when_due(s.db, "job", every, "host-b", lambda _: seen.append("second"), at)

    assert run_when_due(s.db, "job", every, "host-a", inside, now)
    assert seen == ["first"]

    def fails(at: datetime) -> None:
        raise RuntimeError("storage away")

    later = now + every
    try:
        run_when_due(s.db, "job", every, "host-a", fails, later)
    except RuntimeError:
        pass
    # The failed run left the job due and its lease free: the next look (any instance) does it.
    assert run_when_due(s.db, "job", every, "host-b", lambda _: seen.append("retry"), later)
    assert seen == ["first", "retry"]
