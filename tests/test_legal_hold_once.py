"""A legal hold placed again by the same request (the manager's ``PUT .../legal-hold`` sent again: a
retry after a lost answer, a second click) is the hold already placed, on both databases and the
real store: one active hold, one ``legal_hold`` entry on each item it covers. Another person's hold,
or another reason, is a hold of its own; a release releases them all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from incidents.models import LegalHold
from incidents.retention import RetentionRules, set_legal_hold
from tests.test_incidents_kit import actions, store_item


def _hold(s: Any, item_id: str, on: bool, reason: str, actor: str) -> list[int]:
    with s.db.session() as session:
        holds = set_legal_hold(
            session,
            s.ledger,
            s.store,
            RetentionRules.from_settings(s.settings),
            "evidence",
            item_id,
            on,
            reason,
            actor,
            datetime.now(UTC),
        )
        return [h.id for h in holds]


def _active(s: Any, item_id: str) -> list[tuple[int, str, str]]:
    with s.db.session() as session:
        return [
            (h.id, h.placed_by, h.reason)
            for h in session.scalars(
                select(LegalHold)
                .where(LegalHold.target_id == item_id, LegalHold.released_at.is_(None))
                .order_by(LegalHold.id)
            )
        ]


def test_a_hold_placed_again_by_the_same_request_is_the_same_hold(services: Any) -> None:
    s = services
    now = datetime.now(UTC)
    clip = store_item(s, wearer="S-H1", start=now, stop=now)
    redacted = store_item(s, kind="redacted_clip", derived_from=clip.id, lock=timedelta(hours=1))

    placed = _hold(s, clip.id, True, "police request 17/2026", "user:m")
    again = _hold(s, clip.id, True, "police request 17/2026", "user:m")

    assert again == placed
    assert _active(s, clip.id) == [(placed[0], "user:m", "police request 17/2026")]
    for item_id in (clip.id, redacted.id):
        assert actions(s, item_id).count("legal_hold") == 1
    assert s.store.info(clip.object_key, clip.version_id).legal_hold

    # Another person's hold (or another reason) is a hold of its own; a release ends them all.
    other = _hold(s, clip.id, True, "tribunal order", "user:n")
    assert other != placed and len(_active(s, clip.id)) == 2
    assert actions(s, clip.id).count("legal_hold") == 2
    released = _hold(s, clip.id, False, "case closed", "user:m")
    assert sorted(released) == sorted(placed + other) and _active(s, clip.id) == []
    assert not s.store.info(clip.object_key, clip.version_id).legal_hold
