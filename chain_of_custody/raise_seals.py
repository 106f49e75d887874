"""Seals on what an alarm was raised with: whether it is still provisional, the device's note and
position, and its payload's evidence item.

None of these is a column the lifecycle rules read, so the lifecycle seal left them open: a
position changed by SQL sent responders to the wrong place (the control room's list, the alarm's
record and live stream, the escalation's body); a note changed put words in a worker's mouth; an
``evidence_item_id`` pointed at another of the device's items showed that item (another wearer's,
another site's) as the alarm's payload and linked it into the alarm's incident; a ``provisional``
flag cleared left a raised alarm never made whole (no ``alarm_raised`` entry, no payload as
evidence, no incident), and one set again made a whole alarm whole twice. So every write of them
also writes ``raise_seal``, in the same statement: an HMAC-SHA256 under the reach secret over the
alarm's id and :data:`RAISE_COLUMNS` (no statement more: the ack path leaves them as they are).

Each alarm custody entry records the alarm's note and position (``alarms.lifecycle.custody_details``)
and names its payload's item; ``alarm_raised`` records that it is whole. An alarm whose seal does
not hold is put back to what they say (:func:`recorded_raise`), only entries that hold taken (their
hash is their body's and their signature the service key's, ``lifecycle_seals.entry_holds``: one
written or edited in the database is named in a warning and ignored); where no entry records its
note or position (one still provisional, or recorded before they were), to what the device's own
message says when its stored bytes are as the device signed them, checked with the key of a device
row whose own seal holds (:func:`checked_message`), whose bytes then become the payload's evidence;
with neither, to none: no place at all, rather than a wrong one (and, for an alarm made whole, no
kind but an SOS). It is shown so until then (:func:`vouched_view`), and ``evidence verify`` names
it (``alarm_raise_altered``).

A NULL seal is no way round this: once an alarm's custody entries record its note and position
(every entry since they were sealed does), its row must be what they record, sealed or not
(:func:`unsealed_differs`); one that is not is altered (put back, named by ``evidence verify``,
refused by ``evidence upgrade-seals``), and readers are shown no note, position or payload of an
alarm with no seal until the service has checked and sealed it. Tables are read as plain tables:
this sits below ``alarms``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Boolean, Float, column, select, table
from sqlalchemy.orm import Session

from .canonical import canonical_json, unique_keys
from .entries import ChainReport, CustodyAction, Problem, SignedEntry, entry_number, report_unsealed
from .keys import ServiceKey, raw_public_key, verify_signature
from .lifecycle_seals import ENTRY_COLUMNS, alarm_entries, entry_holds, seal_as_listed, warn_of_entry
from .models import CustodyEntry
from .reach_seals import reach_secret
from .row_seals import (
    _DEVICES,
    _ENTRIES,
    DEVICE_SEALS,
    _holds,
    device_seal,
    device_subject,
    row_seal,
    seal_verdict,
)

log = logging.getLogger(__name__)

RAISE_COLUMNS = ("provisional", "note", "lat", "lon", "accuracy_m", "evidence_item_id")
POSITION = ("lat", "lon", "accuracy_m")
# The key of the details of the custody entry that records an alarm put back to this record.
PUT_BACK = "raise_put_back"

_ALARMS = table(
    "alarms",
    column("id"),
    column("device_id"),
    column("source_event_id"),
    column("raise_seal"),
    column("provisional", Boolean),
    column("note"),
    *(column(c, Float) for c in POSITION),
    column("evidence_item_id"),
)
_EVENTS = table(
    "lone_worker_events", column("event_id"), column("device_id"), column("raw"), column("receipt_seal")
)
_ALARM_ACTIONS = (CustodyAction.ALARM_RAISED.value, CustodyAction.ALARM_CHANGED.value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def raise_seal(secret: bytes, alarm_id: str, values: Sequence[Any]) -> str:
    """The seal of what an alarm was raised with: its id and the values of :data:`RAISE_COLUMNS`,
    in order, hex."""
    return row_seal(secret, ("raise", alarm_id, *(_text(v) for v in values)))


def raise_values(row: Any) -> tuple[Any, ...]:
    """The values a row (ORM or plain) holds of :data:`RAISE_COLUMNS`, in order."""
    values = tuple(getattr(row, c) for c in RAISE_COLUMNS)
    return (bool(values[0]), values[1], *(None if v is None else float(v) for v in values[2:5]), values[5])


def raise_holds(secret: bytes, row: Any) -> bool:
    """Whether an alarm row's raise seal holds (no warning: the caller names what it does)."""
    return _holds(raise_seal(secret, str(row.id), raise_values(row)), row.raise_seal)


