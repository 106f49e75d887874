"""The control room's reads of one alarm and of how the room answers: the record an operator opens
(the device's messages byte for byte, the position trail, the signed payload and the voice memo with
their custody trails) and the answer times behind the performance figures.

The API routes (``alarms.api``) and the console's pages both call these, so a page shows what the
API gives the same person. The position trail is ``alarms.trails``'.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, case, cast, extract, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from accounts.access import SiteViewer, sees_site
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import TRAIL_PAGE, Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.raise_seals import checked_message, sealed_device_key, signed_by
from devices.lone_worker_wire import parse_time
from devices.seals import device_seal_key
from incidents.access import Viewer, readable_trail
from storage.db import is_postgres

from .alarm_keys import shown_keys
from .feed import shown_view
from .models import AlarmRecord, LoneWorkerEvent
from .pages import DevicesWord, in_pages
from .performance import PERIODS, TARGETS, Answer, Summary
from .reach import alarm_sealed, by_site, device_items, readable_scope
from .standing import vouched_view
from .trails import trail_page

log = logging.getLogger(__name__)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


MESSAGES = 200  # the most of the device's messages an alarm's record holds


@dataclass(frozen=True)
class MessageKeys:
    """What a stored device message is checked with before a record shows it: the device rows'
    seal secret and the custody key (``chain_of_custody.raise_seals.checked_message``)."""

    device_secret: bytes
    custody_public: bytes
    key: ServiceKey | None = None  # the alarm's own standing is judged with it (``standing.vouched_view``)

    @classmethod
    def of(cls, key: ServiceKey) -> MessageKeys:
        return cls(device_seal_key(key), key.public_raw, key)


def _as_signed(session: Session, keys: MessageKeys, e: LoneWorkerEvent, current: str | None) -> bool:
    """Whether the stored bytes are the message as the device signed it: with its sealed row's key
    (read once a record), else any key its enrolments record (a key rotated since)."""
    if signed_by(e.raw, current, e.device_id, e.event_id):
        return True
    return (
        checked_message(session, keys.device_secret, keys.custody_public, e.device_id, e.event_id, e.raw)
        is not None
    )


def _signed_body(raw: bytes) -> dict[str, Any]:
    """The (checked) bytes of a device message, parsed; empty when they are not a JSON object."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeError, RecursionError):
        return {}
    return message if isinstance(message, dict) else {}


def _about(message: dict[str, Any], event_id: str, view: dict[str, Any]) -> bool:
    """Whether a device message (as its device signed it) is about the alarm: it raised the alarm or
    cancels it, or it is a check-in of the alarm's visit."""
    source, visit = view.get("source_event_id"), view.get("visit_id")
    body = message.get(str(message.get("type")))
    body = body if isinstance(body, dict) else {}
    if source and message.get("type") == "alarm":
        if body.get("action") == "raise" and event_id == source:
            return True
        if body.get("action") == "cancel" and body.get("ref_event_id") == source:
            return True
    return bool(visit) and message.get("type") == "checkin" and body.get("visit_id") == visit


def _signed_time(text: Any) -> str | None:
    try:
        return _iso(parse_time(text)) if isinstance(text, str) else None
    except ValueError:
        return None


def _shown(session: Session, e: LoneWorkerEvent, message: dict[str, Any] | None) -> dict[str, Any]:
    """A message as the record lists it: what it is (type, action, kind, sequence, time) as its
    device signed it, and its payload item only when it is its device's record of these bytes;
    for bytes that are not as signed (``message`` None), none of that, as none of it is the
    device's word. When it came (``received_at``, ``late``) is the service's to say: its row's."""
    raw = bytes(e.raw) if e.raw is not None else b""
    out: dict[str, Any] = {
        "event_id": e.event_id,
        "type": None,
        "action": None,
        "kind": None,
        "seq": None,
        "occurred_at": None,
        "received_at": _iso(e.received_at),
        "late": e.late,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "evidence_item_id": None,
        "holds": message is not None,
        "payload": None,
    }
    if message is None:
        return out
    type_ = message.get("type")
    body = message.get(str(type_))
    body = body if isinstance(body, dict) else {}
    item = None
    if e.evidence_item_id is not None:
        found = session.get(EvidenceItem, e.evidence_item_id)
        ok = found is not None and found.source_device_id == e.device_id and found.sha256 == out["sha256"]
        item = e.evidence_item_id if ok else None
    try:
        payload = json.dumps(json.loads(raw), indent=1, sort_keys=True)
    except ValueError:
        payload = raw.decode("utf-8", "replace")
    occurred = message.get("occurred_at") or message.get("sent_at")
    out.update(
        type=type_ if isinstance(type_, str) else None,
        action=body.get("action") if isinstance(body.get("action"), str) else None,
        kind=body.get("kind") if isinstance(body.get("kind"), str) else None,
        seq=message.get("seq") if isinstance(message.get("seq"), int) else None,
        occurred_at=_signed_time(occurred),
        evidence_item_id=item,
        payload=payload,
    )
    return out


