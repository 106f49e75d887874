"""The alarm lifecycle: raising an alarm, its transitions by the pure rules (``alarms.rules``), and
the effects each transition asks for, in the caller's transaction.

Every transition stores the alarm as the rules left it, appends its custody entry, and performs the
effects: a change on the control room's feed, a signed ack to the device (outbox), an escalation
on the MQTT control topic and the webhook (outbox), an incident opened or joined.

A **provisional** alarm is one raised by a device and acknowledged as soon as its event and its row
are committed: its payload's evidence item, its ``alarm_raised`` custody entry and its incident
are still to come (``AlarmRecord.provisional``). It is then made **whole**, in the order the whole
path would have taken; any later change to the alarm makes it whole first, so custody never shows
a change before the raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.alarm_seals import alarm_seal
from chain_of_custody.canonical import rfc3339
from chain_of_custody.core import CoreServices
from chain_of_custody.entries import CustodyAction
from chain_of_custody.lifecycle_seals import (
    LIFECYCLE_COLUMNS,
    RecordedLifecycle,
    lifecycle_holds,
    lifecycle_seal,
    lifecycle_values,
    recorded_lifecycle,
    unvouched,
)
from chain_of_custody.raise_seals import (
    PUT_BACK,
    RAISE_COLUMNS,
    device_message,
    message_kind,
    raise_holds,
    raise_seal,
    raise_values,
    recorded_raise,
    unsealed_differs,
)
from chain_of_custody.reach_seals import reach_secret
from devices.ends import sealed_device
from devices.lone_worker_wire import AlarmMessage, CheckinMessage
from devices.models import Device
from devices.seals import device_seal_key
from storage.errors import Refused

from . import rules
from .alarm_keys import (
    NO_RAISE,
    NOT_RECORDED,
    free_for,
    put_back_keys,
    recorded_keys,
    set_aside_alarm,
    unraised,
    unrecorded_whole,
)
from .escalations import ALARM_ESCALATIONS, ESCALATION_TOPIC, escalation_message
from .feed import alarm_view, record_change
from .incident_links import SERVICE_ACTOR, IncidentLinks
from .models import AlarmOutbox, AlarmRecord, LoneWorkerEvent, new_id
from .outbox import Outbox, mqtt_effects
from .payloads import PayloadEvidence
from .reach import alarm_sealed
from .staging import stage

log = logging.getLogger(__name__)

ALARMS_RAISED = Counter("evidence_alarms_raised_total", "Alarms raised, by kind", ["kind"])
# An alarm the service raises on its own account (a timer's) whose device row is not as the service
# sealed it: raised all the same, at no site and nobody's, with this note.
DEVICE_UNVOUCHED_NOTE = "site and wearer unknown: the device's record is not as the service sealed it"

# The key of the details of an ``alarm_raised`` entry whose device message's stored bytes are not as
# the device signed them: nothing of them is stored as evidence (``Lifecycle.make_whole``).
PAYLOAD_REFUSED = "payload_refused"
PAYLOAD_REFUSED_WHY = (
    "the stored bytes of the device's message are not as the device signed them (edited in the "
    "database, or its device's row is not as the service sealed it): none of them is stored as evidence"
)


class AlarmNotFound(Refused):
    status = 404
    structured = True

    def __init__(self, alarm_id: str) -> None:
        super().__init__("unknown_alarm", f"no alarm {alarm_id}")


# The columns the pure rules read and write: those the lifecycle seal covers, but the deadline
# the clock derives from them.
_RULE_FIELDS = tuple(c for c in LIFECYCLE_COLUMNS if c != "next_deadline")


def to_rule(row: AlarmRecord) -> rules.Alarm:
    """The stored alarm as the pure rules see it."""
    data = {name: getattr(row, name) for name in _RULE_FIELDS}
    data["alarm_id"] = row.id
    return rules.Alarm.from_dict(data)


def _known(enum: type[Any], value: Any) -> Any:
    try:
        return None if value is None else enum(value).value
    except ValueError:
        return None


def as_recorded(row: AlarmRecord, said: RecordedLifecycle, now: datetime) -> rules.Alarm:
    """The alarm as its custody record says it stands: its kind, status, severity and outcome as
    recorded, due by the recorded deadline (an amber one's timer while it is amber, else its
    acknowledgement; one recorded before deadlines were, or only by entries that do not hold,
    unresolved, due now when it is unacknowledged: by its raise time only when that is past, a
    raise time moved on by SQL putting off nothing), and none of the columns of a later stage than its status (acknowledged,
    escalated, resolved) the row may have been given. Columns no entry records are the row's, where
    a rule knows them."""
    data: dict[str, Any] = {name: getattr(row, name) for name in _RULE_FIELDS}
    data["alarm_id"] = row.id
    data["kind"] = _known(rules.AlarmKind, said.kind) or _known(rules.AlarmKind, row.kind) or "sos"
    data["status"] = _known(rules.AlarmStatus, said.status) or rules.AlarmStatus.RAISED.value
    kind, status = rules.AlarmKind(data["kind"]), rules.AlarmStatus(data["status"])
    data["severity"] = _known(rules.Severity, said.severity) or rules.KIND_RULES[kind].severity.value
    data["outcome"] = _known(rules.Outcome, said.outcome)
    data["escalation_reason"] = _known(rules.EscalationReason, row.escalation_reason)
    if status.rank < rules.AlarmStatus.ACKNOWLEDGED.rank:
        data.update(acknowledged_at=None, acknowledged_by=None)
    if status.rank < rules.AlarmStatus.ESCALATED.rank:
        data.update(escalated_at=None, escalated_by=None, escalation_reason=None)
    if status != rules.AlarmStatus.RESOLVED:
        data.update(resolved_at=None, resolved_by=None, outcome=None, resolution_note=None)
    deadline = said.deadline
    if not said.deadline_known:
        deadline = min(row.raised_at, now) if status == rules.AlarmStatus.RAISED else None
    amber = kind == rules.AlarmKind.AMBER and data["severity"] == rules.Severity.AMBER.value
    data["amber_deadline"] = deadline if amber else row.amber_deadline
    data["ack_due_at"] = None if amber else deadline
    return rules.Alarm.from_dict(data)


def store_rule(row: AlarmRecord, alarm: rules.Alarm) -> None:
    """Copy the rules' alarm onto the row, with the next deadline the clock watches."""
    for name in _RULE_FIELDS:
        value = getattr(alarm, name)
        setattr(row, name, value.value if hasattr(value, "value") else value)
    row.next_deadline = rules.next_deadline(alarm)


