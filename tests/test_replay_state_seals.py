"""A lone-worker device's replay state written by SQL silences nothing, on both databases.

The state (the device's highest accepted sequence, its recent alarm and check-in event ids) decides
which messages are refused as replays. An event id still to come written into it had the device's
SOS acknowledged as a duplicate and never raised; a raised highest sequence had every message it
sent refused as stale. The state is now sealed as the intake writes it; one whose seal does not
hold is rebuilt from the device's received messages, named in a warning, a
``replay_state_rebuilt`` custody entry and ``evidence verify`` (``device_replay_state_altered``).
A state stored before seals is taken as far as the device's received messages bear it out."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update

from alarms.models import AlarmRecord
from chain_of_custody.awaiting_upgrade import awaiting_upgrade
from chain_of_custody.models import CustodyEntry
from devices.lone_worker_wire import MAX_SAFE_INTEGER
from devices.models import LoneWorkerState
from tests.test_alarms_kit import acks, enrol, later
from tests.test_heard_seals import _state
from tests.test_visit_seals import _cli, _sql


def _edit(services: Any, device_id: str, **changes: Any) -> None:
    """The device's replay state edited by SQL (its seal left as it is)."""
    data = json.loads(_state(services, device_id).replay_state)
    data.update(changes)
    text = json.dumps(data, separators=(",", ":"))
    _sql(
        services,
        update(LoneWorkerState).where(LoneWorkerState.device_id == device_id).values(replay_state=text),
    )


def _rebuilt(services: Any) -> list[dict[str, Any]]:
    with services.db.session() as session:
        q = select(CustodyEntry.details).where(CustodyEntry.action == "replay_state_rebuilt")
        return [json.loads(d) for d in session.scalars(q.order_by(CustodyEntry.seq))]


def _raised(services: Any, device_id: str) -> list[str]:
    with services.db.session() as session:
        q = select(AlarmRecord.source_event_id).where(AlarmRecord.device_id == device_id)
        return list(session.scalars(q))


