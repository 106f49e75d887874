"""Putting back a user row written outside the service, as the custody ledger last recorded it.

A row whose seal does not hold (``accounts.seals``: a password hash swapped, a role raised, a name
changed by SQL) signs nobody in, and the users API refuses to change it (sealing it again would make
what was written into it the service's own). The way back is this repair, run by an administrator
(``evidence user repair``): it shows the row beside what the ledger last recorded of the person
(role, site, whether the account is active, the name where recorded, and whether the row's password
hash is the one whose digest custody holds), and, confirmed, restores those values, sets a new
password (the ledger holds a digest, never a hash, so the old password cannot be put back), ends the
person's tokens and console sessions, seals the row and records on custody who repaired what.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.ledger import Ledger
from chain_of_custody.row_replay import NAME, PASSWORD_DIGESTS, password_digest, user_replay
from chain_of_custody.row_seals import CREDENTIAL_SEALS, USER_SEALS

from .ends import live_credentials, record_ends
from .models import User
from .seals import record_user, user_seal_holds
from .service import AccountError, end_sessions_of, new_password_hash, password_record, revoke_tokens

RESTORED = ("role", "site", "active", NAME)  # what a repair puts back from the ledger


@dataclass(frozen=True)
class Field:
    """One value of the row beside the ledger's last record of it (``seq``: its entry; None: the
    ledger records none)."""

    name: str
    row: Any
    recorded: Any = None
    seq: int | None = None

    @property
    def differs(self) -> bool:
        return self.seq is not None and self.row != self.recorded

    def line(self) -> str:
        custody = "custody records none" if self.seq is None else f"custody {self.recorded!r} (#{self.seq})"
        return f"  {self.name:<9} row {self.row!r}; {custody}{'  <- differs' if self.differs else ''}"


@dataclass(frozen=True)
class RepairPlan:
    """What a repair of one user would do: the row beside the ledger, and why it cannot be done
    (``refused``), if it cannot."""

    user_id: int
    username: str
    seal_holds: bool
    fields: tuple[Field, ...]
    password: str  # the row's hash against the recorded digest, in words
    refused: str | None = None
    restores: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        state = "holds" if self.seal_holds else "does not hold"
        out = [f"user {self.username} (id {self.user_id}): its row's seal {state}"]
        out += [f.line() for f in self.fields]
        out.append(f"  password  {self.password}")
        if self.refused:
            out.append(f"REFUSED: {self.refused}")
        else:
            shown = ", ".join(f"{k} {v!r}" for k, v in self.restores.items()) or "nothing"
            out.append(
                f"a repair restores {shown} as custody records them, sets a new password (custody holds "
                "no hash to put back), ends the user's tokens and console sessions, and seals the row"
            )
        return out


def _field(name: str, row: Any, known: dict[str, tuple[int, Any]] | None) -> Field:
    if known is None or name not in known:
        return Field(name, row)
    seq, recorded = known[name]
    return Field(name, row, recorded, seq)


def repair_plan(session: Session, ledger: Ledger, username: str, *, lock: bool = False) -> RepairPlan:
    """The row of ``username`` beside the ledger's last record of them; ``lock``: the row is locked
    for the rest of the transaction, so what is shown is what is repaired. AccountError (404) when
    there is no such user."""
    q = select(User).where(User.username == username)
    user = session.scalar(q.with_for_update().execution_options(populate_existing=True) if lock else q)
    if user is None:
        raise AccountError(f"no user {username!r}", "no_such_user", 404)
    known = user_replay(ledger.all_entries(session)).get(username)
    holds = user_seal_holds(ledger.key.derived_secret(USER_SEALS), user)
    fields = tuple(_field(f, getattr(user, f), known) for f in RESTORED)
    recorded = known.get("password") if known else None
    digest = password_digest(ledger.key.derived_secret(PASSWORD_DIGESTS), user.password_hash)
    if recorded is None:
        password = "custody records no digest of it"
    elif recorded[1] == digest:
        password = f"the row's hash is the one custody entry #{recorded[0]} records"
    else:
        password = f"the row's hash is NOT the one custody entry #{recorded[0]} records  <- differs"
    refused = None
    if known is None:
        refused = "no custody entry creates this user (a row inserted in the database): nothing to restore"
    elif holds:
        refused = "its seal holds: change it through the users API (PATCH /api/v1/users/{id})"
    else:
        missing = [f.name for f in fields if f.seq is None and f.name != NAME]
        if missing:
            refused = f"custody does not record its {', '.join(missing)}: there is nothing to restore it to"
    restores = {f.name: f.recorded for f in fields if f.seq is not None}
    return RepairPlan(user.id, user.username, holds, fields, password, refused, restores)


def repair_user(
    session: Session, ledger: Ledger, username: str, new_password: str, repaired_by: str
) -> RepairPlan:
    """Put ``username``'s row back as :func:`repair_plan` shows, with ``new_password``, and record it
    as a ``user_changed`` entry by ``repaired_by`` (an administrator whose own row's seal holds),
    with the credentials it ended. AccountError when the plan is refused or the repairer may not."""
    secret = ledger.key.derived_secret(USER_SEALS)
    by = session.scalar(select(User).where(User.username == repaired_by))
    if by is None or by.role != "admin" or not by.active or not user_seal_holds(secret, by):
        raise AccountError(
            f"{repaired_by!r} is not an administrator who can sign in: a repair is done in an "
            "administrator's name (`evidence user add NAME --role admin` makes one)",
            "repairer_refused",
            403,
        )
    if by.username == username:
        raise AccountError("an administrator cannot repair their own row", "repairer_refused", 403)
    plan = repair_plan(session, ledger, username, lock=True)
    if plan.refused:
        raise AccountError(plan.refused, "repair_refused", 409)
    user = session.get(User, plan.user_id)
    assert user is not None
    live = live_credentials(session, user.id)
    for name, value in plan.restores.items():
        setattr(user, name, value)
    user.password_hash = new_password_hash(new_password)
    user.failed_logins, user.locked_until = 0, None
    changes: dict[str, Any] = {
        "repaired": [f.name for f in plan.fields if f.differs] + ["password"],
        **plan.restores,
        **password_record(ledger.key, user),
        "tokens_revoked": revoke_tokens(session, user.id),
        "sessions_ended": end_sessions_of(session, user.id),
    }
    actor = f"user:{by.username}"
    record_user(session, ledger, user, actor, {"user": user.username, "changes": changes})
    record_ends(
        session,
        ledger,
        ledger.key.derived_secret(CREDENTIAL_SEALS),
        live,
        username=user.username,
        actor=actor,
        why="account repaired",
    )
    return plan
