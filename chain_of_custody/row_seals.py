"""The seals the service puts on rows that speak for a device or sign someone in, and their check
in ``evidence verify``.

A device row's seal (``devices.seals``), a user row's seal and a bearer token's or console
session's seal (``accounts.seals``) are HMAC-SHA256s under secrets derived from the service key,
one label each. How they are made lives here, below both domains, so the verifier recomputes them
without importing either; the tables are read as plain tables, only the columns a seal covers.
Findings name the row (a device id, a user id, or a credential's kind and user), never a token,
digest, password hash or key.

A seal covers what a row grants, not that it was ended: a copy of the row taken while it was live
carries a seal that still fits. So ending a token or session is also a ``credential_ended`` custody
entry whose subject (its ``item_id``) is :func:`credential_end_subject`, a keyed digest of the
credential's digest: the ledger only grows, the sign-in refuses a credential it names, and
``evidence verify`` names a live row it says was ended (``credential_end_undone``). Read grants
(``ingest.read_grants``) are sealed over everything they stand for, their use left out: a download's
grant, once used, is ended by a ``credential_ended`` entry too (``read_grant_use_undone``). Every
write of a device row is an entry on a subject of its own (:func:`device_subject`), and the row's
seal is bound to the latest (``device_seal``): a copy from before a rotation, a move or a disable
no longer fits (``device_seal_broken``); an active row the latest disable names is
``device_disable_undone``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, String, cast, column, func, literal, select, table
from sqlalchemy.orm import Mapped, Session

from storage.db import UTCDateTime

from .entries import ChainReport, CustodyAction, Problem, entry_number, report_unsealed
from .keys import ServiceKey

# The label of the service key's secret for device seals and their subjects (:func:`device_subject`).
# Since version 2 a device seal also covers the seq of the latest custody entry on the device's
# subject, under a secret derived from this one with ``DEVICE_SEALS_BOUND`` (``device_seal``), so a
# copy of the row taken before a later change no longer fits; a row still under a version 1 seal
# speaks for nobody until ``evidence upgrade-seals`` adopts it (``devices.seals.unsealed_devices``).
DEVICE_SEALS = "device seals v1"
DEVICE_SEALS_BOUND = "device seals v2: bound to the latest custody entry"
CREDENTIAL_SEALS = "credential seals v1"  # the label of the service key's secret for credential seals
# The label of the service key's secret for user seals. Version 2 covers the person's full name too
# (the name continuity reports and statements print); version 3 also the seq of the latest custody
# entry about the user (:func:`user_subject`), so a copy of the row taken before a later change no
# longer fits. A row still under a version 1 or 2 seal signs nobody in until ``evidence
# upgrade-seals`` adopts it (``accounts.seals.unsealed_users``).
USER_SEALS = "user seals v3"
USER_SEALS_V2 = "user seals v2"
USER_SEALS_V1 = "user seals v1"
USER_PREFIX = "user:"  # the subject of the ``user_changed`` entries that change a user row: this and its id
READ_GRANT_SEALS = "read grant seals v1"  # the label of the service key's secret for read grants
GRANT_SEALS = "grant seals v1"  # the label of the service key's secret for assignment and export job seals
TOKEN, SESSION = "token", "session"
# What a note about rows not sealed yet points to: the one command an upgrade runs (its steps in order).
UPGRADE_SEALS = "`evidence upgrade-seals`"
UPGRADE_COMMAND = "evidence upgrade-seals --yes"  # what an operator runs to adopt them all
ENDED_PREFIX = "ended:"  # the subject of a ``credential_ended`` entry: this and 30 hex digits (36 characters)
DEVICE_PREFIX = "device:"  # the subject of a device's entries: this and 29 hex digits (36 characters)
GRANT = "read grant"  # the kind of a read grant's ``credential_ended`` entry (a download's, once used)
ASSIGNMENT = "assignment"  # the kind of an incident assignment's ``credential_ended`` entry
DISABLED, ENABLED = CustodyAction.DEVICE_DISABLED, CustodyAction.DEVICE_ENABLED  # a device's status entries

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SealedValues = tuple[str, str, str, str | None, str | None, str | None, str | None, str | None]
# A user row's: id, username, role, site, password hash, "active" or "inactive", and full name.
UserValues = tuple[str, str, str, str | None, str, str, str]


def row_seal(secret: bytes, values: tuple[str | None, ...]) -> str:
    """The seal of a row with these values, in order, hex."""
    # None and "" differ: each value is marked present ("=") or absent ("-").
    message = "\x00".join("-" if v is None else "=" + v for v in values).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def seal_verdict(
    expected: str, seal: str | None, log: logging.Logger, refused: str, ids: dict[str, object]
) -> bool:
    """Whether a row's ``seal`` is the ``expected`` one; when not, a warning on ``log`` that the
    ``refused`` row (a device, a user, a credential, an assignment, an export job, a read grant)
    was refused, naming it by ``ids`` only (never a key, digest or password hash). Every seal
    check's verdict."""
    if seal and hmac.compare_digest(expected, seal):
        return True
    log.warning("%s refused: its row's seal is %s", refused, "missing" if not seal else "wrong", extra=ids)
    return False