def custody_details(row: AlarmRecord, changes: list[str]) -> dict[str, Any]:
    """What an alarm's custody entry records of it, its site and wearer among them: the control room
    of that site reads the alarm and streams its voice memo, and its payload's item is the wearer's
    (``evidence verify`` compares the row with it); the deadline the clock then watches (when
    it turns red or escalates unacknowledged), so the service's own record says when it was due;
    and the device's note and position, which an alarm altered in the database is put back to."""
    return {
        "deadline": rfc3339(row.next_deadline) if row.next_deadline else None,
        "alarm_id": row.id,
        "device": row.device_id,
        "site": row.site,
        "wearer": row.wearer,
        "kind": row.kind,
        "severity": row.severity,
        "status": row.status,
        "changes": changes,
        "outcome": row.outcome,
        "source_event_id": row.source_event_id,
        "visit_id": row.visit_id,  # with the device and source event: its keys (``alarm_keys``)
        **raise_details(row),
    }


def lifecycle_found(row: AlarmRecord) -> dict[str, Any]:
    """What an alarm put back was found with, as its put-back entry records it."""
    deadline = rfc3339(row.next_deadline) if row.next_deadline else None
    return {"status": row.status, "severity": row.severity, "outcome": row.outcome, "deadline": deadline}


def raise_details(row: AlarmRecord) -> dict[str, Any]:
    """The device's note and position, as an alarm's custody entries record them."""
    position = {"lat": row.lat, "lon": row.lon, "accuracy_m": row.accuracy_m} if row.lat is not None else None
    return {"note": row.note, "position": position}


def _free_key(session: Session, key: str | None, alarm_id: str) -> str | None:
    """The dedupe key a timer's alarm is raised under: its own, unless another row holds it already.
    The key is unique and not sealed: one given by SQL to another alarm would make the raise fail,
    pass after pass, and silence the alarm; it is raised under a key of its own instead, with a
    warning naming it (its rows are claimed, so a timer never raises one twice anyway)."""
    if key is None:
        return None
    with session.no_autoflush:
        held = session.scalar(select(AlarmRecord.id).where(AlarmRecord.dedupe_key == key))
    if held is None:
        return key
    log.warning(
        "another alarm holds the key a timer's alarm is raised under: raised under its own",
        extra={"alarm": alarm_id, "held_by": held},
    )
    return f"{key}:{alarm_id}"


