"""The lone-worker alarm lifecycle as pure rules: state in, event or clock in, state and effects out.

Nothing here reads the clock, the database or the network. The caller passes ``now``, stores the
returned :class:`Alarm`, and performs the returned effects (ideally through an outbox written in
the same transaction, so an effect is neither lost nor performed for a state that was not stored).

Lifecycle: ``raised`` -> ``acknowledged`` -> ``escalated`` -> ``resolved`` (steps may be skipped,
never reversed). Severity only rises: ``warning`` < ``amber`` < ``red``. Timers (an amber alarm's
countdown, the operator acknowledgement deadline) fire at their deadline time whenever the caller
next looks, so the outcome does not depend on how often the caller ticks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from devices.lone_worker_wire import AckStatus
from storage.settings import AlarmSettings


class AlarmKind(StrEnum):
    SOS = "sos"
    AMBER = "amber"
    MAN_DOWN = "man_down"
    MISSED_CHECKIN = "missed_checkin"
    DEVICE_OFFLINE = "device_offline"
    LOW_BATTERY = "low_battery"


class Severity(StrEnum):
    WARNING = "warning"
    AMBER = "amber"
    RED = "red"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


class AlarmStatus(StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"
    RESOLVED = "resolved"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


class Outcome(StrEnum):
    GENUINE = "genuine"
    FALSE_ALARM = "false_alarm"
    TEST = "test"
    CANCELLED = "cancelled"  # the worker cancelled an amber alarm before it turned red
    CLEARED = "cleared"  # the condition went away before anyone engaged (device back, visit ended)


class EscalationReason(StrEnum):
    ACK_TIMEOUT = "ack_timeout"
    OPERATOR = "operator"


class Change(StrEnum):
    """What the operators' live stream is told."""

    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    TURNED_RED = "turned_red"
    ESCALATED = "escalated"
    CANCEL_REQUESTED = "cancel_requested"
    CONDITION_CLEARED = "condition_cleared"
    RESOLVED = "resolved"


_SEVERITY_RANK = {Severity.WARNING: 0, Severity.AMBER: 1, Severity.RED: 2}
_STATUS_RANK = {
    AlarmStatus.RAISED: 0,
    AlarmStatus.ACKNOWLEDGED: 1,
    AlarmStatus.ESCALATED: 2,
    AlarmStatus.RESOLVED: 3,
}
OPERATOR_OUTCOMES = frozenset({Outcome.GENUINE, Outcome.FALSE_ALARM, Outcome.TEST})


@dataclass(frozen=True)
class KindRule:
    """How one kind of alarm behaves.

    ``ack_due_on_raise``: an operator must acknowledge within the timeout or it escalates (an amber
    alarm only needs that once it turns red). ``clears_itself``: if the condition goes away before
    anyone engaged, the alarm resolves as ``cleared``; red alarms always need a person to close them.
    """

    severity: Severity
    ack_due_on_raise: bool
    clears_itself: bool


KIND_RULES: dict[AlarmKind, KindRule] = {
    AlarmKind.SOS: KindRule(Severity.RED, ack_due_on_raise=True, clears_itself=False),
    AlarmKind.MAN_DOWN: KindRule(Severity.RED, ack_due_on_raise=True, clears_itself=False),
    AlarmKind.AMBER: KindRule(Severity.AMBER, ack_due_on_raise=False, clears_itself=False),
    AlarmKind.MISSED_CHECKIN: KindRule(Severity.AMBER, ack_due_on_raise=True, clears_itself=True),
    AlarmKind.DEVICE_OFFLINE: KindRule(Severity.WARNING, ack_due_on_raise=True, clears_itself=True),
    AlarmKind.LOW_BATTERY: KindRule(Severity.WARNING, ack_due_on_raise=False, clears_itself=True),
}


