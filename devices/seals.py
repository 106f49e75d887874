"""Seals on device rows: what a device is and what it may speak for.

A device row's seal is an HMAC-SHA256, under a secret derived from the service key
(``ServiceKey.derived_secret(DEVICE_SEALS)``, which the database does not hold), over its id, kind,
status, the credentials it proves itself with (a lone-worker unit's or camera's public key, a
dock's token digest, a lone-worker unit's broker password hash) and whom and where it speaks for
(its site and its assigned member of staff), and over the seq of the latest custody entry on the
device's keyed subject (``chain_of_custody.row_seals.device_subject``). Every write of the row
goes through :func:`record_device` (enrolment, key or token rotation, a new broker password,
assignment, disabling and enabling: ``devices.service``, ``devices.ends``): it appends the entry
(``device_enrolled``, ``device_changed``, ``device_disabled``, ``device_enabled``) and seals the
row bound to it. Every use reads the seq of the latest entry in the statement that loads the row
(``devices.ends.LATEST_ENTRY``, one probe of the index on ``(item_id, item_seq)``).

A row written in the database by anyone else (a public key swapped for an attacker's, a dock token
planted, a disabled device enabled again, a unit moved to another member of staff), or a copy of
the whole row from before a rotation, a move or a disable put back with the seal that fitted then
(its seal is bound to an older entry), has no seal that holds, and every use refuses it as an
unknown device: a lone-worker message (``alarms.intake``), a dock's upload (``authenticate_dock``),
a camera's clip (``camera_for_clip``, and the key its signature is checked with when the upload
ends, ``ingest.clip_facts.camera_key``), the broker's password file (``broker_accounts``), a
site's reach (``chain_of_custody.reach_seals``); and what the service does on its own account with
the row (``devices.ends.sealed_device``) takes nothing from it: a timer's alarm (offline, missed
check-in) is raised at no site and nobody's, and a payload item recorded later takes neither its
wearer nor its key (``alarms.lifecycle.Lifecycle.device_of``, ``alarms.payloads``).

Devices enrolled before seals have none, and devices sealed before seals were bound to custody a
version 1 seal: both speak for nobody until ``evidence upgrade-seals`` (its ``seal-devices`` step)
seals those whose row the custody ledger bears out (kind, site, assigned staff, public key, and
not active where custody last disabled it), each bound to a new entry. Custody has never recorded
a dock's token digest or a broker password's hash: a version 1 row put back with an older one
before the upgrade is adopted with it, so rotate those credentials after the upgrade where in doubt.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction, SignedEntry
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.registry_replay import DeviceRow, device_findings, device_replay
from chain_of_custody.row_replay import _details
from chain_of_custody.row_seals import (
    DEVICE_SEALS,
    DISABLED,
    ENABLED,
    SealedValues,
    device_seal,
    device_seal_v1,
    device_subject,
    seal_verdict,
)

from .models import Device

log = logging.getLogger(__name__)

_CACHE_MAX = 8192


def device_seal_key(key: ServiceKey) -> bytes:
    """The secret device seals and their subjects are made with, derived from the service key for
    this purpose alone."""
    return key.derived_secret(DEVICE_SEALS)


def sealed_values(device: Device) -> SealedValues:
    """What a device row's seal covers, in order (and its latest custody entry)."""
    return (
        device.id,
        device.kind,
        device.status,
        device.public_key,
        device.token_hash,
        device.broker_password_hash,
        device.site,
        device.assigned_staff_id,
    )


def record_device(
    session: Session,
    ledger: Ledger,
    device: Device,
    action: CustodyAction,
    actor: str,
    details: dict[str, object],
) -> CustodyEntry:
    """Record a write of ``device`` (an ``action`` entry on its subject, in the caller's transaction)
    and seal the row as it now stands bound to that entry: from now on only this row fits, and a
    copy taken before (an old token, key or password, an old site or wearer, active again) has a
    seal over an older entry and speaks for nobody. Every write of what :func:`sealed_values`
    covers ends with this."""
    session.flush()
    secret = device_seal_key(ledger.key)
    entry = ledger.append(session, action, actor, item_id=device_subject(secret, device.id), details=details)
    device.seal = device_seal(secret, sealed_values(device), entry.seq)
    return entry


def device_seal_holds(secret: bytes, values: SealedValues, seal: str | None, bound: int | None) -> bool:
    """Whether a row's seal is the one the service made for its values and its latest custody entry
    (``bound``, read with the row); a warning (naming the device id only, never its key or token
    digest) when it is not."""
    return seal_verdict(device_seal(secret, values, bound), seal, log, "device", {"device": values[0]})


class DeviceSeals:
    """Checks device seals where every message of every device passes (``alarms.intake``): the
    verdict is kept per row as read (its sealed values, its seal and the seq of its latest custody
    entry), so a device's messages cost a dictionary look-up each, and a row that changes (by the
    service or by anyone else) or whose custody moves on is checked afresh, with one warning for a
    seal that does not hold. Nothing else is kept: custody is read with the row, by every message."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._verdicts: dict[tuple[SealedValues, str | None, int | None], bool] = {}
        self._subjects: dict[str, str] = {}

    def holds(self, values: SealedValues, seal: str | None, bound: int | None) -> bool:
        """Whether the row speaks for its device: its seal holds for its values and ``bound``, the
        seq of its latest custody entry as read with it."""
        found = self._verdicts.get((values, seal, bound))
        if found is None:
            found = device_seal_holds(self._secret, values, seal, bound)
            if len(self._verdicts) >= _CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[(values, seal, bound)] = found
        return found

    @property
    def secret(self) -> bytes:
        """The secret the seals are made with (``device_seal_key``)."""
        return self._secret

    def subject(self, device_id: str) -> str:
        """The subject of the device's custody entries (``row_seals.device_subject``), kept."""
        found = self._subjects.get(device_id)
        if found is None:
            found = device_subject(self._secret, device_id)
            if len(self._subjects) >= _CACHE_MAX:
                self._subjects.clear()
            self._subjects[device_id] = found
        return found