def vouched_view(secret: bytes, view: dict[str, Any], provisional: bool, seal: str | None) -> dict[str, Any]:
    """An alarm's view (``alarms.feed.alarm_view``) as it may be shown, checked against the row's
    raise seal and provisional flag: one whose seal does not hold shows no note, no position and no
    payload (not a wrong place, nor another's footage) until the service puts it back. Nor does one
    with no seal: a reader cannot check it against its custody record (its seal set to NULL by SQL
    is no licence to show values edited with it), so what it was raised with is shown once the
    service has checked and sealed it (its next change, or ``evidence upgrade-seals``)."""
    if seal is None:
        return {**view, "note": None, "position": None, "evidence_item_id": None}
    place = view.get("position") or {}
    values = (bool(provisional), view.get("note"), *(_number(place.get(c)) for c in POSITION))
    if _holds(raise_seal(secret, str(view["id"]), (*values, view.get("evidence_item_id"))), seal):
        return view
    return {**view, "note": None, "position": None, "evidence_item_id": None}


# -- what custody (and the device) records --------------------------------------------------------


def device_said(raw: bytes | None) -> tuple[Any, ...]:
    """The note and position (lat, lon, accuracy) the device's signed message gave, or Nones."""
    try:
        message = json.loads(raw) if raw else {}
    except ValueError:
        message = {}
    if not isinstance(message, dict):
        message = {}
    body, position = message.get("alarm"), message.get("position")
    note = body.get("note") if isinstance(body, dict) else None
    place = position if isinstance(position, dict) else {}
    return (note if isinstance(note, str) else None, *(_number(place.get(c)) for c in POSITION))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class RecordedRaise:
    """What an alarm's custody entries record of its raise, folded in order (:meth:`take`)."""

    whole: bool = False  # an ``alarm_raised`` entry records it
    item: str | None = None  # the payload the latest entry naming one names
    said: tuple[Any, ...] | None = None  # note and position, as the latest entry recording them
    seq: int | None = None
    put_back: int | None = None  # the first entry recording it put back
    refused: int | None = None  # the first entry naming it that does not hold (read for one alarm)

    def take(self, seq: int, action: str, item_id: str | None, details: dict[str, Any]) -> None:
        self.seq = seq
        self.whole = self.whole or action == CustodyAction.ALARM_RAISED.value
        self.item = item_id or self.item
        if "position" in details and "note" in details:
            place = details["position"] if isinstance(details["position"], dict) else {}
            note = details["note"] if isinstance(details["note"], str) else None
            self.said = (note, *(_number(place.get(c)) for c in POSITION))
        if PUT_BACK in details and self.put_back is None:
            self.put_back = seq

    def values(self, message: bytes | None) -> tuple[Any, ...]:
        """The values of :data:`RAISE_COLUMNS` this record bears out (the device's ``message`` for
        the note and position no entry records)."""
        said = self.said if self.said is not None else device_said(message)
        return (not self.whole, *said, self.item if self.whole else None)

    def differs(self, values: Sequence[Any], message: bytes | None) -> str | None:
        """Why a row with these values is not what this record bears out, or None."""
        for name, row, said in zip(RAISE_COLUMNS, values, self.values(message), strict=True):
            if row != said:
                return f"its {name} is {row!r} but its record says {said!r}"
        return None


def _details(text: str) -> dict[str, Any] | None:
    try:
        d = json.loads(text)
    except ValueError:
        return None
    return d if isinstance(d, dict) and isinstance(d.get("alarm_id"), str) else None


# -- the device's own message, checked ----------------------------------------------------------


