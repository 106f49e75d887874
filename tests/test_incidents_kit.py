"""Helpers shared by the incident, retention and role tests (no tests here).

They create real rows and real locked objects through the same functions the service uses.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache

import httpx
from argon2 import PasswordHasher
from sqlalchemy import select

from accounts.models import User
from accounts.seals import credential_seal_key, seal_user
from accounts.service import issue_token, password_record
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import EvidenceItem
from devices.service import add_staff

PASSWORD = "a long enough test password"


def store_item(
    services,  # type: ignore[no-untyped-def]
    *,
    wearer: str | None = None,
    start: datetime | None = None,
    stop: datetime | None = None,
    kind: str = "clip",
    lock: timedelta = timedelta(days=1),
    derived_from: str | None = None,
    data: bytes | None = None,
    block_list: bool = True,
) -> EvidenceItem:
    """A real object under COMPLIANCE retention for ``lock`` from now, recorded as evidence (with its
    block list, unless ``block_list=False``: as an item stored before lists were kept)."""
    data = data if data is not None else uuid.uuid4().bytes * 64
    retain_until = datetime.now(UTC) + lock
    stored = services.store.put_bytes(
        f"test/{uuid.uuid4()}", data, retain_until=retain_until, content_type="video/mp4"
    )
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    with services.db.session() as session:
        return record_evidence(
            session,
            services.ledger,
            stored,
            Provenance(
                kind=kind,
                actor="test",
                wearer=wearer,
                captured_start=start,
                captured_stop=stop,
                content_type="video/mp4",
                derived_from_id=derived_from,
                retain_until=retain_until,
            ),
            received={"by": "test"},
            verified={"ok": True},
            block_list=block_list,
        )


def staff(services, staff_id: str, group: str = "nurse", site: str | None = "NORTH") -> None:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        add_staff(session, services.ledger, staff_id, f"Staff {staff_id}", group, site, actor="test")


@cache
def _password_hash() -> str:
    """One argon2 hash of PASSWORD for every test user: hashing is deliberately slow, once is enough."""
    return PasswordHasher().hash(PASSWORD)


def user(services, username: str, role: str, site: str | None = None) -> int:  # type: ignore[no-untyped-def]
    """A user whose password is PASSWORD (login works as usual), recorded on custody as the users
    route records one (``evidence verify`` names a user no entry created)."""
    with services.db.session() as session:
        row = User(username=username, password_hash=_password_hash(), role=role, site=site)
        session.add(row)
        session.flush()
        seal_user(row, services.key)
        services.ledger.append(
            session,
            "user_changed",
            "test",
            details={
                "user": username,
                "created": True,
                "role": role,
                "site": site,
                **password_record(services.key, row),
            },
        )
        return row.id


def bearer(services, username: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A token for the user, issued as the login route issues it (without the slow password check)."""
    with services.db.session() as session:
        row = session.scalar(select(User).where(User.username == username))
        assert row is not None
        token, _ = issue_token(session, row, timedelta(hours=1), credential_seal_key(services.key))
    return {"Authorization": f"Bearer {token}"}


def login(url: str, username: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/v1/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def actions(services, item_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    from chain_of_custody.ledger import Ledger

    with services.db.session() as session:
        return [e.body.action for e in Ledger.item_entries(session, item_id)]