@dataclass(frozen=True)
class AlarmPolicy:
    """Timings and thresholds, from the settings object (see :meth:`from_settings`)."""

    ack_timeout_s: float
    missed_checkin_grace_s: float
    offline_after_s: float
    low_battery_percent: int
    # A battery is only "recovered" this far above the threshold, so one hovering at the
    # threshold does not raise and clear in turn.
    low_battery_clear_margin: int = 10

    @classmethod
    def from_settings(cls, settings: AlarmSettings) -> AlarmPolicy:
        return cls(
            ack_timeout_s=settings.alarm_ack_timeout_seconds,
            missed_checkin_grace_s=settings.missed_checkin_grace_seconds,
            offline_after_s=settings.device_offline_after_seconds,
            low_battery_percent=settings.low_battery_percent,
        )

    @property
    def ack_timeout(self) -> timedelta:
        return timedelta(seconds=self.ack_timeout_s)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Alarm:
    """One alarm as stored. Times are timezone-aware; ``raised_at`` is the server's time."""

    alarm_id: str
    device_id: str
    kind: AlarmKind
    severity: Severity
    status: AlarmStatus
    raised_at: datetime
    occurred_at: datetime
    source_event_id: str | None = None  # the device event that raised it; None if the service did
    reason: str | None = None  # man_down: fall | no_movement
    visit_id: str | None = None  # missed_checkin: the visit that ran over
    amber_deadline: datetime | None = None
    red_at: datetime | None = None
    ack_due_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    escalated_at: datetime | None = None
    escalated_by: str | None = None
    escalation_reason: EscalationReason | None = None
    cancel_requested_at: datetime | None = None
    condition_cleared_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    outcome: Outcome | None = None
    resolution_note: str | None = None
    incident_requested: bool = False

    @property
    def is_open(self) -> bool:
        return self.status != AlarmStatus.RESOLVED

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (times as ISO strings, enums as values)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif isinstance(value, StrEnum):
                out[key] = value.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alarm:
        enums = {
            "kind": AlarmKind,
            "severity": Severity,
            "status": AlarmStatus,
            "escalation_reason": EscalationReason,
            "outcome": Outcome,
        }
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            if value is not None and f.name in enums:
                value = enums[f.name](value)
            elif isinstance(value, str) and (f.name.endswith("_at") or f.name == "amber_deadline"):
                value = datetime.fromisoformat(value)
            values[f.name] = value
        return cls(**values)


# --------------------------------------------------------------------------- events and effects


@dataclass(frozen=True)
class Acknowledge:
    """An operator takes the alarm (again, after an amber alarm turned red)."""

    by: str
    at: datetime


@dataclass(frozen=True)
class Escalate:
    """An operator hands the alarm up (manager on call, police, ambulance)."""

    by: str
    at: datetime
    note: str = ""


@dataclass(frozen=True)
class Resolve:
    """An operator closes the alarm: genuine, false alarm or test."""

    by: str
    at: datetime
    outcome: Outcome
    note: str = ""


@dataclass(frozen=True)
class DeviceCancel:
    """The worker pressed cancel (``event_id`` is the cancel message's own event id)."""

    event_id: str
    at: datetime


@dataclass(frozen=True)
class ConditionCleared:
    """What caused the alarm went away: device back online, visit ended, battery charged."""

    at: datetime
    source: str


@dataclass(frozen=True)
class Tick:
    """Only time passed: fire any deadline up to ``at``."""

    at: datetime


AlarmEvent = Acknowledge | Escalate | Resolve | DeviceCancel | ConditionCleared | Tick


@dataclass(frozen=True)
class PublishAck:
    """Send the device a signed ack on ``lw/v1/<device_id>/ack`` for ``event_id``."""

    device_id: str
    event_id: str
    alarm_id: str
    status: AckStatus


@dataclass(frozen=True)
class NotifyOperators:
    """Push the change to the control room's live stream."""

    alarm_id: str
    change: Change
    severity: Severity
    status: AlarmStatus
    at: datetime


@dataclass(frozen=True)
class CallWebhook:
    """Tell the escalation endpoint (manager on call, alarm receiving centre)."""

    alarm_id: str
    device_id: str
    kind: AlarmKind
    severity: Severity
    reason: EscalationReason
    at: datetime


@dataclass(frozen=True)
class OpenOrJoinIncident:
    """Open an incident for this alarm, or join a recent one of the same device or wearer."""

    alarm_id: str
    device_id: str
    at: datetime


Effect = PublishAck | NotifyOperators | CallWebhook | OpenOrJoinIncident