def device_seal(secret: bytes, values: SealedValues, bound: int | None) -> str:
    """The seal of a device row with these values (id, kind, status, public key, token digest,
    broker password hash, site, assigned staff) whose latest custody entry on its subject
    (:func:`device_subject`) is ``bound`` (None: none yet), hex: under a secret of its own, derived
    from ``secret`` (the one :func:`device_subject` is keyed with), so no seal made before seals
    were bound holds as one."""
    return row_seal(_bound_device_secret(secret), (*values, None if bound is None else str(bound)))


@functools.lru_cache(maxsize=8)
def _bound_device_secret(secret: bytes) -> bytes:
    return hmac.new(secret, DEVICE_SEALS_BOUND.encode(), hashlib.sha256).digest()


def device_seal_v1(secret: bytes, values: SealedValues) -> str:
    """The seal a device row had before seals were bound to its latest custody entry: only an
    upgrade's adoption and ``evidence verify``'s note read it."""
    return row_seal(secret, values)


def user_values(
    user_id: int, username: str, role: str, site: str | None, password_hash: str, active: bool, full_name: str
) -> UserValues:
    """What a user row's seal covers, in order: everything that decides what the person may do
    (who they are, their role and site, the password that proves them, whether they may at all),
    and the name the record gives them (a continuity report says who did what by it)."""
    return (str(user_id), username, role, site, password_hash, "active" if active else "inactive", full_name)


def user_subject(user_id: int) -> str:
    """The ``item_id`` of the custody entries that change a user row, by which the row's latest is
    found in one indexed look-up (``accounts.models.User.custody_seq``)."""
    return f"{USER_PREFIX}{user_id}"


def latest_user_entry(entries: Any, user_id: ColumnElement[Any] | Mapped[int]) -> ScalarSelect[Any]:
    """The seq of the latest custody entry about the user whose id is ``user_id`` (a correlated
    scalar sub-select on ``entries``, the custody entries' table: one indexed look-up by subject),
    asked in the statement that loads the row."""
    subject = literal(USER_PREFIX) + cast(user_id, String)
    return (
        select(entries.c.seq)
        .where(entries.c.item_id == subject)
        .order_by(entries.c.item_seq.desc())
        .limit(1)
        .correlate_except(entries)
        .scalar_subquery()
    )


def user_seal(secret: bytes, values: UserValues, bound: int | None) -> str:
    """The seal of a user row with these values (:func:`user_values`) whose latest custody entry
    (about :func:`user_subject`) is ``bound`` (None: none yet), hex."""
    return row_seal(secret, (*values, None if bound is None else str(bound)))


def user_seal_v2(secret_v2: bytes, values: UserValues) -> str:
    """The seal a row had before seals were bound to its latest custody entry (under the
    ``USER_SEALS_V2`` secret): only an upgrade's adoption reads it."""
    return row_seal(secret_v2, values)


