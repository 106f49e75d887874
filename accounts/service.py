"""Account logic: password hashing (argon2), sign-in (throttled, never locked), token issue and lookup."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.reach_seals import SiteReach
from chain_of_custody.row_replay import PASSWORD_DIGESTS, password_digest
from chain_of_custody.row_seals import UPGRADE_COMMAND, UPGRADE_SEALS, USER_SEALS
from storage.db import is_postgres
from storage.digests import secret_digest as token_digest  # a token's, as the routes name it
from storage.errors import NotPermitted, Refused, Unauthenticated

from .ends import TOKEN_LOOKUP, standing_row
from .held_reach import held_now, hold_in
from .models import ROLES, SITE_SCOPED_ROLES, ApiToken, User, UserSession
from .recent_sign_ins import forget_ended
from .seals import (
    SESSION,
    TOKEN,
    OlderUserSeals,
    SignInSeals,
    assignments_of,
    awaiting_note,
    awaits_upgrade,
    credential_seal,
    reach_of,
    record_user,
    seal_user,
    user_seal_holds,
)
from .throttle import SignInThrottle

_hasher = PasswordHasher()
log = logging.getLogger(__name__)


class AccountError(Refused):
    """A refusal with a reason safe to show the person (never which of user or password was wrong)."""

    def __init__(self, message: str, reason: str = "account_refused", status: int = 400) -> None:
        super().__init__(reason, message, status)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user id, name, role and site, as the access rules need them."""

    user_id: int
    username: str
    role: str
    site: str | None
    # Which sign-in this request came by (a digest of the token's or console session's own digest,
    # ``sign_in_mark``): a viewing is kept to the sign-in that opened it. Not part of who they are.
    sign_in: str = field(default="", compare=False)
    # An investigator's incident assignments whose seal holds (``accounts.seals.assignments_of``),
    # read when they sign in for the request: only these open an incident to them (``assignments``).
    signed_in_assignments: frozenset[int] = field(default=frozenset(), compare=False)
    # What their reach by rows rests on (``accounts.seals.reach_of``), read with the assignments: a
    # security manager's site's members of staff and devices whose seal holds, and the secret an
    # evidence item's seal is checked with. The default holds no seal: reach by links only (``reach``).
    signed_in_reach: SiteReach = field(default=SiteReach(), compare=False, repr=False)
    # The credential they signed in with, as its kind (``TOKEN``, ``SESSION``) and stored digest, so
    # a write made on their authority can check it still stands (:func:`stands`); None for a person
    # named by an actor string (``principal_of``), whose user row alone is checked.
    credential: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def actor(self) -> str:
        return f"user:{self.username}"

    @property
    def assignments(self) -> frozenset[int]:
        """The assignments that open incidents to them: in a write transaction acting for them,
        those of the sign-in's still standing there (``held_reach``); else the sign-in's."""
        held = held_now(self)
        return self.signed_in_assignments if held is None else held.assignments

    @property
    def reach(self) -> SiteReach:
        """Their reach by rows: in a write transaction acting for them, the sign-in's members of
        staff and devices still of their site there (``held_reach``); else the sign-in's."""
        held = held_now(self)
        return self.signed_in_reach if held is None else held.reach


class SignInEnded(Unauthenticated):
    """The caller's account was deactivated, or the credential they signed in with revoked, ended or
    expired, after this request signed them in: what it would have done is not done (401)."""