@dataclass(frozen=True)
class Transition:
    alarm: Alarm
    effects: tuple[Effect, ...] = field(default_factory=tuple)


class AlarmTransitionError(ValueError):
    """The requested operator action does not apply to the alarm as it now stands.

    ``transition`` is the alarm with its deadlines fired up to the action's time (e.g. it escalated
    on timeout just before the operator pressed "escalate"); storing it is optional, since a later
    :class:`Tick` reaches the same state.
    """

    def __init__(self, message: str, transition: Transition | None = None) -> None:
        super().__init__(message)
        self.transition = transition


# --------------------------------------------------------------------------- rules


def _notify(alarm: Alarm, change: Change, at: datetime) -> NotifyOperators:
    return NotifyOperators(alarm.alarm_id, change, alarm.severity, alarm.status, at)


def _device_ack(alarm: Alarm, status: AckStatus, event_id: str | None = None) -> list[Effect]:
    event = event_id or alarm.source_event_id
    if event is None:
        return []
    return [PublishAck(alarm.device_id, event, alarm.alarm_id, status)]


def _incident(alarm: Alarm, at: datetime) -> tuple[Alarm, list[Effect]]:
    if alarm.incident_requested:
        return alarm, []
    alarm = replace(alarm, incident_requested=True)
    return alarm, [OpenOrJoinIncident(alarm.alarm_id, alarm.device_id, at)]


def _escalate(
    alarm: Alarm, at: datetime, reason: EscalationReason, by: str | None
) -> tuple[Alarm, list[Effect]]:
    alarm = replace(
        alarm,
        status=AlarmStatus.ESCALATED,
        escalated_at=at,
        escalated_by=by,
        escalation_reason=reason,
        ack_due_at=None,
    )
    alarm, effects = _incident(alarm, at)
    effects = [
        _notify(alarm, Change.ESCALATED, at),
        CallWebhook(alarm.alarm_id, alarm.device_id, alarm.kind, alarm.severity, reason, at),
        *effects,
        *_device_ack(alarm, AckStatus.ESCALATED),
    ]
    return alarm, effects


def _turn_red(alarm: Alarm, at: datetime, policy: AlarmPolicy) -> tuple[Alarm, list[Effect]]:
    needs_ack = alarm.status in (AlarmStatus.RAISED, AlarmStatus.ACKNOWLEDGED)
    alarm = replace(
        alarm,
        severity=Severity.RED,
        red_at=at,
        ack_due_at=at + policy.ack_timeout if needs_ack else None,
    )
    alarm, effects = _incident(alarm, at)
    return alarm, [_notify(alarm, Change.TURNED_RED, at), *effects, *_device_ack(alarm, AckStatus.ESCALATED)]


def _resolve(
    alarm: Alarm, at: datetime, outcome: Outcome, by: str, note: str | None
) -> tuple[Alarm, list[Effect]]:
    alarm = replace(
        alarm,
        status=AlarmStatus.RESOLVED,
        resolved_at=at,
        resolved_by=by,
        outcome=outcome,
        resolution_note=note or None,
        ack_due_at=None,
    )
    effects: list[Effect] = [_notify(alarm, Change.RESOLVED, at)]
    if outcome == Outcome.GENUINE:
        alarm, incident = _incident(alarm, at)
        effects += incident
    return alarm, effects


def _amber_due(alarm: Alarm) -> datetime | None:
    if alarm.kind == AlarmKind.AMBER and alarm.severity == Severity.AMBER and alarm.amber_deadline:
        return alarm.amber_deadline
    return None


def next_deadline(alarm: Alarm) -> datetime | None:
    """When the alarm next needs looking at without any event (None: only events move it)."""
    if not alarm.is_open:
        return None
    due = [d for d in (_amber_due(alarm), alarm.ack_due_at) if d is not None]
    return min(due) if due else None