# -- devices sealed before seals were bound to custody ------------------------------------------

UNSEALED = "enrolled before seals"
UNBOUND = "sealed before seals were bound to the latest custody entry"


@dataclass(frozen=True)
class UnsealedDevice:
    """A device row without a seal, or under a version 1 seal that holds, as ``evidence
    seal-devices`` lists it, with why it is not sealed (``refused``), if it is not."""

    device_id: str
    kind: str
    status: str
    site: str | None
    staff_id: str | None
    refused: str | None = None
    unbound: bool = False  # under a version 1 seal (``UNBOUND``)

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return (
            f"{self.kind} {self.device_id} ({self.status}), site {self.site or '-'}, "
            f"assigned to {self.staff_id or '-'}; {UNBOUND if self.unbound else UNSEALED}; {verdict}"
        )


@dataclass
class _Recorded:
    """What custody says of one device: its enrolment's kind and public key, and its latest status."""

    seq: int
    kind: Any
    public_key: Any = None
    keyed: bool = False  # whether the latest enrolment recorded a public key
    status: tuple[int, str] | None = None


def _recorded(entries: Iterable[SignedEntry], secret: bytes, device_ids: set[str]) -> dict[str, _Recorded]:
    subjects = {device_subject(secret, d): d for d in device_ids}
    out: dict[str, _Recorded] = {}
    for e in entries:
        d = _details(e)
        if e.body.action == CustodyAction.DEVICE_ENROLLED and d.get("device") in device_ids:
            found = _Recorded(e.body.seq, d.get("kind"), d.get("public_key"), "public_key" in d)
            previous = out.get(str(d["device"]))
            found.status = previous.status if previous else None
            out[str(d["device"])] = found
        elif e.body.action in (DISABLED, ENABLED) and e.body.item_id in subjects:
            device = subjects[str(e.body.item_id)]
            if device in out:
                out[device].status = (e.body.seq, e.body.action)
    return out


def _disagreement(row: Device, known: _Recorded | None, findings: list[str]) -> str | None:
    """Why custody does not bear the row out, or None when it records the row's kind, site,
    assigned staff and public key as they stand, and does not last disable a row that is active."""
    if known is None:
        return "no custody entry enrols it: `evidence backfill-custody` adopts it first"
    why = list(findings)
    if known.kind != row.kind:
        why.append(f"its kind is {row.kind!r} but custody entry #{known.seq} enrols a {known.kind!r}")
    if known.keyed and known.public_key != row.public_key:
        why.append(f"its public key is not the one custody entry #{known.seq} enrols")
    if row.status == "active" and known.status is not None and known.status[1] == DISABLED:
        why.append(f"it is active but custody entry #{known.status[0]} disabled it")
    return "; ".join(why) or None


def unsealed_devices(session: Session, ledger: Ledger, *, lock: bool = False) -> list[UnsealedDevice]:
    """Every device without a seal (enrolled before seals) or under a version 1 seal that holds
    (sealed before seals were bound to custody), by id, each against the ledger; ``lock``: their
    rows are locked for the rest of the transaction, so what is judged is sealed."""
    q = select(Device).order_by(Device.id)
    every = session.scalars(q.with_for_update().execution_options(populate_existing=True) if lock else q)
    secret = device_seal_key(ledger.key)
    rows = [
        d
        for d in every
        if d.seal is None or hmac.compare_digest(device_seal_v1(secret, sealed_values(d)), d.seal)
    ]
    if not rows:
        return []
    entries = list(ledger.all_entries(session))
    replay = device_replay(entries)
    recorded = _recorded(entries, secret, {d.id for d in rows})
    out = []
    for d in rows:
        where = DeviceRow(d.id, d.kind, d.site, d.assigned_staff_id)
        findings = [
            p.detail for p in device_findings({d.id: replay[d.id]} if d.id in replay else {}, [where])
        ]
        known = recorded.get(d.id)
        refused = _disagreement(d, known, findings if known is not None else [])
        out.append(
            UnsealedDevice(d.id, d.kind, d.status, d.site, d.assigned_staff_id, refused, d.seal is not None)
        )
    return out


def seal_devices(session: Session, ledger: Ledger) -> list[UnsealedDevice]:
    """Seal the devices :func:`unsealed_devices` lists whose row the ledger bears out, as they stand
    (read under lock), each bound to a new ``device_changed`` entry; all it listed, those not
    sealed with the reason (``refused``)."""
    listed = unsealed_devices(session, ledger, lock=True)
    for found in listed:
        row = session.get(Device, found.device_id)
        if not found.refused and row is not None:
            why = UNBOUND if found.unbound else UNSEALED
            record_device(
                session,
                ledger,
                row,
                CustodyAction.DEVICE_CHANGED,
                "service",
                {"device": row.id, "changes": {"sealed": why}},
            )
    return listed
