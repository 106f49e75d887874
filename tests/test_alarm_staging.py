"""Staged alarm rows are written by every sessionmaker the alarm service binds, however many came before."""

from __future__ import annotations

import gc

from sqlalchemy.orm import sessionmaker

from alarms.staging import bind


def test_a_new_sessionmaker_is_bound_even_where_a_collected_one_lived_before() -> None:
    # SQLAlchemy keeps a class-level listener filed under the id() of a session class after the class
    # is collected; a new sessionmaker whose class reuses that id must still be bound (seen as a CI
    # failure: a test's services refused to stage an SOS).
    seen: set[int] = set()
    reused = 0
    for _ in range(300):
        sessions = sessionmaker()
        class_id = id(sessions.class_)
        reused += class_id in seen
        seen.add(class_id)
        bind(sessions)
        bind(sessions)  # a second bind is a no-op
        session = sessions()
        assert session.info.get("alarm_staging_bound"), "a bound sessionmaker's session must stage rows"
        session.close()
        del session, sessions
        if reused >= 3:
            break
        gc.collect()
    assert reused, "no session class id was reused: the case this test exists for never happened"