def stands(session: Session, principal: Principal, now: datetime | None = None) -> None:
    """Refuse what ``session``'s transaction would do on ``principal``'s authority unless that
    authority still holds as the request's sign-in found it: the user's row active, with the same
    role (and, for a role seeing one site, the same site), and the token or console session they
    signed in with not revoked, ended or expired. 401 (:class:`SignInEnded`) when the sign-in no
    longer stands; 403 when it stands with another role or site.

    Run first in every write transaction made on a caller's authority (``storage.db.act_for``, set
    by ``accounts.access.require_roles``), one statement. On PostgreSQL it locks the user's row and
    the credential's for share (``FOR SHARE``) until the transaction ends: a deactivation, a role or
    password change (``update_user`` locks the user's row for update, then ends their tokens and
    sessions) or a sign-out (the session's row) made meanwhile waits for this commit, and one
    committed before is seen by this read (``READ COMMITTED``), so none slips in between. The order
    is the user's row, then the credential's, before anything else the transaction takes (the
    ledger head): ``update_user``'s order. On SQLite a write transaction holds the one writer lock
    from its start (``BEGIN IMMEDIATE``), so what is read here is what it commits against.

    What else the sign-in checked (the rows' seals, custody's record of ended credentials, a console
    session's idle end) is not read again: that is what the database held a moment ago; what this
    guards against is the service's own changes to the account in the meantime. Their item-level
    authority (``Principal.assignments``, ``Principal.reach``) is read again in this transaction
    when the access rules first ask for it (``held_reach``): an unassignment or a member of staff
    moved meanwhile narrows what this transaction may touch."""
    now = now or datetime.now(UTC)
    columns: list[Any] = [User.active, User.role, User.site]
    kind, digest = principal.credential or ("", "")
    credential: Any = ApiToken if kind == TOKEN else UserSession if kind == SESSION else None
    if credential is ApiToken:
        columns += [ApiToken.revoked, ApiToken.expires_at]
    elif credential is UserSession:
        columns += [UserSession.ended_at.is_not(None), UserSession.expires_at]
    query = select(*columns).where(User.id == principal.user_id)
    if credential is not None:
        query = query.join(credential, credential.user_id == User.id).where(credential.token_hash == digest)
    found = session.execute(query.with_for_update(read=True)).first()
    active, role, site, *ended = tuple(found) if found is not None else (False, "", None)
    if not active or (ended and (ended[0] or ended[1] <= now)):
        log.info(
            "refused: the caller's sign-in ended after this request's", extra={"user_id": principal.user_id}
        )
        raise SignInEnded(
            "your sign-in ended while this request was made: nothing was done",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if role != principal.role or (role in SITE_SCOPED_ROLES and site != principal.site):
        log.info(
            "refused: the caller's role changed after this request's sign-in",
            extra={"user_id": principal.user_id},
        )
        raise NotPermitted("your role or site changed while this request was made: nothing was done")
    hold_in(session, principal)  # their assignments and reach, as the access rules ask them here


# The key (with the person's id) of the lock :func:`hold_person` takes on PostgreSQL.
HOLD_PERSON_LOCK = 0x45564850


def hold_person(session: Session, user_id: int) -> None:
    """Take the person's lock for the rest of the transaction, before counting what they hold
    against a per-person cap (exports building, download links, redactions queued): two requests of
    theirs at once then count one after the other, so the cap cannot be overshot by a race. On
    PostgreSQL a transaction's advisory lock of their own (``HOLD_PERSON_LOCK``, their id), not
    their row's: every write on their authority holds that row for share already (:func:`stands`),
    and two of them raising it to an exclusive lock at once would wait for each other for ever.
    SQLite's writing transactions are serialised already (``BEGIN IMMEDIATE``): nothing to take."""
    if is_postgres(session):
        session.execute(select(func.pg_advisory_xact_lock(HOLD_PERSON_LOCK, user_id)))


def principal_of(session: Session, actor: str, key: ServiceKey, *, hold: bool = False) -> Principal | None:
    """The person an actor string (``user:<name>``) names, as they are now: None when it names no
    user, one who is deactivated (what they did on their own authority stops with it), or a row
    whose seal does not hold (``accounts.seals``: written outside the service). ``hold``: in a write
    transaction that acts on their authority, their row is held for share until it ends (on
    PostgreSQL, as :func:`stands` holds a caller's), so a deactivation or a new role waits for its
    commit rather than landing between this read and it."""
    if not actor.startswith("user:"):
        return None
    query = select(User).where(User.username == actor.removeprefix("user:"))
    user = session.scalar(query.with_for_update(read=True) if hold else query)
    seals = SignInSeals.of(key)
    if user is None or not user.active or not user_seal_holds(seals.users, user, seals.older_users):
        return None
    grants, reach = assignments_of(session, seals.grants, user), reach_of(session, seals, user)
    return Principal(
        user.id, user.username, user.role, user.site, signed_in_assignments=grants, signed_in_reach=reach
    )


def acting_for(
    session: Session,
    actor: str,
    key: ServiceKey,
    roles: tuple[str, ...],
    *,
    role: str | None = None,
    hold: bool = False,
    acting: bool = False,
) -> Principal | str:
    """The person ``actor`` names as they are now (:func:`principal_of`), when work done later on
    their authority (a package built, a redaction made, a link serving) may still be done for them;
    else why not: no active user whose row's seal holds, or a role not among ``roles`` (or not
    ``role``, the one they asked with). ``hold``: their row is held for share until the write
    transaction ends; ``acting``: the transaction acts for them (``held_reach.hold_in``), so the
    access rules asked in it read their assignments and reach again there, and hold them."""
    person = principal_of(session, actor, key, hold=hold)
    if person is None:
        return f"{actor} no longer signs in (deactivated, or their account altered outside the service)"
    if person.role not in roles or (role is not None and person.role != role):
        return f"{actor} is now {person.role}, not {role or ' or '.join(roles)}"
    if acting:
        hold_in(session, person)
    return person


def new_password_hash(password: str) -> str:
    """The argon2 hash of a new password, refused (AccountError) when it is too short."""
    if len(password) < 12:
        raise AccountError("password must be at least 12 characters")
    return _hasher.hash(password)


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    *,
    key: ServiceKey,
    full_name: str = "",
    site: str | None = None,
) -> User:
    """A new user, its row sealed with ``key`` (``accounts.seals``); the caller records it on custody."""
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    password_hash = new_password_hash(password)
    if session.scalar(select(User).where(User.username == username)):
        raise AccountError(f"user {username!r} exists", "user_exists", 409)
    user = User(username=username, password_hash=password_hash, role=role, full_name=full_name, site=site)
    session.add(user)
    session.flush()
    seal_user(user, key)
    return user