class Lifecycle:
    """Raises alarms and moves them through the rules, with their effects."""

    def __init__(
        self,
        core: CoreServices,
        policy: rules.AlarmPolicy,
        clock: Callable[[], datetime],
        outbox: Outbox,
        payloads: PayloadEvidence,
        links: IncidentLinks,
    ) -> None:
        self.core = core
        self.db = core.db
        self.ledger = core.ledger
        self.policy = policy
        self.clock = clock
        self.outbox = outbox
        self.payloads = payloads
        self.links = links
        self.seal_secret = reach_secret(core.key)  # alarm rows' seals (``chain_of_custody.alarm_seals``)
        self.device_secret = device_seal_key(core.key)  # device rows' seals (``devices.seals``)
        self.custody_public = core.key.public_raw  # custody entries' signatures

    def seal(self, row: AlarmRecord) -> None:
        """Seal the alarm's row as the service records it: its id, site, wearer, device, memo and
        incident."""
        row.seal = alarm_seal(
            self.seal_secret,
            row.id,
            row.site,
            row.wearer,
            row.device_id,
            row.voice_memo_item_id,
            row.incident_id,
        )

    def seal_lifecycle(self, row: AlarmRecord) -> None:
        """Seal the alarm's lifecycle columns and next deadline as they now stand: written with
        them, in the same statement (``chain_of_custody.lifecycle_seals``)."""
        row.lifecycle_seal = lifecycle_seal(self.seal_secret, row.id, lifecycle_values(row))

    def seal_raise(self, row: AlarmRecord) -> None:
        """Seal what the alarm was raised with (provisional, note, position, payload item) as it now
        stands: written with them, in the same statement (``chain_of_custody.raise_seals``)."""
        row.raise_seal = raise_seal(self.seal_secret, row.id, raise_values(row))

    def put_back_raise(self, session: Session, row: AlarmRecord) -> dict[str, Any] | None:
        """Put an alarm whose raise seal does not hold back to what its custody entries that hold
        (and, for a note or position no entry records, its device's message, as the device signed
        it) bear out, sealed, with a warning naming it; what was found, for the entry that records
        it, or None when the seal holds. An alarm with no seal is held to its custody entries once
        they record its note and position (``raise_seals.unsealed_differs``): put back when it is
        not what they record, sealed as it stands when it is; one raised before they were recorded
        is taken as it stands; a provisional one with no seal never is (it was raised sealed). One
        found no longer provisional with no ``alarm_raised`` entry is provisional again, to be made
        whole."""
        if row.raise_seal is not None and raise_holds(self.seal_secret, row):
            return None
        said = recorded_raise(session, row.id, self.custody_public)
        values = raise_values(row)
        # Every alarm is raised sealed, and nothing records a provisional one yet: one with no seal
        # is put back to its device's message, never taken as it stands.
        if row.raise_seal is None and not row.provisional and unsealed_differs(said, values) is None:
            if said.said is not None:
                self.seal_raise(row)  # its custody record bears it out
            return None
        log.warning(
            "an alarm's note, position, payload item or provisional flag is not as the service sealed "
            "it: put back to its custody record",
            extra={"alarm": row.id, "entry": said.seq, "unsealed": row.raise_seal is None},
        )
        message = None
        if said.said is None:  # only the note and position no entry records are the message's
            message = device_message(
                session, self.device_secret, self.custody_public, row.device_id, row.source_event_id
            )
        for name, value in zip(RAISE_COLUMNS, said.values(message), strict=True):
            setattr(row, name, value)
        self.seal_raise(row)
        return dict(zip(RAISE_COLUMNS, values, strict=True))

    def attach_payload(self, session: Session, row: AlarmRecord, item_id: str, now: datetime) -> None:
        """A payload stored after its alarm was made whole (object storage was down) becomes its
        evidence item: sealed, and named by an entry of the alarm's (what an alarm altered later is
        put back to; it records no site or wearer, which are not this change's to say)."""
        self.vouch_raise(session, row, now)
        if row.provisional or row.evidence_item_id is not None:
            return
        row.evidence_item_id = item_id
        self.seal_raise(row)
        row.updated_at = now
        session.flush()
        details = {"alarm_id": row.id, "payload": item_id, **raise_details(row)}
        self.ledger.append(
            session, CustodyAction.ALARM_CHANGED, SERVICE_ACTOR, item_id=item_id, details=details, at=now
        )

    def vouch_raise(self, session: Session, row: AlarmRecord, now: datetime) -> None:
        """Before anything more is decided or recorded of an alarm, put back what it was raised with
        when its seal does not hold (:meth:`put_back_raise`): recorded by an ``alarm_changed`` entry,
        or, for one that is (again) provisional, by the ``alarm_raised`` entry of its making whole."""
        found = self.put_back_raise(session, row)
        if found is None:
            return
        if row.provisional:
            self.make_whole(session, row, now, found)
            return
        row.updated_at = now
        session.flush()
        self._record_put_back(session, row, now, {PUT_BACK: {"found": found}})

    def set_aside_unraised(
        self, session: Session, row: AlarmRecord, now: datetime, said: RecordedLifecycle | None = None
    ) -> bool:
        """Whether ``row`` is an alarm the service never raised, now set aside (moved out as it stood,
        with an ``alarm_set_aside`` entry); the caller then leaves it. A provisional one
        (``alarm_keys.unraised``: no seal or receipt of the service's behind it) is not made whole,
        which would seal it and record it as its device's alarm; a whole one no custody entry
        records (``alarm_keys.unrecorded_whole``) is not sealed and escalated. A seal or two a row."""
        keys = (session, self.seal_secret, self.device_secret, self.custody_public, row)
        if not (unraised(*keys) if row.provisional else unrecorded_whole(*keys, said)):
            return False
        reason = NO_RAISE if row.provisional else NOT_RECORDED
        aside = set_aside_alarm(session, self.seal_secret, row, None, now, reason)  # not adopted
        self.ledger.append(session, CustodyAction.ALARM_SET_ASIDE, SERVICE_ACTOR, details=aside, at=now)
        return True

    def rule_of(
        self,
        session: Session,
        row: AlarmRecord,
        now: datetime,
        said: RecordedLifecycle | None = None,
    ) -> rules.Alarm | None:
        """The alarm as the rules must take it: as its row stands when its lifecycle seal holds (or
        it has none yet and its row is what its custody record says); otherwise put back to its
        custody record first (:meth:`put_back`; ``said``, when the caller read it already), its
        latest entry that holds (one written or edited in the database is named and passed over; one
        sealed that no entry records any more, its entries deleted, is taken as raised and due). An
        alarm no entry records yet (provisional) is made whole first when it was altered (see
        :meth:`make_whole`). What it was raised with is put back first (:meth:`put_back_raise`).
        None: the row was an alarm the service never raised, set aside instead
        (:meth:`set_aside_unraised`), and nothing is to be done with it."""
        if self.set_aside_unraised(session, row, now, said):
            return None
        self.vouch_raise(session, row, now)
        if row.provisional and not lifecycle_holds(self.seal_secret, row):
            self.make_whole(session, row, now)
            return to_rule(row)
        if lifecycle_holds(self.seal_secret, row):
            return to_rule(row)
        said = said or recorded_lifecycle(session, row.id, self.custody_public)
        if said is None and row.lifecycle_seal is not None:  # sealed, and no entry of it is left
            said = unvouched(0)
        if said is None or (
            row.lifecycle_seal is None
            and not row.provisional
            and said.differs(row.status, row.severity, row.outcome, row.next_deadline) is None
            and self._keys_as_recorded(session, row)
        ):
            return to_rule(row)
        self.put_back(session, row, said, now)
        return to_rule(row)

    def _keys_as_recorded(self, session: Session, row: AlarmRecord) -> bool:
        """Whether an alarm with no lifecycle seal holds the keys its custody record says (or none
        records them): taken as it stands, its next change seals them, and every reader then takes
        them as the service's (``alarms.alarm_keys``). A rare scan: such alarms predate the seal."""
        said = recorded_keys(session, row.id, self.custody_public)
        return said is None or said.differs(row.device_id, row.source_event_id, row.visit_id) is None

    def put_back(self, session: Session, row: AlarmRecord, said: RecordedLifecycle, now: datetime) -> None:
        """Put an alarm whose lifecycle is not as the service sealed it back to what its custody
        record says (:func:`as_recorded`), sealed, with a warning naming it and an entry that
        records what was found and which entry it was put back to."""
        aside: list[dict[str, Any]] = []

        def free(event_id: str) -> bool:  # a row holding its key by SQL, set aside
            may, details = free_for(session, self.seal_secret, self.custody_public, row, event_id, now)
            aside.extend([details] if details is not None else [])
            return may

        found = lifecycle_found(row) | put_back_keys(session, self.custody_public, row, free)
        for details in aside:
            self.ledger.append(session, CustodyAction.ALARM_SET_ASIDE, SERVICE_ACTOR, details=details, at=now)
        log.warning(
            "an alarm's lifecycle or deadline is not as the service sealed it: put back to its custody record",
            extra={"alarm": row.id, "entry": said.seq},
        )
        store_rule(row, as_recorded(row, said, now))
        self.seal_lifecycle(row)
        row.updated_at = now
        session.flush()
        self._record_put_back(session, row, now, {"put_back": {"to_entry": said.seq, "found": found}})

    def _record_put_back(
        self, session: Session, row: AlarmRecord, now: datetime, put_back: dict[str, Any]
    ) -> None:
        """The ``alarm_changed`` entry recording that an alarm was put back, and what was found."""
        self.ledger.append(
            session,
            CustodyAction.ALARM_CHANGED,
            SERVICE_ACTOR,
            item_id=row.evidence_item_id,
            details={**custody_details(row, []), **put_back},
            at=now,
        )

    def sealed(self, row: AlarmRecord) -> bool:
        """Whether the alarm's row is as the service sealed it (a warning names it when not): a row
        whose seal does not hold lends nothing it decides (its wearer, its memo, its incident) to
        anything else."""
        return alarm_sealed(self.seal_secret, row)

    def device_of(self, session: Session, device_id: str) -> tuple[Device | None, str | None]:
        """The device row an alarm the service raises on its own account (a timer's: offline, missed
        check-in) takes its site and wearer from: only one whose seal holds for its latest custody
        entry (``devices.ends.sealed_device``), as a device's own message is checked. A row altered
        in the database (moved to another site, another wearer) lends neither: (None, a note for
        the alarm), and a warning names the device; the alarm is raised all the same, at no site
        and nobody's, so the readers of every site see it and no other site's control room does."""
        device = sealed_device(session, self.device_secret, device_id)
        if device is not None or session.get(Device, device_id) is None:
            return device, None
        log.warning(
            "alarm takes no site or wearer from its device: its row's seal does not hold",
            extra={"device": device_id},
        )
        return None, DEVICE_UNVOUCHED_NOTE

    def open_incident(self, session: Session, row: AlarmRecord, now: datetime) -> None:
        """Open or join the alarm's incident (``IncidentLinks.open_incident``, whose ``linked`` entry
        records it) and seal the row over it; a row whose seal did not hold stays unsealed."""
        sealed = self.sealed(row)
        self.links.open_incident(session, row, now, sealed, self.seal if sealed else None)

    # -- raising ---------------------------------------------------------------------------------

    def raise_alarm(
        self,
        session: Session,
        outbox: list[AlarmOutbox],
        now: datetime,
        *,
        device_id: str,
        kind: rules.AlarmKind,
        wearer: str | None,
        site: str | None,
        alarm_id: str | None = None,
        occurred_at: datetime | None = None,
        source_event_id: str | None = None,
        dedupe_key: str | None = None,
        amber_timeout_s: int | None = None,
        reason: str | None = None,
        visit_id: str | None = None,
        note: str | None = None,
        message: AlarmMessage | CheckinMessage | Any = None,
        late: bool = False,
        evidence_item_id: str | None = None,
        actor: str = SERVICE_ACTOR,
        provisional: bool = False,
    ) -> AlarmRecord:
        """A new alarm, whole, or provisional (made whole later, see :meth:`make_whole`)."""
        transition = rules.raise_alarm(
            alarm_id=alarm_id or new_id(),
            device_id=device_id,
            kind=kind,
            at=now,
            policy=self.policy,
            occurred_at=occurred_at,
            source_event_id=source_event_id,
            amber_timeout_s=amber_timeout_s,
            reason=reason,
            visit_id=visit_id,
        )
        row = AlarmRecord(
            id=transition.alarm.alarm_id,
            device_id=device_id,
            wearer=wearer,
            site=site,
            dedupe_key=_free_key(session, dedupe_key, transition.alarm.alarm_id),
            note=note,
            late=late,
            evidence_item_id=evidence_item_id,
            provisional=provisional,
        )
        if message is not None:
            if message.position is not None:
                row.lat, row.lon = message.position.lat, message.position.lon
                row.accuracy_m = message.position.accuracy_m
            row.battery = message.battery
        self.seal(row)
        self.seal_raise(row)
        if provisional:  # a provisional alarm is changed by nothing else before its commit
            stage(session, row)
        else:
            session.add(row)
        ALARMS_RAISED.labels(kind=kind.value).inc()
        log.info(
            "alarm raised",
            extra={"alarm": row.id, "device": device_id, "kind": kind.value, "wearer": wearer},
        )
        self.apply(session, row, transition, outbox, now, actor=actor, raised=True)
        return row

    def escalated_on_arrival(self, message: AlarmMessage, now: datetime) -> bool:
        """An amber held on the device past its timer and the acknowledgement time is escalated as
        it is raised: its escalation must name the incident, so it cannot be provisional."""
        body = message.alarm
        amber = body.kind == rules.AlarmKind.AMBER.value
        if self.policy.ack_timeout_s > 0 and (not amber or message.occurred_at >= now):
            return False  # the common case, decided without working the rules through
        transition = rules.raise_alarm(
            alarm_id="-",
            device_id=message.device_id,
            kind=rules.AlarmKind(body.kind),
            at=now,
            policy=self.policy,
            occurred_at=message.occurred_at,
            amber_timeout_s=body.amber_timeout_s,
        )
        return any(isinstance(e, rules.CallWebhook) for e in transition.effects)

    # -- a provisional alarm made whole ------------------------------------------------------------

    def make_whole(
        self, session: Session, row: AlarmRecord, now: datetime, raise_found: dict[str, Any] | None = None
    ) -> None:
        """Make a provisional alarm whole, in the order the whole path would have: the payload as an
        evidence item, the ``alarm_raised`` custody entry, then the incident a red alarm opens or
        joins. Runs before any other change to the alarm (see :meth:`apply`). The caller holds the
        alarm's row lock.

        Nothing in custody records a provisional alarm yet, so one altered in the database is not
        recorded as it stands: what it was raised with is put back to its device's message
        (:meth:`put_back_raise`, or ``raise_found`` when the caller did), and a lifecycle whose seal
        does not hold to an unacknowledged alarm of its device's kind, due now (it turns red and
        escalates at the clock's next look); its ``alarm_raised`` entry records what was found. Every
        alarm is raised with both seals, so one found with either seal cleared is altered too.

        The device's message is stored as the payload's evidence only when its stored bytes are as
        the device signed them (``raise_seals.message_key``): bytes edited in the database are
        not stored, a warning names them and the entry records it (:data:`PAYLOAD_REFUSED`), and
        they say nothing of the alarm's kind (an SOS)."""
        if raise_found is None and (row.raise_seal is None or not raise_holds(self.seal_secret, row)):
            self.vouch_raise(session, row, now)  # whole again, or back to whole if it was whole
            return
        event = session.get(LoneWorkerEvent, row.source_event_id) if row.source_event_id else None
        message, key_b64 = None, None
        if event is not None and event.device_id == row.device_id:
            # its bytes as the device signed them and the key that vouches for them, or None (a
            # warning names it)
            key_b64 = self.payloads.vouched(session, event)
            message = None if key_b64 is None else bytes(event.raw)
        lifecycle_found = None
        if row.lifecycle_seal is None or not lifecycle_holds(self.seal_secret, row):  # raised sealed
            kind = row.kind if event is None else message_kind(message) or rules.AlarmKind.SOS.value
            lifecycle_found = self._put_back_as_raised(row, kind, now)
        # Its payload's item: the one its event row names only when it is the item of these bytes
        # (the column is no seal's), else stored now.
        own = self.payloads.own_item(session, event) if event is not None and message is not None else None
        if event is not None and own is None and message is not None:
            stored = self.payloads.put(event)
            if stored is not None:
                # The payload's item takes the alarm's wearer and site only from a row the service sealed.
                sealed = self.sealed(row)
                wearer, site = (row.wearer, row.site) if sealed else (None, None)
                own = self.payloads.record_later(session, event, stored, wearer, key_b64, site).id
                event.evidence_item_id = own
        if event is not None and row.evidence_item_id is None:
            row.evidence_item_id = own
        row.provisional = False
        self.seal_raise(row)
        session.flush()
        details = custody_details(row, [rules.Change.RAISED.value])
        details["accepted_at"] = rfc3339(row.raised_at)
        if raise_found is not None:
            details[PUT_BACK] = {"found": raise_found}
        if event is not None and message is None:
            details[PAYLOAD_REFUSED] = {"event_id": event.event_id, "why": PAYLOAD_REFUSED_WHY}
        if lifecycle_found is not None:
            details["put_back"] = {"to_entry": None, "found": lifecycle_found}
        self.ledger.append(
            session,
            CustodyAction.ALARM_RAISED,
            f"device:{row.device_id}",
            item_id=row.evidence_item_id,
            details=details,
            at=now,
        )
        if row.incident_requested and row.incident_id is None:
            self.open_incident(session, row, now)
            record_change(session, row, "incident_linked", now)

    def _put_back_as_raised(self, row: AlarmRecord, kind: str | None, now: datetime) -> dict[str, Any]:
        """Put a provisional alarm's altered lifecycle back to an unacknowledged alarm of the kind its
        device raised (``kind``: its signed message's; an SOS when that does not hold), due now,
        sealed, with a warning naming it; what was found."""
        found = lifecycle_found(row)
        log.warning(
            "a provisional alarm's lifecycle is not as the service sealed it: put back to its raise, due now",
            extra={"alarm": row.id},
        )
        raised = RecordedLifecycle(0, kind, rules.AlarmStatus.RAISED.value, None, None, now)
        store_rule(row, as_recorded(row, raised, now))
        self.seal_lifecycle(row)
        return found

    def make_whole_if_provisional(self, alarm_id: str, now: datetime | None = None) -> bool:
        """Make one alarm whole if it is still provisional and nobody else is at it; True if done here.

        The alarm's row is locked first (skipping it if someone else holds it), so only one
        instance ever puts the payload into storage; the put happens before the ledger lock."""
        with self.db.session() as session:
            row = session.scalars(
                select(AlarmRecord).where(AlarmRecord.id == alarm_id).with_for_update(skip_locked=True)
            ).first()
            if row is None or not row.provisional:
                return False
            at = now or self.clock()
            if self.set_aside_unraised(session, row, at):
                return False
            self.make_whole(session, row, at)
        return True

    def provisional_alarms(self, limit: int = 50, raised_before: datetime | None = None) -> list[str]:
        """Alarms still provisional, oldest first."""
        q = select(AlarmRecord.id).where(AlarmRecord.provisional.is_(True))
        if raised_before is not None:
            q = q.where(AlarmRecord.raised_at <= raised_before)
        with self.db.session() as session:
            return list(session.scalars(q.order_by(AlarmRecord.raised_at).limit(limit)))

    def make_provisional_alarms_whole(
        self,
        now: datetime | None = None,
        limit: int = 20,
        older_than: timedelta = timedelta(0),
        before_each: Callable[[], bool] | None = None,
    ) -> int:
        """Make provisional alarms whole (oldest first); safe on many instances.
        ``before_each`` runs before every alarm and may wait; False stops the pass."""
        now = now or self.clock()
        done = 0
        for alarm_id in self.provisional_alarms(limit, now - older_than):
            if before_each is not None and not before_each():
                break
            try:
                done += self.make_whole_if_provisional(alarm_id, now)
            except Exception:  # noqa: BLE001 - left provisional; the next pass tries again
                log.exception("provisional alarm not made whole; will retry", extra={"alarm": alarm_id})
        return done

    # -- transitions and their effects -----------------------------------------------------------

    def transition(
        self,
        session: Session,
        row: AlarmRecord,
        event: rules.AlarmEvent,
        outbox: list[AlarmOutbox],
        now: datetime,
        *,
        actor: str,
    ) -> rules.Transition | None:
        """The rules' answer to ``event``, stored with its effects; None when the row was no alarm
        of the service's, set aside instead (:meth:`rule_of`)."""
        alarm = self.rule_of(session, row, now)
        if alarm is None:
            return None
        transition = rules.apply(alarm, event, self.policy)
        self.apply(session, row, transition, outbox, now, actor=actor)
        return transition

    def apply(
        self,
        session: Session,
        row: AlarmRecord,
        transition: rules.Transition,
        outbox: list[AlarmOutbox],
        now: datetime,
        *,
        actor: str,
        raised: bool = False,
    ) -> None:
        """Store the alarm as the rules left it, append its custody entry, then perform the effects.

        A provisional alarm's raise has no custody entry and no incident yet: they come when it is
        made whole, which any later change to the alarm does first."""
        if not raised and row.provisional:
            self.make_whole(session, row, now)
        provisional = raised and row.provisional
        before = (row.status, row.severity) if not raised else None
        store_rule(row, transition.alarm)
        self.seal_lifecycle(row)
        row.updated_at = now
        changes = [e.change.value for e in transition.effects if isinstance(e, rules.NotifyOperators)]
        if not raised and not transition.effects and before == (row.status, row.severity):
            return
        if not provisional:
            session.flush()
            self.ledger.append(
                session,
                CustodyAction.ALARM_RAISED if raised else CustodyAction.ALARM_CHANGED,
                actor,
                item_id=row.evidence_item_id,
                details=custody_details(row, changes),
                at=now,
            )
            for effect in transition.effects:
                if isinstance(effect, rules.OpenOrJoinIncident):
                    self.open_incident(session, row, now)
        for effect in transition.effects:
            if isinstance(effect, rules.NotifyOperators):
                record_change(session, row, effect.change.value, effect.at)
            elif isinstance(effect, rules.PublishAck):
                self.outbox.queue_ack(
                    session, outbox, effect.device_id, effect.event_id, effect.status, row.id, now
                )
            elif isinstance(effect, rules.CallWebhook):
                self._escalate(session, row, effect, outbox, now)

    def _escalate(
        self,
        session: Session,
        row: AlarmRecord,
        effect: rules.CallWebhook,
        outbox: list[AlarmOutbox],
        now: datetime,
    ) -> None:
        """An escalation goes to the control topic (other systems on the broker) and the webhook,
        signed by the service (``alarms.escalations``)."""
        ALARM_ESCALATIONS.labels(reason=effect.reason.value).inc()
        log.warning(
            "alarm escalated",
            extra={"alarm": row.id, "device": row.device_id, "kind": row.kind, "reason": effect.reason.value},
        )
        body = escalation_message(row, effect, self.sealed(row))
        self.outbox.queue(session, outbox, "mqtt", ESCALATION_TOPIC, body, now, row.id)
        webhook = self.core.settings.escalation_webhook_url
        if webhook:
            self.outbox.queue(session, outbox, "webhook", webhook, body, now, row.id)

    # -- operators ---------------------------------------------------------------------------------

    def act(self, alarm_id: str, event: rules.Acknowledge | rules.Escalate | rules.Resolve) -> dict[str, Any]:
        """An operator's action; :class:`alarms.rules.AlarmTransitionError` when it does not apply
        (any deadline that fell due before it is stored all the same)."""
        outbox: list[AlarmOutbox] = []
        error: rules.AlarmTransitionError | None = None
        now = event.at
        view: dict[str, Any] | None = None
        with self.db.session() as session:
            row = session.get(AlarmRecord, alarm_id, with_for_update=True)
            if row is None:
                raise AlarmNotFound(alarm_id)
            alarm = self.rule_of(session, row, now)
            if alarm is not None:  # else a planted row, set aside (committed), refused below
                try:
                    transition = rules.apply(alarm, event, self.policy)
                except rules.AlarmTransitionError as exc:
                    error = exc
                    transition = exc.transition or rules.Transition(alarm)
                self.apply(session, row, transition, outbox, now, actor=event.by)
                session.flush()
                view = alarm_view(row)
        if view is None:
            raise AlarmNotFound(alarm_id)
        self.outbox.publish(mqtt_effects(outbox))
        if error is not None:
            raise error
        return view