def signed_by(raw: bytes, public_key_b64: str | None, device_id: str, event_id: str) -> bool:
    """Whether ``raw`` is a message ``device_id`` signed, as it signed it, with the key
    ``public_key_b64`` (its Ed25519 signature ``sig`` over the canonical JSON of the rest, as
    ``devices.lone_worker_wire`` checks it on arrival), and is the message of ``event_id``."""
    public = raw_public_key(public_key_b64) if public_key_b64 else None
    try:
        message = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, UnicodeError, RecursionError):
        return False
    if public is None or not isinstance(message, dict):
        return False
    signature = message.pop("sig", None)
    if message.get("device_id") != device_id or message.get("event_id") != event_id:
        return False
    try:
        body = canonical_json(message)
    except (ValueError, TypeError, UnicodeEncodeError):
        return False
    return isinstance(signature, str) and verify_signature(public, signature, body)


def sealed_device_key(session: Session, devices_secret: bytes, device_id: str) -> str | None:
    """The public key (base64) of a device whose row's seal holds for its latest custody entry, read
    with it in one statement (as ``devices.ends.load_device`` reads it); None for one unknown, or
    written, planted or put back in the database (a warning names it)."""
    d, e = _DEVICES.c, _ENTRIES.c
    latest = (
        select(e.seq)
        .where(e.item_id == device_subject(devices_secret, device_id))
        .order_by(e.item_seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    columns = (d.id, d.kind, d.status, d.public_key, d.token_hash, d.broker_password_hash, d.site)
    row = session.execute(
        select(*columns, d.assigned_staff_id, d.seal, latest).where(d.id == device_id)
    ).first()
    if row is None:
        return None
    values = (str(row[0]), str(row[1]), str(row[2]), *row[3:8])
    bound = None if row[9] is None else entry_number(row[9])
    if row[9] is not None and bound is None:  # its latest entry's number is no number: nothing binds
        log.warning(
            "a device's latest custody entry is not numbered as the service numbers them",
            extra={"device": device_id},
        )
        return None
    if not seal_verdict(
        device_seal(devices_secret, values, bound), row[8], log, "device", {"device": device_id}
    ):
        return None
    return None if row.public_key is None else str(row.public_key)


@dataclass(frozen=True)
class EnrolledKey:
    """A public key (base64) the device's enrolments record, and until when it vouches (``until``;
    None: the latest): a key vouches only for messages sent before."""

    key: str
    until: datetime | None


def _enrolled_key(row: Any) -> str | None:
    """The public key a (holding) ``device_enrolled`` entry records, or None."""
    if row.action != CustodyAction.DEVICE_ENROLLED.value:
        return None
    try:
        said = json.loads(row.details).get("public_key")
    except (ValueError, AttributeError):
        return None
    return said if isinstance(said, str) else None


def recorded_device_keys(
    session: Session, devices_secret: bytes, public: bytes, device_id: str
) -> list[EnrolledKey]:
    """The public keys (base64) the device's enrolments record in custody entries that hold
    (:func:`entry_holds`), newest first: the keys it has signed with, whatever its row says now.
    Its chain of entries is read in order, and a key's period ends at the next enrolment, at the
    time that entry records; an entry that does not hold (named in a warning) may have been one,
    so it ends the key's period too, at the last entry that holds before it (the time it records
    is not to be trusted), and vouches for no key itself. A gap in the chain (an entry deleted)
    leaves no key enrolled before it vouching for anything: nothing says when it was replaced."""
    q = (
        select(*ENTRY_COLUMNS)
        .where(CustodyEntry.item_id == device_subject(devices_secret, device_id))
        .order_by(CustodyEntry.item_seq)
    )
    keys: list[EnrolledKey] = []
    key: str | None = None  # the key in force, enrolled by an entry that holds
    seen: datetime | None = None  # the time of the last entry that holds while it was in force
    expected = 1
    for row in session.execute(q):
        at_seq = entry_number(row.item_seq)  # none, or no whole number (SQL's): a gap
        if at_seq is None or at_seq != expected:
            keys.clear()
            key = None
        expected = -1 if at_seq is None else at_seq + 1
        if not entry_holds(public, row):
            warn_of_entry(row.seq)
            if key is not None and seen is not None:
                keys.append(EnrolledKey(key, seen))
            key = None
            continue
        at = datetime.fromisoformat(row.at)
        said = _enrolled_key(row)
        if said is not None:
            if key is not None:
                keys.append(EnrolledKey(key, at))
            key = said
        seen = at
    if key is not None:
        keys.append(EnrolledKey(key, None))
    return keys[::-1]


def receipt_seal(secret: bytes, device_id: str, event_id: str, raw: bytes, key_b64: str | None) -> str:
    """The seal of a message's receipt: the service took these bytes (by their SHA-256) as the
    device's message ``event_id``, verified with its key ``key_b64``, the one in force as it came
    (``alarms.device_state.new_event``), hex, under the device rows' seal secret. The key is sealed
    as the service writes it (:func:`written_key`), so a key its enrolment recorded written
    otherwise is the same key here."""
    digest = hashlib.sha256(bytes(raw)).hexdigest()
    return row_seal(secret, ("receipt", device_id, event_id, digest, written_key(key_b64)))


def receipt_holds(secret: bytes, row: Any) -> bool:
    """Whether a stored event row (its ``event_id``, ``device_id``, ``raw``, ``device_public_key`` and
    ``receipt_seal``) is the service's receipt of its bytes as that device's message, under the key
    it names: the seal :func:`receipt_seal` writes holds over them (no warning: the caller names
    what it does)."""
    if row.raw is None or row.device_id is None or row.event_id is None:
        return False
    expected = receipt_seal(
        secret, str(row.device_id), str(row.event_id), bytes(row.raw), row.device_public_key
    )
    return _holds(expected, row.receipt_seal)


def written_key(key_b64: str | None) -> str | None:
    """A public key (base64) as the service writes it: the base64 of its 32 bytes. Base64 leaves two
    bits of a 32-byte key's last character unused, so an enrolment may record the same key written
    otherwise; anything that is not a key is as given."""
    raw = raw_public_key(key_b64) if key_b64 else None
    return key_b64 if raw is None else base64.b64encode(raw).decode()


def received_under(
    session: Session, devices_secret: bytes, device_id: str, event_id: str, raw: bytes, key_b64: str
) -> bool:
    """Whether the service sealed the receipt of these bytes as message ``event_id`` of the device
    while ``key_b64`` was its key in force (:func:`receipt_seal`, read from the event's row): what a
    key since replaced vouches for. A message written into the database after (signed by whoever
    kept the key, dated whenever they like) has no such seal."""
    e = _EVENTS.c
    found = session.scalar(select(e.receipt_seal).where(e.event_id == event_id, e.device_id == device_id))
    return _holds(receipt_seal(devices_secret, device_id, event_id, raw, key_b64), found)


def checked_message(
    session: Session, devices_secret: bytes, public: bytes, device_id: str, event_id: str, raw: bytes | None
) -> bytes | None:
    """``raw``, the stored bytes of the message ``event_id`` of ``device_id``, when they are that
    message as the device signed it (:func:`message_key`), else None, with a warning naming the
    event: bytes edited in the database (another note, another place, another kind) say nothing and
    become no evidence."""
    key = message_key(session, devices_secret, public, device_id, event_id, raw)
    return None if key is None or raw is None else bytes(raw)


def message_key(
    session: Session,
    devices_secret: bytes,
    public: bytes,
    device_id: str,
    event_id: str,
    raw: bytes | None,
    recorded: tuple[str | None, str | None] = (None, None),
) -> str | None:
    """The key (base64) that vouches for ``raw``, the stored bytes of the message ``event_id`` of
    ``device_id``, as the device signed them (:func:`signed_by`), or None, with a warning naming the
    event. ``recorded``: the row's ``device_public_key`` and ``receipt_seal``; the key it names
    when the service's seal of its receipt holds over these bytes and it (:func:`receipt_seal`:
    the key in force as they came, whatever has been written in that column since). Else the key
    of its device row when that row's own seal holds (:func:`sealed_device_key`: one statement),
    else a key its enrolments record in custody entries that hold (:func:`recorded_device_keys`: a
    key rotated since the message, or a row altered in the database), a key since replaced only
    for a message the service received while it was in force, as it sealed its receipt
    (:func:`received_under`: whoever still holds a retired key speaks for the device no more,
    whatever date they sign)."""
    if raw is None:
        return None
    key_b64, seal = recorded
    if (
        key_b64 is not None
        and _holds(receipt_seal(devices_secret, device_id, event_id, raw, key_b64), seal)
        and signed_by(raw, key_b64, device_id, event_id)
    ):
        return key_b64
    current = sealed_device_key(session, devices_secret, device_id)
    if signed_by(raw, current, device_id, event_id):
        return current
    for enrolled in recorded_device_keys(session, devices_secret, public, device_id):
        if enrolled.key == current or not signed_by(raw, enrolled.key, device_id, event_id):
            continue
        if enrolled.until is None or received_under(
            session, devices_secret, device_id, event_id, raw, enrolled.key
        ):
            return enrolled.key
    log.warning(
        "a device's stored message is not as the device signed it (edited in the database, signed "
        "with a key replaced before it was received, or its device's row is not as the service "
        "sealed it): nothing is taken from it",
        extra={"device": device_id, "event_id": event_id},
    )
    return None


def device_message(
    session: Session, devices_secret: bytes, public: bytes, device_id: str, source_event_id: str | None
) -> bytes | None:
    """The bytes of the device's message an alarm was raised by, when they hold
    (:func:`checked_message`); None for the service's own alarms and for bytes that do not."""
    if not source_event_id:
        return None
    raw = session.scalar(select(_EVENTS.c.raw).where(_EVENTS.c.event_id == source_event_id))
    return checked_message(session, devices_secret, public, device_id, source_event_id, raw)


def message_kind(raw: bytes | None) -> str | None:
    """The alarm kind a (checked) device message raised, or None."""
    try:
        message = json.loads(raw) if raw else {}
    except ValueError:
        return None
    body = message.get("alarm") if isinstance(message, dict) else None
    kind = body.get("kind") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None


def raises_alarm(raw: bytes | None) -> bool:
    """Whether a device message raised an alarm (an ``alarm`` body whose action is ``raise``): a
    check-in, a cancel (which names its alarm's kind) or a status message raised none."""
    try:
        message = json.loads(raw) if raw else {}
    except (ValueError, UnicodeError, RecursionError):
        return False
    if not isinstance(message, dict) or message.get("type") != "alarm":
        return False
    body = message.get("alarm")
    return isinstance(body, dict) and body.get("action") == "raise" and isinstance(body.get("kind"), str)


# -- what custody records, in entries that hold -----------------------------------------------------


def recorded_raise(session: Session, alarm_id: str, public: bytes) -> RecordedRaise:
    """What the ledger records of one alarm's raise in entries that hold (:func:`entry_holds`: one
    written or edited in the database is named in a warning and passed over), read for an alarm
    whose seal does not hold or that has none (rare: a scan of the alarm entries that mention it)."""
    found = RecordedRaise()
    for row in session.execute(alarm_entries(alarm_id).order_by(CustodyEntry.seq)):
        d = _details(row.details)
        if d is None or d["alarm_id"] != alarm_id:
            continue
        if not entry_holds(public, row):
            warn_of_entry(row.seq)
            found.refused = found.refused or int(row.seq)
            continue
        found.take(int(row.seq), row.action, row.item_id, d)
    return found


def raise_replay(entries: Iterable[SignedEntry], public: bytes) -> dict[str, RecordedRaise]:
    """What the ledger records of each alarm's raise, in entries that hold (``evidence verify``
    names the others)."""
    out: dict[str, RecordedRaise] = {}
    for e in entries:
        if e.body.action not in _ALARM_ACTIONS:
            continue
        d = _details(e.body.details)
        if d is not None and entry_holds(public, e):
            out.setdefault(d["alarm_id"], RecordedRaise()).take(e.body.seq, e.body.action, e.body.item_id, d)
    return out


def unsealed_differs(said: RecordedRaise | None, values: Sequence[Any]) -> str | None:
    """Why an alarm with no raise seal is altered, or None: once its custody entries record its note
    and position (every entry since they were sealed does), its row must be what they record; one
    whose entries do not (raised before) is not judged here. One whose entries name it but none
    holds (each edited in the database) is no older for that: nothing vouches for its row, which
    is altered (put back to its device's message)."""
    if said is not None and said.seq is None and said.refused is not None:
        return f"custody entries name it (from #{said.refused}) but none holds"
    if said is None or said.said is None:
        return None
    return said.differs(values, None)


# -- evidence verify ------------------------------------------------------------------------------


def _rows(session: Session, *where: Any) -> list[Any]:
    return list(session.execute(select(_ALARMS).where(*where).order_by(_ALARMS.c.id)))


def check_raise_seals(
    session: Session, report: ChainReport, key: ServiceKey, entries: Sequence[SignedEntry]
) -> None:
    """A finding for each alarm whose raise seal does not hold, or that the service found altered and
    put back; a note counting the alarms whose raise is not sealed yet."""
    secret = reach_secret(key)
    recorded = raise_replay(entries, key.public_raw)
    unsealed = 0
    for row in _rows(session):
        said = recorded.get(str(row.id))
        why = None
        if row.raise_seal is None:
            why = unsealed_differs(said, raise_values(row))
            if why is not None:
                why = (
                    "it has no raise seal, and its provisional flag, note, position or payload item is not "
                    f"what its custody entries record ({why}): written by someone other than the service "
                    "(none of them is shown; it is put back to its custody record)"
                )
            else:
                unsealed += 1
        elif not raise_holds(secret, row):
            why = (
                "its raise's seal does not hold: its provisional flag, note, position or payload item was "
                "written by someone other than the service (none of them is shown; it is put back to its "
                "custody record and the device's message)"
            )
        if why is None and said is not None and said.put_back is not None:
            why = (
                "its provisional flag, note, position or payload item was found altered in the database "
                f"and put back (custody entry #{said.put_back})"
            )
        if why is not None:
            report.problems.append(Problem("alarm_raise_altered", f"alarm {row.id}", why))
    report_unsealed(
        report,
        unsealed,
        "alarm(s) have no seal on their note, position and payload yet (raised before they were "
        "sealed): `evidence upgrade-seals` seals those the custody record bears out",
    )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedRaise:
    """An alarm without a raise seal, as ``evidence upgrade-seals`` lists it, with why it is not
    sealed (``refused``), if it is not."""

    alarm_id: str
    values: tuple[Any, ...]
    refused: str | None

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"alarm {self.alarm_id}: note, position and payload; {verdict}"


def unsealed_raises(session: Session, entries: Iterable[SignedEntry], key: ServiceKey) -> list[UnsealedRaise]:
    """Every alarm without a raise seal, against what its custody entries that hold record (and, for
    the note and position no entry records, the device's own message, when it is as the device
    signed it): one that disagrees is refused."""
    rows = _rows(session, _ALARMS.c.raise_seal.is_(None))
    if not rows:
        return []
    recorded, devices_secret = raise_replay(entries, key.public_raw), key.derived_secret(DEVICE_SEALS)
    out = []
    for row in rows:
        said, values = recorded.get(str(row.id)), raise_values(row)
        if row.provisional:
            refused: str | None = "it is still provisional (made whole first: run this again)"
        elif said is None or not said.whole:
            refused = "no custody entry records its raise (run `evidence backfill-custody` first)"
        else:
            message = None
            if said.said is None:  # only the note and position no entry records are the message's
                message = device_message(
                    session, devices_secret, key.public_raw, str(row.device_id), row.source_event_id
                )
            refused = said.differs(values, message)
        out.append(UnsealedRaise(str(row.id), values, refused))
    return out


def seal_raises(session: Session, key: ServiceKey, entries: Iterable[SignedEntry]) -> list[UnsealedRaise]:
    """Seal the raises :func:`unsealed_raises` lists that the ledger bears out, as they stand (a row
    changed since it was read keeps none); all it listed."""
    secret = reach_secret(key)
    listed = unsealed_raises(session, entries, key)
    seal_as_listed(session, _ALARMS, "raise_seal", RAISE_COLUMNS, listed, partial(raise_seal, secret))
    return listed