def user_seal_v1(secret_v1: bytes, values: UserValues) -> str:
    """The seal a row had before seals covered the full name (under the ``USER_SEALS_V1`` secret):
    only an upgrade's adoption reads it, and it vouches for everything but the name."""
    return row_seal(secret_v1, values[:6])


def older_user_seal(secret_v2: bytes, secret_v1: bytes, values: UserValues, seal: str | None) -> str | None:
    """The label of the older seal version that holds for a user row with these values
    (``USER_SEALS_V2``, ``USER_SEALS_V1``), or None: a row under one signs nobody in until
    ``evidence upgrade-seals`` adopts it, which is not the same as a seal written outside the
    service, and the log, ``evidence verify`` and the upgrade's counts each say which."""
    if not seal:
        return None
    if _holds(user_seal_v2(secret_v2, values), seal):
        return USER_SEALS_V2
    if _holds(user_seal_v1(secret_v1, values), seal):
        return USER_SEALS_V1
    return None


def assignment_values(assignment_id: int, incident_id: str, user_id: int, active: bool) -> tuple[str, ...]:
    """What an incident assignment's seal covers, in order: the row, the incident it opens, the
    investigator it opens it to, and whether it still does (ending it is sealed too, so an ended
    assignment cannot be made active again in the database)."""
    return ("assignment", str(assignment_id), incident_id, str(user_id), "active" if active else "ended")


def export_job_values(
    job_id: str, incident_id: str, requested_by: str, requester_role: str, include_originals: bool, scope: str
) -> tuple[str, ...]:
    """What an export job's seal covers, in order: everything a download link of it hands out on
    (``may_hand_out``): whose request, with which role, originals or not, and the items (its scope)."""
    originals = "originals" if include_originals else "no originals"
    return ("export job", job_id, incident_id, requested_by, requester_role, originals, scope)


def credential_seal(secret: bytes, kind: str, token_hash: str, user_id: int, expires_at: datetime) -> str:
    """The seal of a ``kind`` (:data:`TOKEN` or :data:`SESSION`) row with these values, hex."""
    expires = expires_at.astimezone(UTC).isoformat(timespec="microseconds")
    message = f"{kind}\x00{token_hash}\x00{user_id}\x00{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def credential_end_subject(secret: bytes, kind: str, token_hash: str) -> str:
    """The ``item_id`` of the custody entries that end the ``kind`` credential of this digest: keyed
    with the credential seals' secret (a message no seal can have: a seal's starts with its kind), so
    the ledger, which an export package may carry part of, never holds the digest a row is found by."""
    mac = hmac.new(secret, f"ended\x00{kind}\x00{token_hash}".encode(), hashlib.sha256).hexdigest()
    return ENDED_PREFIX + mac[:30]


def device_subject(secret: bytes, device_id: str) -> str:
    """The ``item_id`` of every custody entry that changes a device's row (its enrolments, changes,
    disables and enables, in order by ``item_seq``): keyed with the device seals' secret, 36
    characters whatever the id's length. The row's seal is bound to the latest (``device_seal``),
    so only the row the service wrote with it fits, whatever an older copy says."""
    mac = hmac.new(secret, f"status\x00{device_id}".encode(), hashlib.sha256).hexdigest()
    return DEVICE_PREFIX + mac[:29]


def latest_device_entries(session: Session, secret: bytes, device_ids: Sequence[str]) -> dict[str, int]:
    """The seq of each device's latest custody entry on its subject (:func:`device_subject`), by
    device id, for rows read in bulk (the broker's password file, a site's reach): one query per
    500 devices, whatever their number. A device with none is left out."""
    subjects = {device_subject(secret, d): d for d in device_ids}
    found: dict[str, int] = {}
    e = _ENTRIES.c
    listed = list(subjects)
    for start in range(0, len(listed), 500):
        q = select(e.item_id, func.max(e.seq)).where(e.item_id.in_(listed[start : start + 500]))
        for subject, seq in session.execute(q.group_by(e.item_id)):
            if entry_number(seq) is not None:  # (one SQL renumbered binds nothing: verify names it)
                found[subjects[str(subject)]] = seq
    return found


