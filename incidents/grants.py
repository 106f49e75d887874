"""Seals on the rows that grant access to evidence without signing anyone in: incident assignments
(``incident_assignments``) and export jobs (``export_jobs``).

An active assignment opens an incident, and everything linked to it, to an investigator; an export
job decides what its download links hand out (originals or not, which items, on whose role:
``export.api.may_hand_out``). Each row carries an HMAC-SHA256, under a secret derived from the
service key (``GRANT_SEALS``, which the database does not hold), over what it grants
(``chain_of_custody.row_seals.assignment_values`` and ``export_job_values``). The service seals a
row in the transaction that writes it (assignment, unassignment, an export request). A row written
in the database by anyone else (an assignment planted, an ended one made active again, a job's
originals switched on or its items widened) has no seal that holds: the assignment opens nothing
(``accounts.seals.assignments_of``), names nobody as assigned (an incident's investigators, the
search by assignee: :func:`sealed_assignment_ids_on`) and lets nobody revoke a link
(``export.api.may_revoke``), and the job's links hand nothing out. ``evidence verify`` names
them (``assignment_seal_broken``, ``export_job_seal_broken``).

Rows made before seals have none: ``evidence seal-grants`` lists them and seals those the custody
ledger bears out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from accounts.models import User
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.row_replay import AssignmentRow, assignment_findings, assignment_replay
from chain_of_custody.row_seals import (
    ASSIGNMENT,
    GRANT_SEALS,
    assignment_end_subject,
    assignment_values,
    export_job_values,
    row_seal,
    seal_verdict,
    sealed_assignments,
    sealed_assignments_on,
)

from .export.models import ExportJob
from .models import IncidentAssignment

log = logging.getLogger(__name__)


def _assignment_seal(secret: bytes, row: IncidentAssignment) -> str:
    return row_seal(
        secret, assignment_values(row.id, row.incident_id, row.user_id, row.unassigned_at is None)
    )


def _job_seal(secret: bytes, job: ExportJob) -> str:
    values = export_job_values(
        job.id, job.incident_id, job.requested_by, job.requester_role, bool(job.include_originals), job.scope
    )
    return row_seal(secret, values)


def seal_assignment(row: IncidentAssignment, key: ServiceKey) -> None:
    """Seal an assignment as it now stands (flushed: its id is the database's); assigning and
    ending an assignment call this in the same transaction."""
    row.seal = _assignment_seal(key.derived_secret(GRANT_SEALS), row)


def record_assignment_end(session: Session, ledger: Ledger, row: IncidentAssignment, actor: str) -> None:
    """End an assignment on custody too, in the transaction that ends its row: a
    ``credential_ended`` entry (``row_seals.assignment_end_subject``). The ended row's seal says
    ended, but a copy of the row from before carries a seal that still fits; put back, it opens
    nothing while this entry stands (:func:`sealed_assignment_ids`, :func:`sealed_assignment_ids_on`)."""
    _end_on_custody(session, ledger, ledger.key.derived_secret(GRANT_SEALS), row.id, row.incident_id, actor)


def _end_on_custody(
    session: Session, ledger: Ledger, secret: bytes, row_id: int, incident_id: str, actor: str
) -> None:
    details = {"credential": ASSIGNMENT, "incident_id": incident_id, "assignment": row_id}
    item_id = assignment_end_subject(secret, row_id)
    ledger.append(session, CustodyAction.CREDENTIAL_ENDED, actor, item_id=item_id, details=details)


def seal_export_job(job: ExportJob, key: ServiceKey) -> None:
    """Seal an export job as it was asked for, in the transaction that adds it."""
    job.seal = _job_seal(key.derived_secret(GRANT_SEALS), job)


def sealed_assignment_ids(session: Session, key: ServiceKey, user_id: int) -> frozenset[int]:
    """The person's active assignments whose seal holds (what ``accounts.seals.assignments_of``
    resolves at sign-in), for a viewer made without signing in."""
    return sealed_assignments(session, key.derived_secret(GRANT_SEALS), user_id, log)


def sealed_assignment_ids_on(
    session: Session, key: ServiceKey, incident_ids: Select[Any] | Sequence[str]
) -> frozenset[int]:
    """The active assignments on these incidents whose seal holds: only these name a person as
    assigned (an incident's investigators, the search by assignee); a planted row shows nobody."""
    return sealed_assignments_on(session, key.derived_secret(GRANT_SEALS), incident_ids, log)


def assignment_seal_holds(key: ServiceKey, row: IncidentAssignment) -> bool:
    """Whether the assignment's seal is the one the service made for it; a warning naming ids when not."""
    ids = {"assignment": row.id, "incident_id": row.incident_id, "user_id": row.user_id}
    expected = _assignment_seal(key.derived_secret(GRANT_SEALS), row)
    return seal_verdict(expected, row.seal, log, "incident assignment", ids)


def export_job_seal_holds(key: ServiceKey, job: ExportJob) -> bool:
    """Whether the job's seal is the one the service made for it; a warning naming its id when not."""
    return seal_verdict(
        _job_seal(key.derived_secret(GRANT_SEALS), job), job.seal, log, "export job", {"export": job.id}
    )


def export_job_read_as_its_incidents(key: ServiceKey, role: str, job: ExportJob) -> bool:
    """Whether a reader of ``role`` reads the job as a package of the incident its row names: an
    administrator (who reads every incident) every job; anyone who reads incidents by scope only a
    job whose seal holds (:func:`export_job_seal_holds`, over its incident among the rest), so a
    package moved by SQL to an incident they see (its requester, reason, file name, hash and the
    items it holds or withholds) is neither listed, opened nor in that incident's disclosure log."""
    return role == "admin" or export_job_seal_holds(key, job)


# -- rows made before seals ---------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedGrant:
    """An active assignment or an export job without a seal, as ``evidence seal-grants`` lists it,
    with why it is not sealed (``refused``), if it is not."""

    kind: str  # "assignment" | "export job"
    row_id: str
    what: str
    refused: str | None

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"{self.kind} {self.row_id}: {self.what}; {verdict}"


def _unsealed_assignments(session: Session, ledger: Ledger, lock: bool) -> list[UnsealedGrant]:
    q = (
        select(IncidentAssignment, User.username)
        .join(User, User.id == IncidentAssignment.user_id)
        .where(IncidentAssignment.seal.is_(None), IncidentAssignment.unassigned_at.is_(None))
        .order_by(IncidentAssignment.id)
    )
    if lock:
        q = q.with_for_update(of=IncidentAssignment).execution_options(populate_existing=True)
    rows = session.execute(q).all()
    if not rows:
        return []
    replay = assignment_replay(ledger.all_entries(session))
    out = []
    for a, username in rows:
        found = assignment_findings(replay, [AssignmentRow(a.id, a.incident_id, username)])
        mine = [p.detail for p in found if f"#{a.id} " in p.detail]
        out.append(
            UnsealedGrant(
                "assignment",
                str(a.id),
                f"incident {a.incident_id} to {username}",
                "; ".join(mine) or None,
            )
        )
    return out


def _unsealed_jobs(session: Session, ledger: Ledger, lock: bool) -> list[UnsealedGrant]:
    from .export.jobs import request_refusal  # the builder's own check of a job against its request

    q = select(ExportJob).where(ExportJob.seal.is_(None)).order_by(ExportJob.created_at, ExportJob.id)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    out = []
    for job in session.scalars(q):
        originals = "with originals" if job.include_originals else "no originals"
        what = f"incident {job.incident_id}, asked by {job.requested_by} ({job.requester_role}), {originals}"
        out.append(UnsealedGrant("export job", job.id, what, request_refusal(session, ledger, job)))
    return out


def unsealed_grants(session: Session, ledger: Ledger, *, lock: bool = False) -> list[UnsealedGrant]:
    """Every active assignment and every export job without a seal, each against the custody
    ledger; ``lock``: their rows are locked for the rest of the transaction, so what is judged is
    what is sealed."""
    return _unsealed_assignments(session, ledger, lock) + _unsealed_jobs(session, ledger, lock)


def seal_grants(session: Session, ledger: Ledger) -> list[UnsealedGrant]:
    """Seal the rows :func:`unsealed_grants` lists that the ledger bears out, as they stand; all it
    listed, those not sealed with the reason (``refused``)."""
    listed = unsealed_grants(session, ledger, lock=True)
    for found in listed:
        if found.refused:
            continue
        if found.kind == "assignment":
            row = session.get(IncidentAssignment, int(found.row_id))
            if row is not None:
                seal_assignment(row, ledger.key)
        else:
            job = session.get(ExportJob, found.row_id)
            if job is not None:
                seal_export_job(job, ledger.key)
    return listed


@dataclass(frozen=True)
class UnrecordedAssignmentEnd:
    """An ended assignment that no custody entry ends (ended before ends were recorded)."""

    row_id: int
    incident_id: str
    user_id: int

    def line(self) -> str:
        return f"assignment {self.row_id} of incident {self.incident_id} to user id {self.user_id}, ended"


def unrecorded_assignment_ends(session: Session, secret: bytes) -> list[UnrecordedAssignmentEnd]:
    """The ended assignments that would open their incident again if their row were put back as it
    was while active: no ``credential_ended`` entry ends them."""
    rows = session.execute(
        select(IncidentAssignment.id, IncidentAssignment.incident_id, IncidentAssignment.user_id)
        .where(IncidentAssignment.unassigned_at.is_not(None))
        .order_by(IncidentAssignment.id)
    ).all()
    recorded = set(
        session.scalars(
            select(CustodyEntry.item_id).where(CustodyEntry.action == CustodyAction.CREDENTIAL_ENDED)
        )
    )
    return [
        UnrecordedAssignmentEnd(row_id, incident_id, user_id)
        for row_id, incident_id, user_id in rows
        if assignment_end_subject(secret, row_id) not in recorded
    ]


def record_unrecorded_assignment_ends(session: Session, ledger: Ledger, secret: bytes, actor: str) -> int:
    """Record every end :func:`unrecorded_assignment_ends` lists; how many."""
    listed = unrecorded_assignment_ends(session, secret)
    for end in listed:
        _end_on_custody(session, ledger, secret, end.row_id, end.incident_id, actor)
    return len(listed)