def _message_rows(session: Session, view: dict[str, Any]) -> Iterator[LoneWorkerEvent]:
    """The alarm's device's rows that name the alarm or its keys, oldest received first, in pages
    (``alarms.pages``: ``received_at`` is no seal's, so it orders, it never decides what is shown)."""
    clauses = [LoneWorkerEvent.alarm_id == view["id"]]
    if view.get("source_event_id"):
        clauses.append(LoneWorkerEvent.event_id == view["source_event_id"])
        clauses.append(LoneWorkerEvent.ref_event_id == view["source_event_id"])
    if view.get("visit_id"):
        clauses.append(LoneWorkerEvent.visit_id == view["visit_id"])
    q = select(LoneWorkerEvent).where(LoneWorkerEvent.device_id == view["device_id"], or_(*clauses))
    return in_pages(session, q, LoneWorkerEvent.received_at, LoneWorkerEvent.event_id, entities=True)


def alarm_messages(
    session: Session, view: dict[str, Any], keys: MessageKeys
) -> tuple[list[dict[str, Any]], bool]:
    """The device's messages about this alarm (its raise, cancels, the visit's check-ins), byte for
    byte, the first ``MESSAGES`` of them; and whether there were more (a device may check in all day).

    An event row's columns but its device, event id and bytes are no seal's (its receipt seal covers
    those and the key), so a row is found by them (its ``alarm_id``, ``ref_event_id``,
    ``visit_id``: written by SQL, they could name any alarm) only among the alarm's device's rows,
    and listed only when its bytes, as the device signed them, are about this alarm
    (:func:`_about`); what it says is shown from those bytes (:func:`_shown`), never its columns.
    Rows are judged before any is counted: the device's word (``alarms.pages.DevicesWord``: the
    service's receipts of its messages, or bytes its keys signed) comes first, up to ``MESSAGES``,
    and only the places left are given to rows that are not (written or edited in the database,
    listed with ``holds`` false and nothing of what they say), so rows written with early receipt
    times cannot crowd the device's messages out of the record."""
    current: str | None = None
    devices_word = DevicesWord(session, keys.device_secret, keys.custody_public)
    genuine: list[dict[str, Any]] = []
    others: list[LoneWorkerEvent] = []
    left_out = 0
    for e in _message_rows(session, view):
        if not genuine and not others:
            current = sealed_device_key(session, keys.device_secret, view["device_id"])
        if devices_word(e):
            message = _signed_body(bytes(e.raw)) if _as_signed(session, keys, e, current) else None
            if message is not None and not _about(message, e.event_id, view):
                _not_about(view, e)
            elif len(genuine) < MESSAGES:
                genuine.append(_shown(session, e, message))
            else:
                left_out += 1
                break
        elif len(others) < 2 * MESSAGES:
            others.append(e)
        else:
            left_out += 1
    out = genuine
    for i, e in enumerate(others):
        if len(out) == MESSAGES:
            left_out += len(others) - i
            break
        message = _signed_body(bytes(e.raw)) if _as_signed(session, keys, e, current) else None
        if message is not None and not _about(message, e.event_id, view):
            _not_about(view, e)
            continue
        out.append(_shown(session, e, message))
    return out, left_out > 0


def _not_about(view: dict[str, Any], e: LoneWorkerEvent) -> None:
    log.warning(
        "a device message's row names an alarm its signed bytes are not about: not listed",
        extra={"alarm": view["id"], "event_id": e.event_id},
    )


@dataclass(frozen=True)
class ItemRecord:
    """An evidence item's identity and its custody trail (metadata only: never its bytes)."""

    id: str
    kind: str
    sha256: str
    size: int
    content_type: str
    status: str
    custody: list[dict[str, Any]]
    # The item_seq the trail's next page starts after (``GET /evidence/{id}/custody?after=``), when
    # there is more than one page: a voice memo played many times has that many entries.
    custody_next_after: int | None = None