def _timed_mac(secret: bytes, label: str, subject: str, micros: int) -> str:
    return hmac.new(secret, f"{label}\x00{subject}\x00{micros}".encode(), hashlib.sha256).hexdigest()


def timed_mark(secret: bytes, label: str, subject: str, at: datetime) -> str:
    """A time as the service wrote it for ``subject``: in microseconds since 1970 and an HMAC over
    it (its message starts with ``label``, which no seal or end has), so the database cannot move
    it."""
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{_timed_mac(secret, label, subject, micros)}"


def timed_of(secret: bytes, label: str, subject: str, mark: str | None) -> datetime | None:
    """The time a :func:`timed_mark` holds, or None when it is missing or not the service's."""
    micros, _, mac = (mark or "").partition(".")
    if not micros.isdigit() or not _holds(_timed_mac(secret, label, subject, int(micros)), mac):
        return None
    return _EPOCH + timedelta(microseconds=int(micros))


def timed_finding(
    code: str,
    subject: str,
    row_at: datetime,
    sealed: datetime | None,
    *,
    what: str,
    unsealed: str,
    effect: str,
) -> Problem | None:
    """What ``evidence verify`` says of a row whose time ``what`` is ``row_at`` and whose seal holds
    ``sealed`` (:func:`timed_of`): nothing while the row's time is no later than the sealed one;
    ``unsealed`` when the seal is missing or wrong; else that the time was moved forward, ``effect``."""
    if sealed is not None and row_at <= sealed:
        return None
    return Problem(
        code,
        subject,
        unsealed
        if sealed is None
        else f"its row's {what} is {row_at.isoformat()}, later than the {sealed.isoformat()} the service "
        f"sealed: {effect}",
    )


def activity_mark(secret: bytes, token_hash: str, at: datetime) -> str:
    """A console session's last activity as the service wrote it (``accounts.sessions``), so the
    idle timeout counts from a time the database cannot move forward."""
    return timed_mark(secret, "seen", token_hash, at)


def activity_of(secret: bytes, token_hash: str, mark: str | None) -> datetime | None:
    """The time an :func:`activity_mark` holds, or None when it is missing or not the service's."""
    return timed_of(secret, "seen", token_hash, mark)


def read_grant_seal(
    secret: bytes,
    token_hash: str,
    item_id: str,
    user_id: int,
    sign_in: str,
    use: str,
    reason: str,
    expires_at: datetime,
) -> str:
    """The seal of a read grant with these values (``ingest.read_grants``), hex."""
    expires = expires_at.astimezone(UTC).isoformat(timespec="microseconds")
    values = (token_hash, item_id, str(user_id), sign_in, use, expires, reason)
    return hmac.new(secret, "\x00".join(values).encode(), hashlib.sha256).hexdigest()


_DEVICES = table(
    "devices",
    column("id"),
    column("kind"),
    column("status"),
    column("public_key"),
    column("token_hash"),
    column("broker_password_hash"),
    column("site"),
    column("assigned_staff_id"),
    column("seal"),
)
_USERS = table(
    "users",
    column("id"),
    column("username"),
    column("role"),
    column("site"),
    column("password_hash"),
    column("active"),
    column("full_name"),
    column("seal"),
)
_TOKENS = table(
    "api_tokens",
    column("token_hash"),
    column("user_id"),
    column("expires_at", UTCDateTime),
    column("revoked"),
    column("seal"),
)
_SESSIONS = table(
    "user_sessions",
    column("token_hash"),
    column("user_id"),
    column("expires_at", UTCDateTime),
    column("ended_at"),
    column("seal"),
    column("last_seen_at", UTCDateTime),
    column("activity_seal"),
)
_GRANTS = table(
    "read_grants",
    column("token_hash"),
    column("item_id"),
    column("user_id"),
    column("sign_in"),
    column("use"),
    column("reason"),
    column("expires_at", UTCDateTime),
    column("seal"),
    column("used_at"),
)
_ENTRIES = table("custody_entries", column("seq"), column("action"), column("item_id"), column("item_seq"))


