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
from accounts.seals import seal_user
from accounts.service import creation_record, issue_token
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.models import EvidenceItem
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from devices.service import add_staff
from storage.objects import StoredObject
from tests.conftest import SIGN_IN_TIMEOUT

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
    device: str | None = None,
    stored: StoredObject | None = None,
    site: str | None = None,
    quarantine_reason: str | None = None,
    for_review: bool = False,
) -> EvidenceItem:
    """A real object under COMPLIANCE retention for ``lock`` from now, recorded as evidence (with its
    block list, unless ``block_list=False``: as an item stored before lists were kept), quarantined
    when ``quarantine_reason`` is given (for review alone with ``for_review``).

    ``stored``: record this object, already in the store, instead of storing ``data`` (its record
    as the test chose it, which may differ from what the store holds)."""
    retain_until = datetime.now(UTC) + lock
    if stored is None:
        data = data if data is not None else uuid.uuid4().bytes * 64
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
                source_device_id=device,
                captured_start=start,
                captured_stop=stop,
                content_type="video/mp4",
                derived_from_id=derived_from,
                retain_until=retain_until,
                site=site,
            ),
            received={"by": "test"},
            verified=None if quarantine_reason else {"ok": True},
            quarantine_reason=quarantine_reason,
            for_review=for_review,
            block_list=block_list,
        )


def staff(services, staff_id: str, group: str = "nurse", site: str | None = "NORTH") -> None:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        add_staff(session, services.ledger, staff_id, f"Staff {staff_id}", group, site, actor="test")


@cache
def _password_hash() -> str:
    """One argon2 hash of PASSWORD for every test user: hashing is deliberately slow, once is enough."""
    return PasswordHasher().hash(PASSWORD)


def user(services, username: str, role: str, site: str | None = None, full_name: str = "") -> int:  # type: ignore[no-untyped-def]
    """A user whose password is PASSWORD (login works as usual), recorded on custody as the users
    route records one (``evidence verify`` names a user no entry created)."""
    with services.db.session() as session:
        row = User(
            username=username, password_hash=_password_hash(), role=role, site=site, full_name=full_name
        )
        session.add(row)
        session.flush()
        seal_user(row, services.key)
        services.ledger.append(session, "user_changed", "test", details=creation_record(services.key, row))
        return row.id


def bearer(services, username: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A token for the user, issued as the login route issues it (without the slow password check)."""
    with services.db.session() as session:
        row = session.scalar(select(User).where(User.username == username))
        assert row is not None
        token, _ = issue_token(
            session, row, timedelta(hours=1), services.key.derived_secret(CREDENTIAL_SEALS)
        )
    return {"Authorization": f"Bearer {token}"}


def login(url: str, username: str) -> dict[str, str]:
    r = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": username, "password": PASSWORD}, timeout=SIGN_IN_TIMEOUT
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def actions(services, item_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    from chain_of_custody.ledger import Ledger

    with services.db.session() as session:
        return [e.body.action for e in Ledger.item_entries(session, item_id)]


def plant_user(services, username: str, password_hash: str, role: str = "admin", **values: object) -> int:  # type: ignore[no-untyped-def]
    """A user row inserted by SQL, as someone with the database but not the service key would:
    no custody entry, and no seal unless ``values`` gives one; its id."""
    from sqlalchemy import insert

    row = {
        "username": username,
        "password_hash": password_hash,
        "role": role,
        "full_name": "",
        "active": True,
    }
    with services.db.session() as session:
        session.execute(insert(User.__table__).values(**{**row, **values}))
        planted = session.scalar(select(User.id).where(User.username == username))
    assert planted is not None
    return planted


def plant_assignment(services, incident_id: str, user_id: int, at: datetime) -> None:  # type: ignore[no-untyped-def]
    """An active incident assignment inserted by SQL: no seal, no custody entry."""
    from sqlalchemy import insert

    from incidents.models import IncidentAssignment

    with services.db.session() as session:
        session.execute(
            insert(IncidentAssignment.__table__).values(
                incident_id=incident_id, user_id=user_id, assigned_by="user:admin", assigned_at=at
            )
        )


def assigned_incident(services, at: datetime, *investigators: int) -> tuple[str, EvidenceItem]:  # type: ignore[no-untyped-def]
    """A NORTH incident at ``at`` (of a clip member of staff S-N recorded) with ``investigators``
    assigned and the clip's redacted copy linked; its id and the copy."""
    from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence

    clip = store_item(services, wearer="S-N", start=at, stop=at + timedelta(minutes=1))
    copy = store_item(services, kind="redacted_clip", derived_from=clip.id)
    with services.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=at, site="NORTH"),
            "user:seed",
            ledger=services.ledger,
        )
        for investigator in investigators:
            assign_investigator(session, services.ledger, incident, investigator, "user:seed")
        link_evidence(session, services.ledger, incident.id, copy.id, "user:seed", "the redacted copy")
        return incident.id, copy


def plant_incident(services, site: str = "NORTH", **values: object) -> str:  # type: ignore[no-untyped-def]
    """An incident row inserted by SQL, as one opened before the ledger recorded incidents' sites
    and windows: no custody entry and no seal (``evidence backfill-custody`` then ``upgrade-seals``
    adopt it); its id."""
    from sqlalchemy import func, insert

    from incidents.models import Incident

    incident_id = str(uuid.uuid4())
    with services.db.session() as session:
        number = (session.scalar(select(func.max(Incident.number)).where(Incident.year == 2025)) or 0) + 1
        row = {
            "id": incident_id,
            "reference": f"INC-2025-{number:06d}",
            "year": 2025,
            "number": number,
            "category": "theft",
            "title": "opened before the ledger recorded incidents",
            "site": site,
            "occurred_at": datetime(2025, 6, 1, tzinfo=UTC),
            "opened_by": "user:admin",
        }
        session.execute(insert(Incident.__table__).values(**{**row, **values}))
    return incident_id


def sealed_incident(services, incident):  # type: ignore[no-untyped-def]
    """An incident row made in a test without the service, sealed as the service seals one when it
    records its site and window (``incidents.identity.record_site``), bound to no custody entry (it
    has none): its id is given now, as the seal covers it. Only a sealed incident is read by its
    site's managers."""
    from chain_of_custody.incident_seals import incident_seal
    from chain_of_custody.reach_seals import reach_secret

    incident.id = incident.id or str(uuid.uuid4())
    window = (incident.wearer, incident.window_start, incident.window_end)
    incident.seal = incident_seal(reach_secret(services.key), incident.id, incident.site, *window, None)
    return incident


def sealed_export_job(services, session, export_id: str, incident_id: str, requester: str, role: str):  # type: ignore[no-untyped-def]
    """A ready export job row of ``requester`` (``user:<name>``) with ``role``, sealed as the route
    that asks for an export seals it, added to ``session``."""
    from incidents.export.models import ExportJob
    from incidents.grants import seal_export_job

    job = ExportJob(
        id=export_id,
        incident_id=incident_id,
        requested_by=requester,
        requester_role=role,
        scope="{}",
        status="ready",
    )
    seal_export_job(job, services.key)
    session.add(job)
    return job
