"""Seals on the rows that sign someone in: users (``users``), bearer tokens (``api_tokens``) and
console sessions (``user_sessions``).

A user row's seal is an HMAC-SHA256, under a secret derived from the service key
(``ServiceKey.derived_secret(USER_SEALS)``), over everything in it that decides what the person
may do: id, username, role, site, password hash and whether the account is active, and the full
name continuity reports and statements give them (``chain_of_custody.row_seals.user_values``). The
service seals it at every write of these (``accounts.service``: creation, a change by an
administrator, a password made again at sign-in).
The seal also covers the seq of the latest custody entry about the user (``user_changed`` entries
whose subject is ``chain_of_custody.row_seals.user_subject``: :func:`record_user` writes each and
seals the row again bound to it), read in the statement that loads the row (``User.custody_seq``,
one indexed sub-select). A row written in the database by anyone else (an administrator planted
with a hash of the planter's password, a role or site raised, a hash swapped, a genuine seal copied
onto another row, or a copy of the whole row from before a deactivation, a lower role, a site move
or a new password, put back with the seal that fitted then) has no seal that holds: no sign-in, token or console session reaches it, and nothing done on its
authority (a download link it issued) stands, and no report prints its name. Users made before
seals have none, users sealed before seals covered the name have a version 1 seal, and those
sealed before seals were bound to custody a version 2 seal: ``evidence upgrade-seals`` (its
``seal-users`` step) seals those whose row the custody ledger (and the old seal, for what the
ledger does not record) bears out, each bound to a new entry. A row that no longer holds is put back as the ledger last recorded
it by ``evidence user repair`` (``accounts.repair``).

A row's seal is an HMAC-SHA256, under a secret derived from the service key
(``ServiceKey.derived_secret(CREDENTIAL_SEALS)``, which the database does not hold), over what the
row grants: its kind, its digest (which is also its id), its user and its expiry. A row written in
the database by anyone but the service (a token or session planted for an administrator, a genuine
one moved to another user or given a later expiry) has no seal that holds, and its look-up refuses
it as unknown. Ending a row (``revoked``, ``ended_at``) narrows what it grants, so it is not sealed.

Tokens issued before seals existed have none: ``evidence seal-tokens`` lists them and, with
``--yes``, seals them (as they stand: review the list first). Console sessions open at the upgrade
end there (migration 0029); their people sign in again.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.reach_seals import SiteReach, reach_secret, site_reach_by
from chain_of_custody.row_replay import PASSWORD_DIGESTS, UserRow, password_digest, user_findings, user_replay
from chain_of_custody.row_seals import (
    CREDENTIAL_SEALS,
    DEVICE_SEALS,
    GRANT_SEALS,
    TOKEN,
    UPGRADE_COMMAND,
    UPGRADE_SEALS,
    USER_SEALS,
    USER_SEALS_V1,
    USER_SEALS_V2,
    UserValues,
    credential_seal,
    older_user_seal,
    seal_verdict,
    sealed_assignments,
    user_seal,
    user_subject,
    user_values,
)
from chain_of_custody.row_seals import SESSION as SESSION  # re-exported for accounts.sessions
from chain_of_custody.site_incidents import SiteIncidents

from .models import SITE_SCOPED_ROLES, ApiToken, User

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignInSeals:
    """The secrets a look-up of a sign-in checks seals with: the credential's row (a bearer token, a
    console session) and the row of the user it names."""

    credentials: bytes
    users: bytes
    grants: bytes = b""  # incident assignments' (``assignments_of``)
    reach: bytes = b""  # members of staff's and evidence items' (``reach_of``)
    devices: bytes = b""  # devices' (``reach_of``: a device's site decides reach too)
    older_users: OlderUserSeals | None = None  # to tell a row awaiting the upgrade in the log

    @classmethod
    def of(cls, key: ServiceKey) -> SignInSeals:
        return cls(
            key.derived_secret(CREDENTIAL_SEALS),
            key.derived_secret(USER_SEALS),
            key.derived_secret(GRANT_SEALS),
            reach_secret(key),
            key.derived_secret(DEVICE_SEALS),
            OlderUserSeals.of(key),
        )


class OlderUserSeals:
    """The secrets of the user seals before the current version: never to let anyone in, only to
    tell a row that awaits ``evidence upgrade-seals`` from one written outside the service, so the
    log of a refused sign-in says which (the person is refused the same either way). Derived only
    when a row's seal does not hold: a sign-in whose seal holds pays nothing for them."""

    def __init__(self, key: ServiceKey) -> None:
        self._key = key

    @classmethod
    def of(cls, key: ServiceKey) -> OlderUserSeals:
        return cls(key)

    @cached_property
    def v2(self) -> bytes:
        return self._key.derived_secret(USER_SEALS_V2)

    @cached_property
    def v1(self) -> bytes:
        return self._key.derived_secret(USER_SEALS_V1)