_ASSIGNMENTS = table(
    "incident_assignments",
    column("id"),
    column("incident_id"),
    column("user_id"),
    column("unassigned_at"),
    column("seal"),
)
_EXPORT_JOBS = table(
    "export_jobs",
    column("id"),
    column("incident_id"),
    column("requested_by"),
    column("requester_role"),
    column("include_originals"),
    column("scope"),
    column("seal"),
)


def sealed_assignments(session: Session, secret: bytes, user_id: int, log: logging.Logger) -> frozenset[int]:
    """The ids of the person's active incident assignments whose seal holds: only these open an
    incident to them (``incidents.access.incident_scope``); a warning on ``log`` for each other."""
    return _sealed_assignments(session, secret, log, _ASSIGNMENTS.c.user_id == user_id)


def sealed_assignments_on(
    session: Session, secret: bytes, incident_ids: Select[Any] | Sequence[str], log: logging.Logger
) -> frozenset[int]:
    """The ids of the active assignments on these incidents (ids, or a select of them) whose seal
    holds: only these show a person as assigned (an incident's investigators, who to filter by);
    a warning on ``log`` for each other."""
    return _sealed_assignments(session, secret, log, _ASSIGNMENTS.c.incident_id.in_(incident_ids))


def assignment_end_subject(secret: bytes, assignment_id: int) -> str:
    """The subject of the ``credential_ended`` entry that ends an incident assignment (its row id,
    keyed with the grant seals' secret)."""
    return credential_end_subject(secret, ASSIGNMENT, str(assignment_id))


def _sealed_assignments(
    session: Session, secret: bytes, log: logging.Logger, where: ColumnElement[bool]
) -> frozenset[int]:
    """The active rows whose seal holds and that no ``credential_ended`` entry ended (a row from
    before its end put back: its seal still fits), asked in one more query by the subjects' index."""
    c = _ASSIGNMENTS.c
    q = select(c.id, c.incident_id, c.user_id, c.seal).where(where, c.unassigned_at.is_(None))
    sealed = {
        assignment_end_subject(secret, int(row_id)): (int(row_id), incident_id, user_id)
        for row_id, incident_id, user_id, seal in session.execute(q)
        if seal_verdict(
            row_seal(secret, assignment_values(int(row_id), str(incident_id), int(user_id), True)),
            seal,
            log,
            "incident assignment",
            {"assignment": row_id, "incident_id": incident_id, "user_id": user_id},
        )
    }
    if not sealed:
        return frozenset()
    e = _ENTRIES.c
    for subject in session.scalars(select(e.item_id).where(e.item_id.in_(list(sealed)))):
        row_id, incident_id, user_id = sealed.pop(subject)
        log.warning(
            "incident assignment refused: custody says it was ended",
            extra={"assignment": row_id, "incident_id": incident_id, "user_id": user_id},
        )
    return frozenset(row_id for row_id, _, _ in sealed.values())