DENIED = "invalid credentials (after repeated failures, wait a minute before trying again)"
"""The one answer to every refused sign-in: unknown user, wrong password, inactive or throttled."""


@cache
def _decoy_hash() -> str:
    """A hash of nothing anyone knows: checking a password against it costs what a real check costs."""
    return _hasher.hash(secrets.token_urlsafe(32))


class SignInRefused(AccountError):
    """The one refusal of a sign-in; ``account`` names the user for the log only when one exists
    (a password typed into the username field must not reach the log), and ``awaiting`` says, for
    the log only, that the user's row awaits ``evidence upgrade-seals`` (why: no seal, or the older
    seal version that holds for it). The client is told neither."""

    def __init__(self, account: str | None, awaiting: str | None = None, user_id: int | None = None) -> None:
        super().__init__(DENIED, "invalid_credentials", 401)
        self.account = account
        self.awaiting = awaiting
        self.user_id = user_id


def _refuse(
    account: str | None = None, awaiting: str | None = None, user_id: int | None = None
) -> SignInRefused:
    return SignInRefused(account, awaiting, user_id)


def refusal_log(exc: AccountError) -> tuple[str, dict[str, object]]:
    """What a refused sign-in adds to its log line: the account (or that there is none) and, when
    the user's row awaits the upgrade, that and the command that adopts it, so an operator whose
    people are refused after an upgrade sees why, and what to run."""
    fields: dict[str, object] = {"username": getattr(exc, "account", None) or "(no such user)"}
    awaiting = getattr(exc, "awaiting", None)
    if awaiting:
        fields.update(user_id=getattr(exc, "user_id", None), seal=awaiting, awaiting=UPGRADE_COMMAND)
        return f": the user's row awaits {UPGRADE_SEALS} ({awaiting_note(awaiting)})", fields
    return "", fields


def password_record(key: ServiceKey, user: User) -> dict[str, str]:
    """What a ``user_changed`` entry records of the user's password as it now stands: its digest
    (``chain_of_custody.row_replay.password_digest``), so that ``evidence verify`` names a password
    hash set in the database. Never the hash, never the password."""
    return {"password_digest": password_digest(key.derived_secret(PASSWORD_DIGESTS), user.password_hash)}