def assignments_of(session: Session, secret: bytes, user: User) -> frozenset[int]:
    """An investigator's active incident assignments whose seal holds, as the access rules read
    them (``Principal.assignments``): a row planted or changed in the database opens nothing."""
    if user.role != "investigator":
        return frozenset()
    return sealed_assignments(session, secret, user.id, log)


def reach_of(session: Session, seals: SignInSeals, user: User) -> SiteReach:
    """What the person's reach by rows rests on (``Principal.reach``): for a security manager with a
    site, the members of staff, devices and incidents of that site whose seal holds (an incident
    moved to their site in the database is not theirs, ``incidents.access.incident_scope``; the
    incidents read when the request first asks); for
    everyone, the secret an evidence item's seal is checked with (``incidents.access.reach_checked``)."""
    if user.role in SITE_SCOPED_ROLES and user.site:
        return manager_reach(session, seals, user.site)
    return SiteReach(secret=seals.reach)


def manager_reach(session: Session, seals: SignInSeals, site: str) -> SiteReach:
    """What a security manager of ``site`` reaches by rows: the members of staff, devices and
    incidents of that site whose seal holds, each other one refused with a warning. The incidents
    are read when the request first asks for them (``SiteIncidents``): a request that reads no
    incident pays nothing for however many the site has."""
    reach = site_reach_by(session, seals.reach, seals.devices, site)
    return replace(reach, sealed_incidents=SiteIncidents(session.get_bind(), seals.reach, site))


def sealed_values(user: User) -> UserValues:
    """What a user row's seal covers, in order."""
    return user_values(
        user.id, user.username, user.role, user.site, user.password_hash, user.active, user.full_name or ""
    )


def seal_user(user: User, key: ServiceKey) -> None:
    """Seal ``user`` as it now stands (flushed: its id is the database's), bound to its latest
    custody entry as last read (``User.custody_seq``). Every write of what :func:`sealed_values`
    covers calls this in the same transaction, and :func:`record_user` again once the change is
    recorded."""
    user.seal = user_seal(key.derived_secret(USER_SEALS), sealed_values(user), user.custody_seq)


def record_user(
    session: Session, ledger: Ledger, user: User, actor: str, details: dict[str, object]
) -> CustodyEntry:
    """Record a change of ``user`` (a ``user_changed`` entry about :func:`user_subject`, in the
    caller's transaction) and seal the row again bound to that entry: from now on only this row
    fits, and a copy taken before the change (active again, its old role, its old password) has a
    seal over an older entry and signs nobody in."""
    session.flush()
    entry = ledger.append(
        session, CustodyAction.USER_CHANGED, actor, item_id=user_subject(user.id), details=details
    )
    set_committed_value(user, "custody_seq", entry.seq)
    seal_user(user, ledger.key)
    return entry


MISSING = "missing: made before seals, or written outside the service"


def awaiting_note(why: str) -> str:
    """What a log line says of a row awaiting the upgrade (``why``: :func:`awaits_upgrade`'s)."""
    return f"its seal is {why}" if why == MISSING else f"it is sealed under {why!r}"


def awaits_upgrade(user: User, older: OlderUserSeals | None) -> str | None:
    """Why the user's row awaits ``evidence upgrade-seals`` (no seal: made before seals; or the
    label of the older seal version that holds for it), or None when it does not (``older`` None:
    only a missing seal is told)."""
    if not user.seal:
        return MISSING
    if older is None:
        return None
    return older_user_seal(older.v2, older.v1, sealed_values(user), user.seal)