def check_grant_seals(session: Session, report: ChainReport, secret: bytes) -> None:
    """A finding for each active incident assignment whose seal is missing or wrong (it opens
    nothing), and for each export job whose seal does not hold (its links hand nothing out); named
    by ids only. Jobs without a seal (asked for before seals) are counted in a note."""
    a = _ASSIGNMENTS.c
    ended = _ended_entries(session)
    for row_id, incident_id, user_id, seal in session.execute(
        select(a.id, a.incident_id, a.user_id, a.seal).where(a.unassigned_at.is_(None)).order_by(a.id)
    ):
        end = ended.get(assignment_end_subject(secret, int(row_id)))
        if end is not None:
            report.problems.append(
                Problem(
                    "assignment_end_undone",
                    f"incident {incident_id} / user id {user_id}",
                    f"custody entry #{end} ended assignment row #{row_id}, but it is active again: it "
                    "was put back in the database, and opens nothing",
                )
            )
        values = assignment_values(int(row_id), str(incident_id), int(user_id), True)
        if not _holds(row_seal(secret, values), seal):
            report.problems.append(
                Problem(
                    "assignment_seal_broken",
                    f"incident {incident_id} / user id {user_id}",
                    f"assignment row #{row_id}'s seal is {'missing' if not seal else 'wrong'}: it was "
                    "written or changed by someone other than the service (it opens nothing)",
                )
            )
    j = _EXPORT_JOBS.c
    unsealed = 0
    q = select(j.id, j.incident_id, j.requested_by, j.requester_role, j.include_originals, j.scope, j.seal)
    for job_id, incident_id, by, role, originals, scope, seal in session.execute(q.order_by(j.id)):
        if not seal:
            unsealed += 1
            continue
        values = export_job_values(
            str(job_id), str(incident_id), str(by), str(role), bool(originals), str(scope)
        )
        if not _holds(row_seal(secret, values), seal):
            report.problems.append(
                Problem(
                    "export_job_seal_broken",
                    f"export {job_id}",
                    "its row's seal does not hold: its requester, role, originals or items were written "
                    "by someone other than the service (its links hand nothing out)",
                )
            )
    report_unsealed(
        report,
        unsealed,
        "export job(s) have no seal yet (asked for before seals), so their links hand "
        f"nothing out: {UPGRADE_SEALS} lists them and seals those the custody record bears out",
    )


def _holds(expected: str, seal: str | None) -> bool:
    return bool(seal) and hmac.compare_digest(expected, seal or "")


def check_device_seals(session: Session, report: ChainReport, secret: bytes) -> None:
    """A finding for each device row whose seal does not hold (altered, planted, or an older copy of
    the row put back: its seal is bound to an older entry than its latest), and for each active one
    custody says was disabled; a note counting those not sealed yet, or sealed before seals were
    bound to custody."""
    c = _DEVICES.c
    q = select(
        c.id,
        c.kind,
        c.status,
        c.public_key,
        c.token_hash,
        c.broker_password_hash,
        c.site,
        c.assigned_staff_id,
        c.seal,
    ).order_by(c.id)
    unsealed = unbound = 0
    status_entries, latest = _latest_device_entries(session)
    for *row, seal in session.execute(q):
        values: SealedValues = (str(row[0]), str(row[1]), str(row[2]), *row[3:])
        subject = device_subject(secret, values[0])
        status_entry = status_entries.get(subject)
        if values[2] == "active" and status_entry is not None and status_entry[1] == DISABLED:
            report.problems.append(
                Problem(
                    "device_disable_undone",
                    f"device {values[0]}",
                    f"custody entry #{status_entry[0]} disabled it, but its row is active again: it was "
                    "put back in the database, and speaks for nobody",
                )
            )
        if not seal:
            unsealed += 1
        elif _holds(device_seal(secret, values, latest.get(subject)), seal):
            continue
        elif _holds(device_seal_v1(secret, values), seal):
            unbound += 1
        else:
            report.problems.append(
                Problem(
                    "device_seal_broken",
                    f"device {values[0]}",
                    "its row's seal does not hold: its credentials, status, site or assigned staff were "
                    "written by someone other than the service, or an older copy of its row was put back "
                    "(it speaks for nobody)",
                )
            )
    report_unsealed(
        report,
        unsealed,
        "device(s) have no seal yet (enrolled before seals), so not checked: "
        f"{UPGRADE_SEALS} lists them and seals those the custody record bears out",
    )
    report_unsealed(
        report,
        unbound,
        "device(s) are sealed without their latest custody entry (sealed before seals were "
        f"bound to it), so they speak for nobody: {UPGRADE_SEALS} lists them and seals again those "
        "the custody record bears out",
    )