def test_an_sos_event_id_written_into_the_replay_state_is_raised_and_acked_as_received(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    device = enrol(services, "LW-RS1", staff_id="S-RS1", site="NORTH")
    now = datetime.now(UTC)
    assert services.alarms.handle(*device.heartbeat(sent_at=now), now=now).outcome == "accepted"
    upcoming = str(uuid.uuid4())
    _edit(services, "LW-RS1", events=[upcoming])

    topic, raw = device.sos(event_id=upcoming, sent_at=later(1, now))
    with caplog.at_level(logging.WARNING, logger="alarms.replay_state"):
        raised = services.alarms.handle(topic, raw, now=later(1, now))
    assert (raised.outcome, raised.alarm_id is not None) == ("accepted", True), raised
    assert _raised(services, "LW-RS1") == [upcoming]
    ack = [a for a in acks(services, "LW-RS1") if a["event_id"] == upcoming]
    assert [(a["status"], a["alarm_id"]) for a in ack] == [("received", raised.alarm_id)], ack
    assert any("replay state is not as the service sealed it" in r.getMessage() for r in caplog.records)
    entries = _rebuilt(services)
    assert [(e["device"], e["found_events"]) for e in entries] == [("LW-RS1", [upcoming])], entries
    # Written sealed again: verify finds nothing more to say of it, and the SOS sent again is a duplicate.
    found = _cli(services, "verify", "--json")
    assert "device_replay_state_altered" not in found.output, found.output
    assert found.exit_code != 0 and "device_replay_state_rebuilt" in found.output, found.output
    assert "device LW-RS1" in found.output and upcoming in found.output, found.output
    again = services.alarms.handle(topic, raw, now=later(2, now))
    assert again.outcome == "duplicate" and again.alarm_id == raised.alarm_id, again
    assert len(_rebuilt(services)) == 1


def test_evidence_verify_names_a_replay_state_edited_by_sql(services: Any) -> None:
    device = enrol(services, "LW-RS6", staff_id="S-RS6", site="NORTH")
    now = datetime.now(UTC)
    assert services.alarms.handle(*device.heartbeat(sent_at=now), now=now).outcome == "accepted"
    assert "device_replay_state_altered" not in _cli(services, "verify", "--json").output
    _edit(services, "LW-RS6", highest=MAX_SAFE_INTEGER)
    found = _cli(services, "verify", "--json")
    assert found.exit_code != 0 and "device_replay_state_altered" in found.output, found.output
    assert "device LW-RS6" in found.output, found.output


def test_a_raised_highest_sequence_does_not_silence_the_device(services: Any) -> None:
    device = enrol(services, "LW-RS2", staff_id="S-RS2", site="NORTH")
    now = datetime.now(UTC)
    assert services.alarms.handle(*device.heartbeat(sent_at=now), now=now).outcome == "accepted"
    _edit(services, "LW-RS2", highest=MAX_SAFE_INTEGER, bits="1")
    beat = services.alarms.handle(*device.heartbeat(sent_at=later(1, now)), now=later(1, now))
    assert beat.outcome == "accepted", beat
    topic, raw = device.sos(sent_at=later(2, now))
    raised = services.alarms.handle(topic, raw, now=later(2, now))
    assert (raised.outcome, raised.alarm_id is not None) == ("accepted", True), raised
    assert [(e["device"], e["found_highest"]) for e in _rebuilt(services)] == [("LW-RS2", MAX_SAFE_INTEGER)]
    assert json.loads(_state(services, "LW-RS2").replay_state)["highest"] == device.seq


def test_a_rebuilt_state_keeps_the_devices_received_messages(services: Any) -> None:
    """Rebuilt from the device's received messages (their signed sequence numbers and event ids): a
    stored SOS delivered again, byte for byte, is still refused as a replay and acknowledged as a
    duplicate, not raised twice."""
    device = enrol(services, "LW-RS3", staff_id="S-RS3", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    first = services.alarms.handle(topic, raw, now=now)
    assert first.outcome == "accepted"
    _edit(services, "LW-RS3", highest=MAX_SAFE_INTEGER, bits="1", events=[])
    again = services.alarms.handle(topic, raw, now=later(1, now))
    assert (again.outcome, again.alarm_id) == ("duplicate", first.alarm_id), again
    assert len(_raised(services, "LW-RS3")) == 1
    beat = services.alarms.handle(*device.heartbeat(sent_at=later(2, now)), now=later(2, now))
    assert beat.outcome == "accepted", beat
    state = json.loads(_state(services, "LW-RS3").replay_state)
    assert state["highest"] == device.seq and state["events"] == [json.loads(raw)["event_id"]]


def test_the_services_own_states_hold_and_a_re_enrolment_starts_afresh(services: Any) -> None:
    """Ordinary traffic rebuilds nothing; a replayed heartbeat is still refused; a device enrolled
    again starts its sequence afresh, with nothing rebuilt."""
    device = enrol(services, "LW-RS4", staff_id="S-RS4", site="NORTH")
    now = datetime.now(UTC)
    beat = device.heartbeat(sent_at=now)
    assert services.alarms.handle(*beat, now=now).outcome == "accepted"
    assert services.alarms.handle(*device.sos(sent_at=now), now=now).outcome == "accepted"
    assert services.alarms.handle(*beat, now=later(1, now)).reason == "replay"
    assert _state(services, "LW-RS4").replay_seal is not None
    fresh = enrol(services, "LW-RS4", staff_id=None, site="NORTH")
    assert (
        services.alarms.handle(*fresh.heartbeat(sent_at=later(2, now)), now=later(2, now)).outcome
        == "accepted"
    )
    assert _rebuilt(services) == []


def test_a_state_stored_before_seals_is_taken_as_its_received_messages_bear_it_out(
    services: Any,
) -> None:
    """No seal (as migration 0049 leaves every state): counted in a note by verify, not named as
    altered; the device's next message is judged against the state its received messages bear
    out, with no warning entry, and the state it writes is sealed."""
    device = enrol(services, "LW-RS5", staff_id="S-RS5", site="NORTH")
    now = datetime.now(UTC)
    assert services.alarms.handle(*device.heartbeat(sent_at=now), now=now).outcome == "accepted"
    upcoming = str(uuid.uuid4())
    _edit(services, "LW-RS5", events=[upcoming])
    _sql(
        services,
        update(LoneWorkerState).where(LoneWorkerState.device_id == "LW-RS5").values(replay_seal=None),
    )
    found = _cli(services, "verify", "--json")
    assert "device_replay_state_altered" not in found.output, found.output
    assert "replay state written before it was sealed" in found.output, found.output
    raised = services.alarms.handle(*device.sos(event_id=upcoming, sent_at=later(1, now)), now=later(1, now))
    assert (raised.outcome, raised.alarm_id is not None) == ("accepted", True), raised
    assert _rebuilt(services) == []
    assert _state(services, "LW-RS5").replay_seal is not None


def test_evidence_upgrade_seals_writes_a_state_stored_before_seals_rebuilt_and_sealed(services: Any) -> None:
    device = enrol(services, "LW-RS7", staff_id="S-RS7", site="NORTH")
    now = datetime.now(UTC)
    topic, raw = device.sos(sent_at=now)
    assert services.alarms.handle(topic, raw, now=now).outcome == "accepted"
    assert services.alarms.handle(*device.heartbeat(sent_at=now), now=now).outcome == "accepted"
    _edit(services, "LW-RS7", highest=MAX_SAFE_INTEGER, bits="1", events=[])
    _sql(
        services,
        update(LoneWorkerState).where(LoneWorkerState.device_id == "LW-RS7").values(replay_seal=None),
    )
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["device_replay_states"] == 1
    listed = _cli(services, "seal-replay")
    assert "device LW-RS7" in listed.output and _state(services, "LW-RS7").replay_seal is None, listed.output
    done = _cli(services, "seal-replay", "--yes")
    assert done.exit_code == 0, done.output
    state = _state(services, "LW-RS7")
    said = json.loads(state.replay_state)
    assert (said["highest"], said["events"]) == (1, [json.loads(raw)["event_id"]]), said
    with services.db.session() as session:
        assert awaiting_upgrade(session, services.key).counts["device_replay_states"] == 0
    assert "device_replay_state" not in _cli(services, "verify", "--json").output
    assert services.alarms.handle(topic, raw, now=later(1, now)).outcome == "duplicate"
    assert (
        services.alarms.handle(*device.heartbeat(sent_at=later(2, now)), now=later(2, now)).outcome
        == "accepted"
    )
    assert _rebuilt(services) == []