def _advance(alarm: Alarm, now: datetime, policy: AlarmPolicy) -> tuple[Alarm, list[Effect]]:
    """Fire every deadline up to ``now``, earliest first, each at its own deadline time."""
    effects: list[Effect] = []
    while alarm.is_open:
        amber_due = _amber_due(alarm)
        if (
            amber_due is not None
            and amber_due <= now
            and (alarm.ack_due_at is None or amber_due <= alarm.ack_due_at)
        ):
            alarm, more = _turn_red(alarm, amber_due, policy)
        elif alarm.ack_due_at is not None and alarm.ack_due_at <= now:
            alarm, more = _escalate(alarm, alarm.ack_due_at, EscalationReason.ACK_TIMEOUT, None)
        else:
            break
        effects += more
    return alarm, effects


def raise_alarm(
    *,
    alarm_id: str,
    device_id: str,
    kind: AlarmKind,
    at: datetime,
    policy: AlarmPolicy,
    occurred_at: datetime | None = None,
    source_event_id: str | None = None,
    amber_timeout_s: float | None = None,
    reason: str | None = None,
    visit_id: str | None = None,
) -> Transition:
    """A new alarm. ``at`` is the server's time now; ``occurred_at`` the device's time of the event.

    An amber countdown runs from the earlier of the two, so an amber alarm that was buffered on the
    device (or whose device clock runs fast) is not given extra time; if it already ran out, the
    alarm is red at once.
    """
    kind = AlarmKind(kind)
    if (kind == AlarmKind.AMBER) != (amber_timeout_s is not None):
        raise ValueError("amber_timeout_s is required for, and only for, an amber alarm")
    if amber_timeout_s is not None and amber_timeout_s <= 0:
        raise ValueError("amber_timeout_s must be positive")
    rule = KIND_RULES[kind]
    occurred = occurred_at or at
    alarm = Alarm(
        alarm_id=alarm_id,
        device_id=device_id,
        kind=kind,
        severity=rule.severity,
        status=AlarmStatus.RAISED,
        raised_at=at,
        occurred_at=occurred,
        source_event_id=source_event_id,
        reason=reason,
        visit_id=visit_id,
        amber_deadline=min(occurred, at) + timedelta(seconds=amber_timeout_s) if amber_timeout_s else None,
        red_at=at if rule.severity == Severity.RED else None,
        ack_due_at=at + policy.ack_timeout if rule.ack_due_on_raise else None,
    )
    effects: list[Effect] = [*_device_ack(alarm, AckStatus.RECEIVED), _notify(alarm, Change.RAISED, at)]
    if alarm.severity == Severity.RED:
        alarm, incident = _incident(alarm, at)
        effects += incident
    alarm, more = _advance(alarm, at, policy)
    return Transition(alarm, tuple(effects + more))


def apply(alarm: Alarm, event: AlarmEvent, policy: AlarmPolicy) -> Transition:
    """The alarm after ``event``; deadlines up to ``event.at`` fire first.

    Operator actions that do not apply raise :class:`AlarmTransitionError` (the API answers 409).
    Device and clock events never raise: on a resolved alarm they change nothing.
    """
    alarm, effects = _advance(alarm, event.at, policy)
    try:
        return _handle(alarm, effects, event, policy)
    except AlarmTransitionError as exc:
        raise AlarmTransitionError(str(exc), Transition(alarm, tuple(effects))) from None