def user_seal_holds(secret: bytes, user: User, older: OlderUserSeals | None = None) -> bool:
    """Whether a user row's seal is the one the service made for its values and its latest custody
    entry (read with the row); a warning (naming the user id only, never the password hash) when
    it is not: planted, altered, or an older copy put back; or, told apart (with ``older``), a row
    not sealed yet or under an older seal version, which awaits ``evidence upgrade-seals``: the
    operator reading the log then knows the one command that lets the person in."""
    expected = user_seal(secret, sealed_values(user), user.custody_seq)
    if user.seal and hmac.compare_digest(expected, user.seal):
        return True
    why = awaits_upgrade(user, older)
    if why is None:
        return seal_verdict(expected, user.seal, log, "user", {"user_id": user.id})
    log.warning(
        f"user refused: its row awaits {UPGRADE_SEALS} ({awaiting_note(why)})",
        extra={"user_id": user.id, "seal": why, "awaiting": UPGRADE_COMMAND},
    )
    return False


def name_of(secret: bytes, user: User | None) -> str | None:
    """The full name a record may print for the person: the row's, only while its seal holds (a
    name changed in the database is never printed as theirs); None when the row is missing or its
    seal does not hold, "" when it holds and gives no name."""
    if user is None or not user_seal_holds(secret, user):
        return None
    return user.full_name or ""


def seal_holds(
    secret: bytes, kind: str, token_hash: str, user_id: int, expires_at: datetime, seal: str | None
) -> bool:
    """Whether a row's seal is the one the service made for its values; a warning (naming the kind
    and user, never the credential or its digest) when it is not."""
    expected = credential_seal(secret, kind, token_hash, user_id, expires_at)
    return seal_verdict(expected, seal, log, "credential", {"credential": kind, "user_id": user_id})


@dataclass(frozen=True)
class UnsealedToken:
    """A live bearer token without a seal, as ``evidence seal-tokens`` lists it."""

    token_hash: str
    username: str
    created_at: datetime
    expires_at: datetime

    def line(self) -> str:
        return (
            f"token of {self.username} (digest {self.token_hash[:12]}…), issued {self.created_at.isoformat()}, "
            f"expires {self.expires_at.isoformat()}"
        )


def unsealed_tokens(session: Session, now: datetime | None = None) -> list[UnsealedToken]:
    """The tokens that could still be used but have no seal (issued before seals), oldest first."""
    now = now or datetime.now(UTC)
    rows = session.execute(
        select(ApiToken, User.username)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.seal.is_(None), ApiToken.revoked.is_(False), ApiToken.expires_at > now)
        .order_by(ApiToken.created_at, ApiToken.token_hash)
    )
    return [UnsealedToken(t.token_hash, name, t.created_at, t.expires_at) for t, name in rows]


def seal_tokens(session: Session, secret: bytes, now: datetime | None = None) -> int:
    """Seal every token :func:`unsealed_tokens` lists, as it stands; how many."""
    listed = unsealed_tokens(session, now)
    for found in listed:
        row = session.get(ApiToken, found.token_hash)
        assert row is not None
        row.seal = credential_seal(secret, TOKEN, row.token_hash, row.user_id, row.expires_at)
    return len(listed)


# -- users made before seals --------------------------------------------------------------------

# What a user row must agree with the ledger on before it is sealed as it stands.
_ADOPTED_FIELDS = ("role", "site", "active", "password")
OLD_SEAL = "sealed before seals covered the name"
UNBOUND = "sealed before seals were bound to the latest custody entry"


@dataclass(frozen=True)
class UnsealedUser:
    """A user row without a seal, as ``evidence seal-users`` lists it: what the row says, what the
    custody ledger says, and why it is not sealed (``refused``), if it is not."""

    user_id: int
    username: str
    role: str
    site: str | None
    active: bool
    recorded: str
    refused: str | None
    full_name: str = ""
    old_seal: bool = False  # under a version 1 seal (``OLD_SEAL``): it vouches for all but the name
    unbound: bool = False  # under a version 2 seal (``UNBOUND``): not bound to its latest custody entry

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        if self.old_seal and not self.refused:
            verdict = f"{OLD_SEAL}, which holds: check the name"
        elif self.unbound and not self.refused:
            verdict = f"{UNBOUND}, which holds and matches its custody record"
        return (
            f"user {self.username} (id {self.user_id}): name {self.full_name!r}, role {self.role}, "
            f"site {self.site or '-'}, {'active' if self.active else 'inactive'}; custody: {self.recorded}; "
            f"{verdict}"
        )


