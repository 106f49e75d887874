"""What awaits ``evidence upgrade-seals`` after a migration that adds or versions a seal: a count, per
kind, of the rows it adopts, cheap enough for every start of the service.

Until the command runs, a user without a seal or under an older seal version cannot sign in, a device
without one is refused as unknown, an item without one reaches managers only through links, and so
on (docs/console.md, "Upgrading in one command"). Nobody is told why at the door (a refusal says no more than
any other), so the service says it where an operator looks: a warning when it starts, a field of
``/healthz``, a banner on an administrator's console pages, and the command's own listing.

The counts are those of the upgrade's sealing steps, read as plain tables as ``evidence verify``
reads them: live bearer tokens (``seal-tokens``), devices (``seal-devices``), users
(``seal-users``: no seal, or a version 1 or 2 seal that still holds; ``seal-devices`` and
``seal-incidents`` likewise, a version 1 seal), active incident assignments and export jobs (``seal-grants``), members of
staff, evidence items and alarms (``seal-reach``), incidents (``seal-incidents``), lone visits (``seal-visits``), devices' last-heard times
(``seal-last-heard``), alarms' lifecycles (``seal-lifecycle``), alarm outbox rows (``seal-outbox``),
devices' low-battery flags and visits written before their seal (``seal-watched``), devices' replay
states stored before their seal (``seal-replay``),
alarms' notes, positions and payloads (``seal-raise``), device messages stored without a receipt seal
(``seal-receipts``: none once it has run, as its ``receipts_sealed`` custody entry says), and evidence
items without the site they were captured under (``seal-capture-sites``: items recorded before
0047, counted until the step has run once, as its ``capture_sites_recorded`` entry says, and not
after: an item whose device's site then the ledger never recorded would be counted for good).
Each is a ``COUNT`` over one table, but users, whose older seals are told apart by two HMACs each,
and devices and incidents, by one.
A row the step would refuse is counted too: it awaits the command's judgement, and the command lists
it with why. The ``record-*`` steps are not counted: the rows they list are ended already and
withhold nothing from anyone (recording them only guards against a copy put back), and counting them
needs every ``credential_ended`` entry besides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, TableClause, func, select
from sqlalchemy.orm import Session

from storage.db import Database

from .alarm_seals import _ALARMS
from .capture_sites import awaiting_capture_sites
from .heard_seals import older_heard
from .incident_seals import older_incidents
from .keys import ServiceKey
from .lifecycle_seals import _ALARMS as _LIFECYCLES
from .outbox_seals import _OUTBOX
from .raise_seals import _ALARMS as _RAISES
from .reach_seals import _ITEMS, _STAFF, reach_secret
from .receipt_upgrade import awaiting_receipts
from .replay_seals import older_replays
from .row_seals import (
    _ASSIGNMENTS,
    _DEVICES,
    _EXPORT_JOBS,
    _TOKENS,
    _USERS,
    DEVICE_SEALS,
    UPGRADE_COMMAND,
    USER_SEALS_V1,
    USER_SEALS_V2,
    USER_VALUE_COLUMNS,
    _holds,
    device_seal_v1,
    older_user_seal,
    row_user_values,
)
from .visit_seals import older_visits
from .watched_seals import older_watched


@dataclass(frozen=True)
class Kind:
    """A kind of row the upgrade adopts: its name in the log and ``/healthz``, what people call one
    and several, the step of ``upgrade-seals`` that adopts it, and what waits for that (said so
    that it reads after one or several)."""

    name: str
    one: str
    many: str
    step: str
    withheld: str

    def noun(self, n: int) -> str:
        return self.one if n == 1 else self.many


KINDS = (
    Kind("users", "user", "users", "seal-users", "cannot sign in"),
    Kind(
        "devices",
        "device",
        "devices",
        "seal-devices",
        "cannot be heard from (refused as unknown, alarms too)",
    ),
    Kind("api_credentials", "bearer token", "bearer tokens", "seal-tokens", "cannot sign anyone in"),
    Kind(
        "incident_assignments",
        "incident assignment",
        "incident assignments",
        "seal-grants",
        "cannot open an incident to its investigator",
    ),
    Kind("export_jobs", "export job", "export jobs", "seal-grants", "cannot give a download link"),
    Kind(
        "staff",
        "member of staff",
        "members of staff",
        "seal-reach",
        "cannot put footage in their site managers' reach",
    ),
    Kind(
        "evidence_items",
        "evidence item",
        "evidence items",
        "seal-reach",
        "can reach managers only through links",
    ),
    Kind("alarms", "alarm", "alarms", "seal-reach", "cannot reach their site's managers"),
    Kind(
        "item_capture_sites",
        "evidence item recorded before capture sites",
        "evidence items recorded before capture sites",
        "seal-capture-sites",
        "may reach the managers of whatever site their device is enrolled at now",
    ),
    Kind(
        "incidents",
        "incident",
        "incidents",
        "seal-incidents",
        "cannot reach their site's managers nor link clips by their window",
    ),
    Kind(
        "lone_worker_visits",
        "lone visit",
        "lone visits",
        "seal-visits",
        "lend no wearer to a missed check-in and clear no alarm at their end",
    ),
    Kind(
        "lone_worker_states",
        "device's last-heard time",
        "devices' last-heard times",
        "seal-last-heard",
        "count as silent once due",
    ),
    Kind(
        "alarm_lifecycles",
        "alarm's lifecycle",
        "alarms' lifecycles",
        "seal-lifecycle",
        "are taken as they stand only while their custody record agrees",
    ),
    Kind("alarm_outbox", "alarm outbox row", "alarm outbox rows", "seal-outbox", "are taken as they stand"),
    Kind(
        "device_watches",
        "device's low-battery flag and visit",
        "devices' low-battery flags and visits",
        "seal-watched",
        "are taken as they stand only while their alarms and visits bear them out",
    ),
    Kind(
        "device_replay_states",
        "device's replay state stored before its seal",
        "devices' replay states stored before their seal",
        "seal-replay",
        "are taken only as far as their device's received messages bear them out",
    ),
    Kind(
        "device_receipts",
        "device message stored before receipt seals",
        "device messages stored before receipt seals",
        "seal-receipts",
        "are vouched for by no key replaced at re-enrolment since",
    ),
    Kind(
        "alarm_raises",
        "alarm's note, position and payload",
        "alarms' notes, positions and payloads",
        "seal-raise",
        "are shown as they stand",
    ),
)


@dataclass(frozen=True)
class AwaitingUpgrade:
    """How many rows of each kind (:data:`KINDS`, by name) await ``evidence upgrade-seals``, counted
    at ``counted_at``."""

    counts: dict[str, int]
    counted_at: datetime

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def awaiting(self) -> list[tuple[Kind, int]]:
        """The kinds with rows awaiting, each with its count, in :data:`KINDS` order."""
        return [(k, self.counts[k.name]) for k in KINDS if self.counts.get(k.name)]

    def fields(self) -> dict[str, int]:
        """The counts above zero, by kind name: what the log line carries."""
        return {k.name: n for k, n in self.awaiting()}

    def lines(self) -> list[str]:
        """A line a kind, for people: how many, what waits, and the step that adopts them."""
        return [f"{n} {k.noun(n)} {k.withheld} (its step: {k.step})" for k, n in self.awaiting()]

    def summary(self) -> str:
        """One sentence for the command line: the counts and the command, or that nothing awaits."""
        if not self:
            return "No rows await `evidence upgrade-seals`: every seal is of the current version."
        said = ", ".join(f"{n} {k.noun(n)}" for k, n in self.awaiting())
        return f"Seals awaiting upgrade: {said}. Run `{UPGRADE_COMMAND}` to adopt them."


def _unsealed(session: Session, table: TableClause, seal: str, *where: ColumnElement[bool]) -> int:
    """How many rows of ``table`` have no ``seal`` (and meet ``where``): one ``COUNT``."""
    q = select(func.count()).select_from(table).where(table.c[seal].is_(None), *where)
    return int(session.scalar(q) or 0)


def _users(session: Session, key: ServiceKey) -> int:
    """Users without a seal, and those under a version 1 or 2 seal that holds (two HMACs a row)."""
    unsealed = _unsealed(session, _USERS, "seal")
    secret_v2, secret_v1 = key.derived_secret(USER_SEALS_V2), key.derived_secret(USER_SEALS_V1)
    seal = _USERS.c.seal
    older = 0
    for *row, sealed in session.execute(select(*USER_VALUE_COLUMNS, seal).where(seal.is_not(None))):
        if older_user_seal(secret_v2, secret_v1, row_user_values(row), sealed) is not None:
            older += 1
    return unsealed + older


def _devices(session: Session, key: ServiceKey) -> int:
    """Devices without a seal, and those under a version 1 seal that holds (one HMAC a row)."""
    secret, d = key.derived_secret(DEVICE_SEALS), _DEVICES.c
    columns = (d.id, d.kind, d.status, d.public_key, d.token_hash, d.broker_password_hash, d.site)
    older = sum(
        1
        for *row, staff, sealed in session.execute(
            select(*columns, d.assigned_staff_id, d.seal).where(d.seal.is_not(None))
        )
        if _holds(device_seal_v1(secret, (str(row[0]), str(row[1]), str(row[2]), *row[3:], staff)), sealed)
    )
    return _unsealed(session, _DEVICES, "seal") + older


def awaiting_upgrade(session: Session, key: ServiceKey, now: datetime | None = None) -> AwaitingUpgrade:
    """Count, per kind, the rows ``evidence upgrade-seals`` would list in its sealing steps (read
    only: nothing is written)."""
    now = now or datetime.now(UTC)
    t, a = _TOKENS.c, _ASSIGNMENTS.c
    counts = {
        "users": _users(session, key),
        "devices": _devices(session, key),
        "api_credentials": _unsealed(session, _TOKENS, "seal", t.revoked.is_(False), t.expires_at > now),
        "incident_assignments": _unsealed(session, _ASSIGNMENTS, "seal", a.unassigned_at.is_(None)),
        "export_jobs": _unsealed(session, _EXPORT_JOBS, "seal"),
        "staff": _unsealed(session, _STAFF, "seal"),
        "evidence_items": _unsealed(session, _ITEMS, "reach_seal"),
        "alarms": _unsealed(session, _ALARMS, "seal"),
        "item_capture_sites": awaiting_capture_sites(session, key.public_raw),
        "incidents": len(older_incidents(session, reach_secret(key))),
        "lone_worker_visits": len(older_visits(session, reach_secret(key))),
        "lone_worker_states": len(older_heard(session)),
        "alarm_lifecycles": _unsealed(session, _LIFECYCLES, "lifecycle_seal"),
        "alarm_outbox": _unsealed(session, _OUTBOX, "seal"),
        "device_watches": len(older_watched(session)),
        "device_replay_states": len(older_replays(session)),
        "alarm_raises": _unsealed(session, _RAISES, "raise_seal"),
        "device_receipts": awaiting_receipts(session, key.public_raw),
    }
    return AwaitingUpgrade(counts, now)


class UpgradeWatch:
    """This process's latest count (:func:`awaiting_upgrade`), for what must not query on every call
    (``/healthz``, every console page): counted at start-up, and again by the housekeeping pass for
    as long as something awaits, so the banner and the health field clear once an operator has run
    the command, without a restart. Once nothing awaits it stops counting: the service seals every
    row it writes, and a seal removed by SQL afterwards is ``evidence verify``'s to find."""

    def __init__(self, db: Database, key: ServiceKey, clock: Callable[[], datetime] | None = None) -> None:
        self._db, self._key = db, key
        self._clock = clock or (lambda: datetime.now(UTC))
        self._latest: AwaitingUpgrade | None = None
        self._lock = threading.Lock()

    @property
    def latest(self) -> AwaitingUpgrade | None:
        """The last count, or None before the first."""
        return self._latest

    def count(self) -> AwaitingUpgrade:
        """Count now, and keep it."""
        with self._db.session() as session:
            found = awaiting_upgrade(session, self._key, self._clock())
        with self._lock:
            self._latest = found
        return found

    def recount_while_awaiting(self) -> AwaitingUpgrade | None:
        """Count again if the last count found rows awaiting (or there was none yet)."""
        latest = self._latest
        if latest is not None and not latest:
            return latest
        return self.count()