def _handle(alarm: Alarm, effects: list[Effect], event: AlarmEvent, policy: AlarmPolicy) -> Transition:
    at = event.at
    match event:
        case Tick():
            pass
        case Acknowledge(by=by):
            if not alarm.is_open:
                raise AlarmTransitionError("alarm is resolved")
            if alarm.acknowledged_at is not None and alarm.ack_due_at is None:
                raise AlarmTransitionError(f"already acknowledged by {alarm.acknowledged_by}")
            status = (
                alarm.status
                if alarm.status.rank > AlarmStatus.ACKNOWLEDGED.rank
                else AlarmStatus.ACKNOWLEDGED
            )
            alarm = replace(alarm, status=status, acknowledged_at=at, acknowledged_by=by, ack_due_at=None)
            effects += [
                _notify(alarm, Change.ACKNOWLEDGED, at),
                *_device_ack(alarm, AckStatus.OPERATOR_ACKNOWLEDGED),
            ]
        case Escalate(by=by):
            if not alarm.is_open:
                raise AlarmTransitionError("alarm is resolved")
            if alarm.status == AlarmStatus.ESCALATED:
                raise AlarmTransitionError("alarm is already escalated")
            alarm, more = _escalate(alarm, at, EscalationReason.OPERATOR, by)
            effects += more
        case Resolve(by=by, outcome=outcome, note=note):
            if not alarm.is_open:
                raise AlarmTransitionError("alarm is already resolved")
            if Outcome(outcome) not in OPERATOR_OUTCOMES:
                raise AlarmTransitionError(f"operators resolve as one of {sorted(OPERATOR_OUTCOMES)}")
            alarm, more = _resolve(alarm, at, Outcome(outcome), by, note)
            effects += [*more, *_device_ack(alarm, AckStatus.RESOLVED)]
        case DeviceCancel(event_id=cancel_id):
            if not alarm.is_open:
                effects += _device_ack(alarm, AckStatus.RESOLVED, cancel_id)
            elif _amber_due(alarm) is not None:  # amber, still counting down: the worker is safe
                alarm, more = _resolve(alarm, at, Outcome.CANCELLED, "device", None)
                effects += [*more, *_device_ack(alarm, AckStatus.RESOLVED, cancel_id)]
            elif KIND_RULES[alarm.kind].clears_itself and alarm.status == AlarmStatus.RAISED:
                alarm, more = _resolve(alarm, at, Outcome.CLEARED, "device", None)
                effects += [*more, *_device_ack(alarm, AckStatus.RESOLVED, cancel_id)]
            else:  # red: a person decides (a cancel may be made under duress)
                alarm = replace(alarm, cancel_requested_at=alarm.cancel_requested_at or at)
                effects += [
                    _notify(alarm, Change.CANCEL_REQUESTED, at),
                    *_device_ack(alarm, AckStatus.RECEIVED, cancel_id),
                ]
        case ConditionCleared(source=source):
            if not alarm.is_open:
                pass
            elif KIND_RULES[alarm.kind].clears_itself and alarm.status == AlarmStatus.RAISED:
                alarm, more = _resolve(alarm, at, Outcome.CLEARED, "service", source)
                effects += [*more, *_device_ack(alarm, AckStatus.RESOLVED)]
            else:
                alarm = replace(alarm, condition_cleared_at=alarm.condition_cleared_at or at)
                effects.append(_notify(alarm, Change.CONDITION_CLEARED, at))
        case _:
            raise TypeError(f"not an alarm event: {event!r}")
    return Transition(alarm, tuple(effects))


# --------------------------------------------------------------------------- conditions the service watches


@dataclass(frozen=True)
class Visit:
    """A lone visit between a start and an end check-in (an end whose start never arrived has
    neither a start time nor an expected end)."""

    visit_id: str
    device_id: str
    started_at: datetime | None
    expected_end: datetime | None
    ended_at: datetime | None = None
    missed_alarm_id: str | None = None


def missed_checkin_due_at(visit: Visit, policy: AlarmPolicy) -> datetime | None:
    """When a ``missed_checkin`` alarm is due for this visit (None: ended, already raised, or no end
    expected)."""
    if visit.ended_at is not None or visit.missed_alarm_id is not None or visit.expected_end is None:
        return None
    return visit.expected_end + timedelta(seconds=policy.missed_checkin_grace_s)


def is_checkin_missed(visit: Visit, now: datetime, policy: AlarmPolicy) -> bool:
    due = missed_checkin_due_at(visit, policy)
    return due is not None and now >= due


def is_device_offline(
    last_seen_at: datetime, now: datetime, policy: AlarmPolicy, *, visit_active: bool, alarm_open: bool
) -> bool:
    """A silent device only matters while its wearer is on a visit or has an alarm open."""
    if not (visit_active or alarm_open):
        return False
    return now - last_seen_at >= timedelta(seconds=policy.offline_after_s)


def is_battery_low(percent: int, policy: AlarmPolicy) -> bool:
    return percent <= policy.low_battery_percent


def is_battery_recovered(percent: int, policy: AlarmPolicy) -> bool:
    return percent >= min(100, policy.low_battery_percent + policy.low_battery_clear_margin)