def _recorded(known: dict[str, tuple[int, object]] | None) -> str:
    if known is None:
        return "no entry creates this user"
    shown = [
        f"{f} {'(its digest)' if f == 'password' else repr(known[f][1])} (#{known[f][0]})"
        for f in (*_ADOPTED_FIELDS, "full_name")
        if f in known
    ]
    return ", ".join(shown) or "nothing"


def _disagreement(
    known: dict[str, tuple[int, object]] | None,
    row: UserRow,
    *,
    old_seal: bool = False,
    unbound: bool = False,
) -> str | None:
    """Why the ledger does not bear the row out, or None when it records the row's role, site,
    active state and password (digest) exactly as they stand, and its name where it records one.
    Under an ``old_seal`` that holds, only the name is the ledger's to judge: the seal vouches for
    the rest. Under an ``unbound`` one (version 2, not bound to the latest entry) the seal vouches
    only for what the ledger does not record: an older copy of the row put back carries a seal that
    holds, so whatever the ledger records must be as the row stands."""
    found = user_findings({row.username: known} if known is not None else {}, [row])
    if old_seal:
        found = [p for p in found if p.kind == "user_full_name_altered"]
    if found:
        return "; ".join(p.detail for p in found)
    if old_seal or unbound:
        return None
    assert known is not None
    missing = [f for f in _ADOPTED_FIELDS if f not in known]
    if missing:
        return (
            f"custody does not record its {', '.join(missing)} (made before the ledger did): "
            "`evidence backfill-custody` adopts that first"
        )
    return None


def unsealed_users(session: Session, ledger: Ledger, *, lock: bool = False) -> list[UnsealedUser]:
    """Every user without a seal (made before seals) or under a version 1 or 2 seal that holds
    (sealed before seals covered the name, or before they were bound to custody), by id, each against the ledger's replay; ``lock``: their rows
    are locked for the rest of the transaction, so what is judged is sealed."""
    q = select(User).order_by(User.id)
    every = session.scalars(q.with_for_update().execution_options(populate_existing=True) if lock else q)
    secret_v1, secret_v2 = ledger.key.derived_secret(USER_SEALS_V1), ledger.key.derived_secret(USER_SEALS_V2)
    rows = []
    for u in every:
        version = older_user_seal(secret_v2, secret_v1, sealed_values(u), u.seal)
        if u.seal is None or version is not None:
            rows.append((u, version == USER_SEALS_V1, version == USER_SEALS_V2))
    if not rows:
        return []
    replay = user_replay(ledger.all_entries(session))
    secret = ledger.key.derived_secret(PASSWORD_DIGESTS)
    out = []
    for u, old, unbound in rows:
        row = UserRow(
            u.username, u.role, u.site, u.active, password_digest(secret, u.password_hash), u.full_name or ""
        )
        known = replay.get(u.username)
        out.append(
            UnsealedUser(
                u.id,
                u.username,
                u.role,
                u.site,
                u.active,
                _recorded(known),
                _disagreement(known, row, old_seal=old, unbound=unbound),
                u.full_name or "",
                old,
                unbound,
            )
        )
    return out


def seal_users(session: Session, ledger: Ledger) -> list[UnsealedUser]:
    """Seal the users :func:`unsealed_users` lists whose row the ledger bears out, as they stand
    (read under lock: no change slips in between the judgement and the seal); all it listed, those
    not sealed with the reason (``refused``)."""
    listed = unsealed_users(session, ledger, lock=True)
    for found in listed:
        row = session.get(User, found.user_id)
        if not found.refused and row is not None:
            why = UNBOUND if found.unbound else OLD_SEAL if found.old_seal else "made before seals"
            record_user(session, ledger, row, "service", {"user": row.username, "changes": {"sealed": why}})
    return listed