def creation_record(key: ServiceKey, user: User) -> dict[str, object]:
    """What the ``user_changed`` entry that creates a user records: who, role, site, full name (a
    repair puts the row back to these, ``accounts.repair``) and the password's digest."""
    return {
        "user": user.username,
        "created": True,
        "role": user.role,
        "site": user.site,
        "full_name": user.full_name or "",
        **password_record(key, user),
    }


def sign_in(
    session: Session,
    username: str,
    password: str,
    client: str,
    throttle: SignInThrottle,
    key: ServiceKey,
    ledger: Ledger | None = None,
) -> User:
    """Check a password, for the API's token and the console's session alike.

    Every refusal is the same :data:`DENIED` after the same work (one argon2 check), so neither
    the answer nor its timing tells an unknown user from a wrong password or a throttled try.
    Throttling (``accounts.throttle``) slows a guesser and never locks the account. A user row
    whose seal does not hold (``accounts.seals``) is refused as an unknown user.
    """
    # The throttle keeps its state in transactions of its own (every replica shares it, and a refusal
    # must not roll its count back), so this session's read is ended before the throttle writes:
    # SQLite lets one writer in at a time, and that transaction would hold it.
    user = session.scalar(select(User).where(User.username == username))
    session.commit()
    account = user.username if user is not None else None
    if not throttle.allowed(username, client):
        _check(_decoy_hash(), password)
        raise _refuse(account)
    older = OlderUserSeals.of(key)
    known = user is not None and user.active and user_seal_holds(key.derived_secret(USER_SEALS), user, older)
    if not _check(user.password_hash if user is not None and known else _decoy_hash(), password) or not known:
        throttle.failed(username, client)
        awaiting = awaits_upgrade(user, older) if user is not None and user.active and not known else None
        raise _refuse(account, awaiting, user.id if user is not None and awaiting else None)
    assert user is not None
    throttle.succeeded(username, client)
    # A hash made with older parameters is made again, and recorded as any password change (custody
    # holds the digest of the hash in use); without a ledger to record it the old hash stays.
    if ledger is not None and _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
        changes = {"rehashed": True, **password_record(ledger.key, user)}
        record_user(session, ledger, user, "service", {"user": user.username, "changes": changes})
    return user


def _check(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def issue_token(session: Session, user: User, ttl: timedelta, seal_key: bytes) -> tuple[str, datetime]:
    """A new bearer token for ``user``, its row sealed with ``seal_key`` (``accounts.seals``)."""
    token = "evt_" + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + ttl
    digest = token_digest(token)
    seal = credential_seal(seal_key, TOKEN, digest, user.id, expires)
    session.add(ApiToken(token_hash=digest, user_id=user.id, expires_at=expires, seal=seal))
    return token, expires


def resolve_token(
    session: Session, token: str, seals: SignInSeals, now: datetime | None = None
) -> Principal | None:
    """Who a bearer token signs in, or None: unknown, revoked (in its row or on custody: a row put
    back in the database stays revoked, ``accounts.ends``), expired, a token's or user's row whose
    seal does not hold (planted or altered in the database), or a user deactivated."""
    now = now or datetime.now(UTC)
    digest = token_digest(token)
    row = standing_row(session, TOKEN_LOOKUP, TOKEN, digest, seals.credentials, now)
    if row is None:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.active or not user_seal_holds(seals.users, user, seals.older_users):
        return None
    return signed_in_as(session, seals, user, sign_in_mark("token", row.token_hash), (TOKEN, row.token_hash))


def signed_in_as(
    session: Session, seals: SignInSeals, user: User, mark: str, credential: tuple[str, str]
) -> Principal:
    """Who ``user`` is for a request signed in by ``credential`` (its kind and stored digest), with
    their assignments and reach as ``session`` reads them now."""
    return Principal(
        user.id,
        user.username,
        user.role,
        user.site,
        mark,
        assignments_of(session, seals.grants, user),
        reach_of(session, seals, user),
        credential=credential,
    )


def sign_in_mark(kind: str, credential_digest: str) -> str:
    """What names one sign-in (a token, a console session) outside the table that holds it: a digest
    of its stored digest, so a row that keeps the mark can never be used to find the credential."""
    return hashlib.sha256(f"sign-in\x00{kind}\x00{credential_digest}".encode()).hexdigest()


# -- administration -----------------------------------------------------------------------------

EDITABLE = ("full_name", "role", "site", "active", "password", "unlock")


def list_users(session: Session, *, after: str = "", limit: int | None = None) -> list[User]:
    """The users by username, those after ``after``, at most ``limit``."""
    q = select(User).order_by(User.username)
    if after:
        q = q.where(User.username > after)
    return list(session.scalars(q.limit(limit)))


def revoke_tokens(session: Session, user_id: int) -> int:
    """Revoke every live token of a user (after a password change, a role change or deactivation)."""
    rows = list(
        session.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked.is_(False)))
    )
    for row in rows:
        row.revoked = True
    forget_ended(session, TOKEN, [row.token_hash for row in rows])
    return len(rows)