def _latest_device_entries(session: Session) -> tuple[dict[str, tuple[int, str]], dict[str, int]]:
    """Each device's latest status entry (``device_disabled``, ``device_enabled``), by subject, with
    its seq and action; and the seq of each device's latest entry of any kind (what its seal is
    bound to), by subject."""
    e = _ENTRIES.c
    q = select(e.item_id, e.seq, e.action).where(e.item_id.like(f"{DEVICE_PREFIX}%")).order_by(e.seq)
    status: dict[str, tuple[int, str]] = {}
    latest: dict[str, int] = {}
    for subject, seq, action in session.execute(q):
        if entry_number(seq) is None:  # renumbered by SQL (SQLite keeps '5a'): verify names it
            continue
        latest[str(subject)] = seq
        if action in (DISABLED, ENABLED):
            status[str(subject)] = (seq, str(action))
    return status, latest


# The users table's columns a user row's seal covers, in :func:`user_values` order.
USER_VALUE_COLUMNS = tuple(
    _USERS.c[name] for name in ("id", "username", "role", "site", "password_hash", "active", "full_name")
)


def row_user_values(row: Sequence[Any]) -> UserValues:
    """What a user row's seal covers, from the values of :data:`USER_VALUE_COLUMNS` read as a plain row."""
    user_id, username, role, site, password_hash, active, full_name = row
    return user_values(
        int(user_id), str(username), str(role), site, str(password_hash), bool(active), str(full_name or "")
    )