def item_record(session: Session, item_id: str | None, viewer: Viewer | None = None) -> ItemRecord | None:
    """The item's metadata and the first page of its custody trail (``TRAIL_PAGE`` entries, as
    ``GET /evidence/{id}/custody`` pages it), as ``viewer`` may read it (``incidents.access``)."""
    if not item_id:
        return None
    item = session.get(EvidenceItem, item_id)
    if item is None:
        return None
    page = Ledger.item_entries_page(session, item.id, 0, TRAIL_PAGE + 1)
    return ItemRecord(
        item.id,
        item.kind,
        item.sha256,
        item.size,
        item.content_type,
        item.status,
        readable_trail(session, viewer, item.id, [e.to_json() for e in page[:TRAIL_PAGE]]),
        page[TRAIL_PAGE - 1].body.item_seq if len(page) > TRAIL_PAGE else None,
    )


def answer_times(session: Session, since: datetime, viewer: SiteViewer | None, secret: bytes) -> list[Answer]:
    """Every alarm the viewer reads (``alarms.reach``) that turned red since ``since``: when it
    needed someone (SOS and man-down on arrival, an amber alarm when its timer ran out) and when a
    person first took it (acknowledged, or resolved by an operator without acknowledging first)."""
    scope = readable_scope(
        session, secret, viewer, AlarmRecord.red_at.is_not(None), AlarmRecord.red_at >= since
    )
    rows = session.execute(
        select(
            AlarmRecord.red_at, AlarmRecord.acknowledged_at, AlarmRecord.resolved_at, AlarmRecord.resolved_by
        )
        .where(*scope)
        .order_by(AlarmRecord.red_at)
    ).all()
    out: list[Answer] = []
    for red_at, acked, resolved, by in rows:
        assert red_at is not None  # the query takes red alarms only
        answered = acked or (resolved if by and by.startswith("user:") else None)
        out.append(Answer(red_at, answered))
    return out


def _answered() -> ColumnElement[Any]:
    """When a person first took the alarm, as :func:`answer_times` has it, in SQL."""
    return case(
        (AlarmRecord.acknowledged_at.is_not(None), AlarmRecord.acknowledged_at),
        (func.substr(AlarmRecord.resolved_by, 1, 5) == "user:", AlarmRecord.resolved_at),
        else_=None,
    )


def _micros_between(session: Session, start: Any, end: Any) -> ColumnElement[int]:
    """Whole microseconds from ``start`` to ``end``, exactly (``timedelta`` arithmetic, in SQL).
    SQLite keeps ``YYYY-MM-DD HH:MM:SS.ffffff`` text and reckons its own times in milliseconds, so
    the seconds and the microseconds are read from the text apart."""
    if is_postgres(session):
        return cast(func.round(extract("epoch", end - start) * 1_000_000), BigInteger)

    def micros(at: Any) -> ColumnElement[int]:
        seconds = cast(func.strftime("%s", func.substr(at, 1, 19)), Integer)
        return seconds * 1_000_000 + cast(func.substr(at, 21, 6), Integer)

    return micros(end) - micros(start)