def end_sessions_of(session: Session, user_id: int, now: datetime | None = None) -> int:
    """End every live browser session of a user, as :func:`revoke_tokens` does for bearer tokens."""
    live = UserSession.user_id == user_id, UserSession.ended_at.is_(None)
    forget_ended(session, SESSION, session.scalars(select(UserSession.token_hash).where(*live)))
    result = session.execute(update(UserSession).where(*live).values(ended_at=now or datetime.now(UTC)))
    return int(getattr(result, "rowcount", 0) or 0)  # an UPDATE's result has a row count


def _active_admins(session: Session, secret: bytes) -> int:
    """The administrators who can sign in: active, and their row's seal holds (a planted one does not count)."""
    admins = session.scalars(select(User).where(User.role == "admin", User.active.is_(True)))
    return sum(1 for admin in admins if user_seal_holds(secret, admin))


def update_user(
    session: Session, user_id: int, changes: dict[str, object], key: ServiceKey
) -> tuple[User, dict[str, object]]:
    """Change a user; returns the user and what changed (passwords shown as ``"(changed)"``); the row
    is sealed again with ``key`` (``accounts.seals``).

    A new password, a new role or deactivation revokes the user's tokens and ends their browser
    sessions, so the change takes effect at once. The last active administrator cannot be demoted or deactivated.
    A row whose seal does not hold is not changed: sealing it again would make whatever was written
    into it outside the service (a raised role, a planted password) the service's own.
    """
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise AccountError(f"cannot change {', '.join(sorted(unknown))}")
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise AccountError("no such user")
    secret = key.derived_secret(USER_SEALS)
    if not user_seal_holds(secret, user):
        raise AccountError(
            "this user's row was written outside the service (its seal does not hold): `evidence verify` "
            "names what differs from the custody record, `evidence user repair USERNAME` puts it back as "
            "custody last recorded it (with a new password)",
            "user_seal_broken",
            409,
        )
    done: dict[str, object] = {}
    role = changes.get("role", user.role)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    active = bool(changes.get("active", user.active))
    if (
        user.role == "admin"
        and user.active
        and (role != "admin" or not active)
        and _active_admins(session, secret) <= 1
    ):
        raise AccountError("the last active administrator cannot be demoted or deactivated")
    for name in ("full_name", "role", "site", "active"):
        if name in changes and getattr(user, name) != changes[name]:
            setattr(user, name, changes[name])
            done[name] = changes[name]
    if changes.get("password") is not None:
        user.password_hash = new_password_hash(str(changes["password"]))
        done["password"] = "(changed)"
    if changes.get("unlock"):
        user.locked_until = None
        user.failed_logins = 0
        done["unlocked"] = True
    if {"password", "role", "active"} & done.keys():
        done["tokens_revoked"] = revoke_tokens(session, user.id)
        done["sessions_ended"] = end_sessions_of(session, user.id)
    seal_user(user, key)
    session.flush()
    return user, done