def check_user_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each user row whose seal does not hold (named by id and username, never its
    password hash); a note counting those not sealed yet, or sealed before seals covered the name."""
    c = _USERS.c
    q = select(*USER_VALUE_COLUMNS, c.seal, latest_user_entry(_ENTRIES, c.id))
    secret, secret_v1 = key.derived_secret(USER_SEALS), key.derived_secret(USER_SEALS_V1)
    secret_v2 = key.derived_secret(USER_SEALS_V2)
    unsealed = older = unbound = 0
    for *row, seal, latest in session.execute(q.order_by(c.id)):
        if not seal:
            unsealed += 1
            continue
        values = row_user_values(row)
        user_id, username = values[0], values[1]
        if _holds(user_seal(secret, values, None if latest is None else entry_number(latest)), seal):
            continue
        version = older_user_seal(secret_v2, secret_v1, values, seal)
        if version == USER_SEALS_V1:
            older += 1
            continue
        if version == USER_SEALS_V2:
            unbound += 1
            continue
        report.problems.append(
            Problem(
                "user_seal_broken",
                f"user id {user_id} ({username})",
                "its row's seal does not hold: its name, role, site, password or active state were "
                "written by someone other than the service, or an older copy of its row was put back "
                "(it signs nobody in)",
            )
        )
    report_unsealed(
        report,
        unsealed,
        "user(s) have no seal yet (made before seals), so they sign nobody in and are "
        f"not checked: {UPGRADE_SEALS} lists them and seals those the custody record bears out",
    )
    report_unsealed(
        report,
        older,
        "user(s) are sealed without their full name (sealed before seals covered it), so "
        f"they sign nobody in: {UPGRADE_SEALS} lists them with their name and seals them again",
    )
    report_unsealed(
        report,
        unbound,
        "user(s) are sealed without their latest custody entry (sealed before seals were "
        f"bound to it), so they sign nobody in: {UPGRADE_SEALS} lists them and seals again those "
        "the custody record bears out",
    )


def _ended_entries(session: Session) -> dict[str, object]:
    """The ``credential_ended`` entries' seqs, by subject (as their rows have them: one SQL
    renumbered still ends what it names, and verify names it)."""
    q = select(_ENTRIES.c.item_id, _ENTRIES.c.seq).where(_ENTRIES.c.action == CustodyAction.CREDENTIAL_ENDED)
    return {str(subject): seq for subject, seq in session.execute(q)}


def check_credential_seals(session: Session, report: ChainReport, secret: bytes, now: datetime) -> None:
    """A finding for each bearer token or console session, not revoked or ended and not expired,
    whose seal is missing or wrong; named by its kind and user only."""
    t, s = _TOKENS.c, _SESSIONS.c
    tokens = select(t.token_hash, t.user_id, t.expires_at, t.seal).where(
        t.revoked.is_(False), t.expires_at > now
    )
    sessions = select(s.token_hash, s.user_id, s.expires_at, s.seal).where(
        s.ended_at.is_(None), s.expires_at > now
    )
    ended = _ended_entries(session)
    for kind, q in ((TOKEN, tokens), (SESSION, sessions)):
        for digest, user_id, expires_at, seal in session.execute(q):
            name = f"{'bearer token' if kind == TOKEN else 'console session'} of user id {user_id}"
            end = ended.get(credential_end_subject(secret, kind, str(digest)))
            if end is not None:
                report.problems.append(
                    Problem(
                        "credential_end_undone",
                        name,
                        f"custody entry #{end} ended it, but its row is live again: it was put back "
                        "in the database, and signs nobody in",
                    )
                )
            if _holds(credential_seal(secret, kind, str(digest), int(user_id), expires_at), seal):
                continue
            report.problems.append(
                Problem(
                    "credential_seal_broken",
                    name,
                    f"its row's seal is {'missing' if not seal else 'wrong'}: it was written or changed "
                    "by someone other than the service",
                )
            )


def check_session_activity(session: Session, report: ChainReport, secret: bytes, now: datetime) -> None:
    """A finding for each live console session whose last activity is later than the one the
    service sealed (moved forward in the database, to outlast the idle timeout), or whose seal of
    it is missing or wrong; named by its user only."""
    c = _SESSIONS.c
    q = select(c.token_hash, c.user_id, c.last_seen_at, c.activity_seal).where(
        c.ended_at.is_(None), c.expires_at > now
    )
    for digest, user_id, last_seen_at, mark in session.execute(q):
        found = timed_finding(
            "session_activity_altered",
            f"console session of user id {user_id}",
            last_seen_at,
            activity_of(secret, str(digest), mark),
            what="last activity",
            unsealed="its last activity's seal is missing or wrong",
            effect="the idle timeout was put off in the database",
        )
        if found is not None:
            report.problems.append(found)


def check_read_grant_seals(session: Session, report: ChainReport, secret: bytes, now: datetime) -> None:
    """A finding for each read grant not yet expired whose seal is missing or wrong (planted, or
    widened: another item, person, sign-in, use, reason or a later expiry), and for each download's
    grant that reads unused while custody says it was used (put back in the database); named by its
    user only."""
    c = _GRANTS.c
    q = select(
        c.token_hash, c.item_id, c.user_id, c.sign_in, c.use, c.reason, c.expires_at, c.seal, c.used_at
    )
    ended = _ended_entries(session)
    for digest, item_id, user_id, sign_in, use, reason, expires_at, seal, used_at in session.execute(
        q.where(c.expires_at > now).order_by(c.expires_at)
    ):
        end = ended.get(credential_end_subject(secret, GRANT, str(digest)))
        if use == "download" and used_at is None and end is not None:
            report.problems.append(
                Problem(
                    "read_grant_use_undone",
                    f"read grant of user id {user_id}",
                    f"custody entry #{end} used it, but its row reads unused: it was put back in the "
                    "database, and stands for no read",
                )
            )
        values = (str(digest), str(item_id), int(user_id), str(sign_in), str(use), str(reason))
        if _holds(read_grant_seal(secret, *values, expires_at), seal):
            continue
        report.problems.append(
            Problem(
                "read_grant_seal_broken",
                f"read grant of user id {user_id}",
                f"its row's seal is {'missing' if not seal else 'wrong'}: it was written or changed by "
                "someone other than the service, and stands for no read",
            )
        )


def check_row_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """Device rows', users', bearer tokens', console sessions', read grants', assignments' and
    export jobs' seals, sessions' sealed last activity, and credentials whose end was undone (see
    the module's docstring)."""
    now = datetime.now(UTC)
    credentials = key.derived_secret(CREDENTIAL_SEALS)
    check_device_seals(session, report, key.derived_secret(DEVICE_SEALS))
    check_user_seals(session, report, key)
    check_credential_seals(session, report, credentials, now)
    check_session_activity(session, report, credentials, now)
    check_read_grant_seals(session, report, key.derived_secret(READ_GRANT_SEALS), now)
    check_grant_seals(session, report, key.derived_secret(GRANT_SEALS))