def answer_summaries(
    session: Session, now: datetime, viewer: SiteViewer | None, secret: bytes
) -> list[Summary]:
    """``performance.summaries`` of :func:`answer_times` over the last 30 days, figured in the
    database: one row of counts for the three periods, then each period's median and 95th
    percentile answer time as one row of its own (``ORDER BY ... OFFSET``), so the service never
    holds the period's alarms, however many there were. A reader by site counts only the alarms
    whose seal holds (``alarms.reach.readable_scope``: one more read, of the rows' seals)."""
    longest = timedelta(seconds=max(seconds for seconds, _ in TARGETS))
    answered = _answered()
    took = _micros_between(session, AlarmRecord.red_at, answered)
    scope = readable_scope(
        session,
        secret,
        viewer,
        AlarmRecord.red_at.is_not(None),
        AlarmRecord.red_at >= now - max(PERIODS.values()),
    )

    def count(*conditions: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

    columns = []
    for span in PERIODS.values():
        within = AlarmRecord.red_at >= now - span
        late = AlarmRecord.red_at < now - longest  # unanswered, and beyond the longest target
        columns += [
            count(within, answered.is_not(None)),
            count(within, answered.is_(None), late),
            count(within, answered.is_(None), AlarmRecord.red_at >= now - longest),
            *(count(within, answered.is_not(None), took <= int(t * 1_000_000)) for t, _ in TARGETS),
        ]
    counts = session.execute(select(*columns).where(*scope)).one()
    out = []
    for n, (name, span) in enumerate(PERIODS.items()):
        taken, missed, pending, *within_targets = (int(v) for v in counts[5 * n : 5 * n + 5])
        decided = taken + missed
        if not decided:
            out.append(Summary(name, 0, pending, None, None, None, None))
            continue
        times = select(took).where(*scope, AlarmRecord.red_at >= now - span, answered.is_not(None))
        median, p95 = (_ranked(session, times, took, taken, decided, q) for q in (0.5, 0.95))
        shares = [w / decided for w in within_targets]
        out.append(Summary(name, decided, pending, shares[0], shares[1], median, p95))
    return out


def _ranked(
    session: Session, times: Any, took: ColumnElement[int], taken: int, decided: int, q: float
) -> float:
    """The nearest-rank ``q`` percentile (as ``performance._rank``) of ``decided`` alarms, of which
    ``taken`` were answered in the times ``times`` selects and the rest never (slower than any)."""
    index = max(0, math.ceil(q * decided) - 1)
    if index >= taken:
        return math.inf
    micros = session.scalar(times.order_by(took).offset(index).limit(1))
    return max(0.0, int(micros or 0) / 1_000_000)


def voice_memo_item(
    session: Session, alarm_id: str, viewer: SiteViewer | None, secret: bytes
) -> EvidenceItem | None:
    """The alarm's voice memo, if it has one that is still stored, the alarm is the viewer's, and its
    row's seal vouches for the memo (an item pointed at by SQL is nobody's memo)."""
    row = visible_alarm(session, alarm_id, viewer, secret)
    if row is None or row.voice_memo_item_id is None:
        return None
    if not by_site(viewer) and not alarm_sealed(secret, row):
        return None
    item = session.get(EvidenceItem, row.voice_memo_item_id)
    return item if item is not None and item.status == "stored" else None


def visible_alarm(
    session: Session, alarm_id: str, viewer: SiteViewer | None, secret: bytes
) -> AlarmRecord | None:
    """The alarm if the viewer may see it (its site is theirs, ``accounts.access``, and a reader by
    site only through a row the service sealed, ``alarms.reach``); None both when missing and when
    hidden, so nobody learns that it exists. ``viewer`` None: the service itself."""
    row = session.get(AlarmRecord, alarm_id)
    if row is None or (viewer is not None and not sees_site(viewer, row.site)):
        return None
    if by_site(viewer) and not alarm_sealed(secret, row):
        return None
    return row


def alarm_record(
    session: Session, alarm_id: str, now: datetime, viewer: Viewer | None, secret: bytes, keys: MessageKeys
) -> dict[str, Any] | None:
    """Everything the control room may know of one alarm, JSON-ready; None when there is no such
    alarm or it is not the viewer's to see. ``secret``: the rows' reach seals; ``keys``: what the
    device's stored messages are checked with."""
    row = visible_alarm(session, alarm_id, viewer, secret)
    if row is None:
        return None
    view = shown_view(secret, row) if keys.key is None else vouched_view(session, keys.key, row, now)
    if view is None:  # a row nothing of the service's vouches for (written by SQL)
        return None
    vouched = by_site(viewer) or alarm_sealed(secret, row)  # a memo pointed at by SQL is not its memo
    payload_of = device_items(session, secret, row.device_id, [view["evidence_item_id"]]) if vouched else []
    payload = item_record(session, payload_of[0], viewer) if payload_of else None  # nor another's clip
    memo = item_record(session, view["voice_memo_item_id"], viewer) if vouched else None
    # Found by the keys the service vouches for: a source event or visit written by SQL finds nothing.
    keyed = dict(view)
    shown_keys(session, secret, keys.custody_public, keyed, row)
    messages, more_messages = alarm_messages(session, keyed, keys)
    points, more_points = trail_page(session, view, now)
    if more_messages or more_points:
        log.info(
            "alarm record cut short",
            extra={"alarm": alarm_id, "messages_more": more_messages, "trail_more": more_points},
        )
    return {
        "alarm": view,
        "messages": messages,
        # True when the device sent more messages than the first MESSAGES the record holds.
        "messages_more": more_messages,
        "trail": points,
        # True when the trail holds only the first TRAIL_POINTS of the device's points.
        "trail_more": more_points,
        "payload": asdict(payload) if payload else None,
        "voice_memo": asdict(memo) if memo else None,
    }
