"""Custody actions named by the enum are stored, hashed and signed exactly as their names were:
``CustodyAction`` is a ``StrEnum``, so a member is its value wherever it goes (text, JSON, the
database), and an entry appended with a member is the entry appended with the string."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from chain_of_custody.canonical import canonical_json
from chain_of_custody.entries import CustodyAction
from chain_of_custody.models import CustodyEntry


def test_a_member_is_its_value_in_text_and_json() -> None:
    for action in CustodyAction:
        assert action == action.value and str(action) == f"{action}" == action.value
        assert json.dumps(action) == json.dumps(action.value)
        assert canonical_json({"action": action}) == canonical_json({"action": action.value})


def test_an_entry_appended_with_a_member_stores_the_plain_name(services: Any) -> None:
    with services.db.session() as session:
        by_member = services.ledger.append(session, CustodyAction.LINK_ISSUED, "test", details={"n": 1})
        by_name = services.ledger.append(session, "link_issued", "test", details={"n": 1})
        assert type(by_member.action) is str and by_member.action == by_name.action == "link_issued"
    with services.db.session() as session:
        stored = session.scalars(
            select(CustodyEntry.action).where(CustodyEntry.actor == "test").order_by(CustodyEntry.seq)
        ).all()
    assert stored == ["link_issued", "link_issued"]
