"""Alarm lifecycle rules: scenarios an operator would recognise, then invariants under random histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms.rules import (
    OPERATOR_OUTCOMES,
    Acknowledge,
    Alarm,
    AlarmKind,
    AlarmPolicy,
    AlarmStatus,
    AlarmTransitionError,
    CallWebhook,
    Change,
    ConditionCleared,
    DeviceCancel,
    Escalate,
    EscalationReason,
    NotifyOperators,
    OpenOrJoinIncident,
    Outcome,
    PublishAck,
    Resolve,
    Severity,
    Tick,
    Transition,
    Visit,
    apply,
    is_battery_low,
    is_battery_recovered,
    is_checkin_missed,
    is_device_offline,
    missed_checkin_due_at,
    next_deadline,
    raise_alarm,
)
from devices.lone_worker_wire import AckStatus

T0 = datetime(2026, 11, 22, 14, 0, 0, tzinfo=UTC)
POLICY = AlarmPolicy(
    ack_timeout_s=30, missed_checkin_grace_s=300, offline_after_s=180, low_battery_percent=15
)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sos(**kw: Any) -> Transition:
    return raise_alarm(
        alarm_id="A1",
        device_id="LW-1",
        kind=AlarmKind.SOS,
        at=T0,
        policy=POLICY,
        source_event_id="ev-1",
        **kw,
    )


def amber(timeout_s: float = 600, occurred_at: datetime | None = None) -> Transition:
    return raise_alarm(
        alarm_id="A2",
        device_id="LW-1",
        kind=AlarmKind.AMBER,
        at=T0,
        policy=POLICY,
        source_event_id="ev-2",
        amber_timeout_s=timeout_s,
        occurred_at=occurred_at,
    )


def of(effects: tuple[Any, ...], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


# --------------------------------------------------------------------------- scenarios


def test_sos_is_red_acknowledged_to_device_shown_and_opens_an_incident() -> None:
    t = sos()
    assert (t.alarm.status, t.alarm.severity) == (AlarmStatus.RAISED, Severity.RED)
    assert t.alarm.ack_due_at == s(30)
    assert of(t.effects, PublishAck) == [PublishAck("LW-1", "ev-1", "A1", AckStatus.RECEIVED)]
    assert [n.change for n in of(t.effects, NotifyOperators)] == [Change.RAISED]
    assert of(t.effects, OpenOrJoinIncident) == [OpenOrJoinIncident("A1", "LW-1", T0)]
    assert next_deadline(t.alarm) == s(30)


def test_unacknowledged_sos_escalates_at_the_deadline_whenever_the_clock_is_checked() -> None:
    alarm = sos().alarm
    assert apply(alarm, Tick(s(29)), POLICY).alarm == alarm
    late = apply(alarm, Tick(s(500)), POLICY)
    assert late.alarm.status == AlarmStatus.ESCALATED
    assert late.alarm.escalated_at == s(30)  # the deadline, not when someone looked
    assert late.alarm.escalation_reason == EscalationReason.ACK_TIMEOUT
    assert of(late.effects, CallWebhook) == [
        CallWebhook("A1", "LW-1", AlarmKind.SOS, Severity.RED, EscalationReason.ACK_TIMEOUT, s(30))
    ]
    assert PublishAck("LW-1", "ev-1", "A1", AckStatus.ESCALATED) in late.effects
    assert not of(late.effects, OpenOrJoinIncident)  # already opened at raise
    assert next_deadline(late.alarm) is None


def test_acknowledged_in_time_does_not_escalate_and_device_is_told() -> None:
    acked = apply(sos().alarm, Acknowledge("op-1", s(10)), POLICY)
    assert acked.alarm.status == AlarmStatus.ACKNOWLEDGED and acked.alarm.acknowledged_by == "op-1"
    assert PublishAck("LW-1", "ev-1", "A1", AckStatus.OPERATOR_ACKNOWLEDGED) in acked.effects
    assert apply(acked.alarm, Tick(s(3600)), POLICY).alarm.status == AlarmStatus.ACKNOWLEDGED


def test_acknowledging_at_the_deadline_is_too_late_but_still_recorded() -> None:
    t = apply(sos().alarm, Acknowledge("op-1", s(30)), POLICY)
    assert t.alarm.status == AlarmStatus.ESCALATED
    assert t.alarm.acknowledged_by == "op-1"
    assert len(of(t.effects, CallWebhook)) == 1


def test_amber_cancelled_in_time_resolves_as_cancelled_without_incident() -> None:
    t = apply(amber().alarm, DeviceCancel("ev-cancel", s(599)), POLICY)
    assert t.alarm.status == AlarmStatus.RESOLVED and t.alarm.outcome == Outcome.CANCELLED
    assert t.alarm.severity == Severity.AMBER
    assert PublishAck("LW-1", "ev-cancel", "A2", AckStatus.RESOLVED) in t.effects
    assert not of(t.effects, OpenOrJoinIncident) and not t.alarm.incident_requested


def test_amber_not_cancelled_turns_red_then_needs_an_acknowledgement() -> None:
    a = amber().alarm
    assert a.ack_due_at is None and next_deadline(a) == s(600)
    red = apply(a, Tick(s(600)), POLICY)
    assert red.alarm.severity == Severity.RED and red.alarm.red_at == s(600)
    assert red.alarm.ack_due_at == s(630)
    assert [n.change for n in of(red.effects, NotifyOperators)] == [Change.TURNED_RED]
    assert of(red.effects, OpenOrJoinIncident)
    escalated = apply(red.alarm, Tick(s(631)), POLICY)
    assert escalated.alarm.status == AlarmStatus.ESCALATED


def test_cancel_after_amber_turned_red_is_only_a_request() -> None:
    """A cancel may be made under duress: once red, a person decides."""
    t = apply(amber().alarm, DeviceCancel("ev-cancel", s(601)), POLICY)
    assert t.alarm.is_open and t.alarm.severity == Severity.RED
    assert t.alarm.cancel_requested_at == s(601)
    assert Change.CANCEL_REQUESTED in [n.change for n in of(t.effects, NotifyOperators)]
    assert PublishAck("LW-1", "ev-cancel", "A2", AckStatus.RECEIVED) in t.effects


def test_sos_cancel_by_device_never_resolves_it() -> None:
    t = apply(sos().alarm, DeviceCancel("ev-c", s(1)), POLICY)
    assert t.alarm.is_open and t.alarm.cancel_requested_at == s(1)


def test_buffered_amber_that_already_ran_out_is_red_at_once() -> None:
    t = amber(timeout_s=60, occurred_at=T0 - timedelta(minutes=5))
    assert t.alarm.severity == Severity.RED and t.alarm.red_at == T0 - timedelta(minutes=4)
    assert t.alarm.status == AlarmStatus.ESCALATED  # its ack deadline passed too, before it arrived


def test_amber_from_a_fast_device_clock_gets_no_extra_time() -> None:
    t = amber(timeout_s=60, occurred_at=T0 + timedelta(minutes=3))
    assert t.alarm.amber_deadline == s(60)


def test_amber_acknowledged_before_red_needs_acknowledging_again_when_red() -> None:
    acked = apply(amber().alarm, Acknowledge("op", s(5)), POLICY).alarm
    with pytest.raises(AlarmTransitionError):
        apply(acked, Acknowledge("op2", s(6)), POLICY)
    red = apply(acked, Tick(s(600)), POLICY).alarm
    assert red.status == AlarmStatus.ACKNOWLEDGED and red.ack_due_at == s(630)
    again = apply(red, Acknowledge("op", s(610)), POLICY).alarm
    assert again.ack_due_at is None and again.acknowledged_at == s(610)
    assert apply(again, Tick(s(9999)), POLICY).alarm.status == AlarmStatus.ACKNOWLEDGED


def test_a_refused_action_still_reports_the_deadlines_that_fired_before_it() -> None:
    with pytest.raises(AlarmTransitionError) as refused:
        apply(apply(sos().alarm, Escalate("op", s(1)), POLICY).alarm, Escalate("op2", s(2)), POLICY)
    assert refused.value.transition is not None and refused.value.transition.effects == ()
    with pytest.raises(AlarmTransitionError) as late:
        apply(apply(sos().alarm, Acknowledge("op", s(1)), POLICY).alarm, Acknowledge("op2", s(99)), POLICY)
    assert (
        late.value.transition is not None and late.value.transition.alarm.status == AlarmStatus.ACKNOWLEDGED
    )
    red = apply(amber(timeout_s=10).alarm, Acknowledge("op", s(1)), POLICY).alarm
    with pytest.raises(AlarmTransitionError) as after_red:
        apply(red, Resolve("op", s(50), Outcome.CLEARED), POLICY)
    assert after_red.value.transition.alarm.status == AlarmStatus.ESCALATED  # red at 10, unanswered by 40


def test_operator_escalation_and_resolution() -> None:
    esc = apply(sos().alarm, Escalate("op", s(3), "police called"), POLICY)
    assert esc.alarm.status == AlarmStatus.ESCALATED and esc.alarm.escalated_by == "op"
    assert of(esc.effects, CallWebhook)[0].reason == EscalationReason.OPERATOR
    with pytest.raises(AlarmTransitionError):
        apply(esc.alarm, Escalate("op", s(4)), POLICY)
    done = apply(esc.alarm, Resolve("op", s(60), Outcome.GENUINE, "assault, police attended"), POLICY)
    assert done.alarm.status == AlarmStatus.RESOLVED and done.alarm.outcome == Outcome.GENUINE
    assert PublishAck("LW-1", "ev-1", "A1", AckStatus.RESOLVED) in done.effects
    for event in (Acknowledge("op", s(61)), Escalate("op", s(61)), Resolve("op", s(61), Outcome.TEST)):
        with pytest.raises(AlarmTransitionError):
            apply(done.alarm, event, POLICY)
    assert apply(done.alarm, Tick(s(9999)), POLICY) == Transition(done.alarm, ())


@pytest.mark.parametrize("outcome", [Outcome.CANCELLED, Outcome.CLEARED])
def test_operators_may_not_use_the_automatic_outcomes(outcome: Outcome) -> None:
    with pytest.raises(AlarmTransitionError):
        apply(sos().alarm, Resolve("op", s(1), outcome), POLICY)


def test_genuine_amber_resolved_before_red_still_opens_an_incident() -> None:
    t = apply(amber().alarm, Resolve("op", s(10), Outcome.GENUINE), POLICY)
    assert of(t.effects, OpenOrJoinIncident) and t.alarm.incident_requested


def test_low_battery_never_escalates_and_clears_itself() -> None:
    t = raise_alarm(
        alarm_id="B",
        device_id="LW-1",
        kind=AlarmKind.LOW_BATTERY,
        at=T0,
        policy=POLICY,
        source_event_id="ev-b",
    )
    assert t.alarm.severity == Severity.WARNING and next_deadline(t.alarm) is None
    assert apply(t.alarm, Tick(s(86_400)), POLICY).alarm.status == AlarmStatus.RAISED
    cleared = apply(t.alarm, ConditionCleared(s(100), "battery_ok"), POLICY).alarm
    assert cleared.outcome == Outcome.CLEARED and cleared.resolved_by == "service"
    assert is_battery_low(15, POLICY) and not is_battery_low(16, POLICY)
    assert is_battery_recovered(25, POLICY) and not is_battery_recovered(20, POLICY)


def test_missed_checkin_is_due_after_the_grace_period_only_for_an_open_visit() -> None:
    visit = Visit("V-1", "LW-1", started_at=T0, expected_end=s(3600))
    assert missed_checkin_due_at(visit, POLICY) == s(3900)
    assert not is_checkin_missed(visit, s(3899), POLICY) and is_checkin_missed(visit, s(3900), POLICY)
    ended = Visit("V-1", "LW-1", started_at=T0, expected_end=s(3600), ended_at=s(3700))
    raised_already = Visit("V-1", "LW-1", started_at=T0, expected_end=s(3600), missed_alarm_id="A9")
    assert not is_checkin_missed(ended, s(9999), POLICY) and not is_checkin_missed(
        raised_already, s(9999), POLICY
    )


def test_missed_checkin_raised_by_service_clears_on_late_end_unless_someone_engaged() -> None:
    t = raise_alarm(
        alarm_id="M",
        device_id="LW-1",
        kind=AlarmKind.MISSED_CHECKIN,
        at=s(3900),
        policy=POLICY,
        visit_id="V-1",
    )
    assert not of(t.effects, PublishAck)  # no device event to answer
    assert t.alarm.ack_due_at == s(3930) and t.alarm.severity == Severity.AMBER
    cleared = apply(t.alarm, ConditionCleared(s(3910), "checkin_end"), POLICY).alarm
    assert cleared.outcome == Outcome.CLEARED
    acked = apply(t.alarm, Acknowledge("op", s(3905)), POLICY).alarm
    noted = apply(acked, ConditionCleared(s(3910), "checkin_end"), POLICY)
    assert noted.alarm.is_open and noted.alarm.condition_cleared_at == s(3910)
    assert [n.change for n in of(noted.effects, NotifyOperators)] == [Change.CONDITION_CLEARED]


def test_device_offline_only_matters_during_a_visit_or_an_open_alarm() -> None:
    seen = T0
    assert not is_device_offline(seen, s(10_000), POLICY, visit_active=False, alarm_open=False)
    assert not is_device_offline(seen, s(179), POLICY, visit_active=True, alarm_open=False)
    assert is_device_offline(seen, s(180), POLICY, visit_active=True, alarm_open=False)
    assert is_device_offline(seen, s(180), POLICY, visit_active=False, alarm_open=True)
    t = raise_alarm(alarm_id="O", device_id="LW-1", kind=AlarmKind.DEVICE_OFFLINE, at=s(180), policy=POLICY)
    assert t.alarm.severity == Severity.WARNING
    assert apply(t.alarm, ConditionCleared(s(200), "device_online"), POLICY).alarm.outcome == Outcome.CLEARED
    assert apply(t.alarm, Tick(s(211)), POLICY).alarm.status == AlarmStatus.ESCALATED


def test_raise_validates_amber_timeout() -> None:
    with pytest.raises(ValueError):
        raise_alarm(alarm_id="x", device_id="d", kind=AlarmKind.AMBER, at=T0, policy=POLICY)
    with pytest.raises(ValueError):
        raise_alarm(alarm_id="x", device_id="d", kind=AlarmKind.SOS, at=T0, policy=POLICY, amber_timeout_s=5)


def test_alarm_round_trips_through_a_dict() -> None:
    alarm = apply(amber().alarm, Tick(s(700)), POLICY).alarm
    assert Alarm.from_dict(alarm.to_dict()) == alarm


# --------------------------------------------------------------------------- invariants


_KINDS = list(AlarmKind)
_EVENT_NAMES = ["ack", "escalate", "resolve", "cancel", "cleared", "tick"]
_RED_ONLY_BY_PEOPLE = {AlarmKind.SOS, AlarmKind.MAN_DOWN}


def _event(name: str, at: datetime, outcome: Outcome, n: int) -> Any:
    return {
        "ack": Acknowledge(f"op-{n}", at),
        "escalate": Escalate(f"op-{n}", at),
        "resolve": Resolve(f"op-{n}", at, outcome),
        "cancel": DeviceCancel(f"cancel-{n}", at),
        "cleared": ConditionCleared(at, "test"),
        "tick": Tick(at),
    }[name]


histories = st.tuples(
    st.sampled_from(_KINDS),
    st.integers(1, 900),  # amber timeout
    st.integers(-1200, 120),  # occurred_at relative to raise (buffered, or device clock fast)
    st.lists(
        st.tuples(
            st.integers(0, 400), st.sampled_from(_EVENT_NAMES), st.sampled_from(sorted(OPERATOR_OUTCOMES))
        ),
        max_size=12,
    ),
)


def _start(kind: AlarmKind, timeout: int, occurred: int) -> Transition:
    return raise_alarm(
        alarm_id="H",
        device_id="LW-1",
        kind=kind,
        at=T0,
        policy=POLICY,
        occurred_at=s(occurred),
        source_event_id="ev-h",
        amber_timeout_s=timeout if kind == AlarmKind.AMBER else None,
        reason="fall" if kind == AlarmKind.MAN_DOWN else None,
    )


def _run(history: Any) -> tuple[list[Transition], list[Any]]:
    """Apply a history; returns every transition and the events that were allowed."""
    kind, timeout, occurred, steps = history
    transitions = [_start(kind, timeout, occurred)]
    applied: list[Any] = []
    at = T0
    for n, (gap, name, outcome) in enumerate(steps):
        at = at + timedelta(seconds=gap)
        event = _event(name, at, outcome, n)
        try:
            transitions.append(apply(transitions[-1].alarm, event, POLICY))
            applied.append(event)
        except AlarmTransitionError as refused:
            assert isinstance(event, Acknowledge | Escalate | Resolve)  # only operators are refused
            assert refused.transition is not None
            if refused.transition.alarm != transitions[-1].alarm:  # deadlines fired before the refusal
                transitions.append(refused.transition)
                applied.append(Tick(at))
    return transitions, applied


@settings(max_examples=400, deadline=None)
@given(histories)
def test_lifecycle_invariants(history: Any) -> None:
    transitions, applied = _run(history)
    events = [None, *applied]
    incidents = 0
    for i, t in enumerate(transitions):
        alarm = t.alarm
        incidents += len(of(t.effects, OpenOrJoinIncident))
        at = T0 if events[i] is None else events[i].at
        # no deadline is left overdue after a transition
        due = next_deadline(alarm)
        assert due is None or due > at
        # an acknowledgement deadline only exists while an operator could still answer it
        if alarm.status in (AlarmStatus.ESCALATED, AlarmStatus.RESOLVED):
            assert alarm.ack_due_at is None
        assert alarm.incident_requested == (incidents == 1)
        if (
            alarm.severity == Severity.RED
            or alarm.status == AlarmStatus.ESCALATED
            or alarm.outcome == Outcome.GENUINE
        ):
            assert alarm.incident_requested
        if i == 0:
            continue
        before = transitions[i - 1].alarm
        # never backwards
        assert alarm.status.rank >= before.status.rank
        assert alarm.severity.rank >= before.severity.rank
        # a resolved alarm never changes again
        if not before.is_open:
            assert alarm == before
            assert all(isinstance(e, PublishAck) for e in t.effects)
        # exactly one webhook per escalation, and only then
        escalated_now = before.escalated_at is None and alarm.escalated_at is not None
        assert len(of(t.effects, CallWebhook)) == (1 if escalated_now else 0)
    assert incidents <= 1
    final = transitions[-1].alarm
    # red alarms are only ever closed by a person
    if final.outcome is not None and (final.kind in _RED_ONLY_BY_PEOPLE or final.red_at is not None):
        assert final.outcome in OPERATOR_OUTCOMES
    if final.outcome == Outcome.CANCELLED:
        assert final.amber_deadline is not None and final.resolved_at < final.amber_deadline
    # an ack-timeout escalation means nobody acknowledged during the acknowledgement window
    if final.escalation_reason == EscalationReason.ACK_TIMEOUT:
        window_start = final.escalated_at - POLICY.ack_timeout
        assert not any(
            isinstance(e, Acknowledge) and window_start <= e.at < final.escalated_at for e in applied
        )
    assert Alarm.from_dict(final.to_dict()) == final


@settings(max_examples=300, deadline=None)
@given(histories, st.lists(st.integers(0, 400), max_size=6))
def test_extra_clock_ticks_never_change_the_outcome(history: Any, tick_gaps: list[int]) -> None:
    """Deadlines fire at their own time, so how often the service looks does not matter."""
    kind, timeout, occurred, steps = history
    plain = _run(history)[0][-1].alarm
    # the same history with ticks inserted between the steps (never past the next step's time)
    alarm = _start(kind, timeout, occurred).alarm
    at = T0
    gaps = iter(tick_gaps)
    for n, (gap, name, outcome) in enumerate(steps):
        extra = next(gaps, None)
        if extra is not None:
            alarm = apply(alarm, Tick(at + timedelta(seconds=min(extra, gap))), POLICY).alarm
        at = at + timedelta(seconds=gap)
        try:
            alarm = apply(alarm, _event(name, at, outcome, n), POLICY).alarm
        except AlarmTransitionError as refused:
            alarm = refused.transition.alarm
    assert alarm == plain
