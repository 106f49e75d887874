"""What decides who reads an alarm is checked where alarms are read, not only by ``evidence verify``,
on both databases: an alarm moved to another site by SQL is listed, opened, fed or played to none of
that site's readers, and a voice memo pointed at another site's clip by SQL is streamed to nobody;
the rows are sealed (``chain_of_custody.alarm_seals``), ``evidence verify`` names a broken seal, and
``evidence upgrade-seals`` adopts alarms raised before seals, where the ledger bears them out."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from alarms.models import AlarmRecord
from ingest.cli import app
from ingest.settings import get_settings
from tests.conftest import settings_env
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


class SouthReader:
    """What the SOUTH security manager reads of alarms through the API: the list, one alarm, its
    record, the live stream's backlog, and an alarm's voice memo."""

    def __init__(self, live: Any) -> None:
        self.api, self.s, self.admin = f"{live.url}/api/v1", live.services, live.admin()
        user(self.s, "south_mgr", "security_manager", "SOUTH")
        self.headers = bearer(self.s, "south_mgr")

    def reads(self, alarm_id: str) -> dict[str, bool]:
        """Whether each way of reading one alarm reaches it."""
        listed = httpx.get(f"{self.api}/alarms", params={"limit": 200}, headers=self.headers)
        assert listed.status_code == 200, listed.text
        one = httpx.get(f"{self.api}/alarms/{alarm_id}", headers=self.headers)
        record = httpx.get(f"{self.api}/alarms/{alarm_id}/record", headers=self.headers)
        fed = httpx.get(
            f"{self.api}/alarms/stream", params={"after": 0, "follow": "false"}, headers=self.headers
        )
        assert fed.status_code == 200, fed.text
        return {
            "list": alarm_id in {a["id"] for a in listed.json()},
            "alarm": one.status_code == 200,
            "record": record.status_code == 200,
            "stream": alarm_id in fed.text,
        }

    def memo(self, alarm_id: str) -> httpx.Response:
        return httpx.get(f"{self.api}/alarms/{alarm_id}/voice-memo", headers=self.headers)

    def acknowledge_as_admin(self, alarm_id: str) -> None:
        """A change the service records of the alarm as its row now stands (the live stream's body)."""
        r = httpx.post(f"{self.api}/alarms/{alarm_id}/acknowledge", headers=self.admin)
        assert r.status_code == 200, r.text


NOWHERE = {"list": False, "alarm": False, "record": False, "stream": False}


@pytest.fixture
def south(live: Any) -> SouthReader:
    return SouthReader(live)


def test_a_reader_reads_their_own_sites_alarms(south: SouthReader) -> None:
    """The control: an alarm raised at SOUTH is the SOUTH manager's, on every way of reading it."""
    alarm = raise_test_alarm(south.s, "LW-S", site="SOUTH")
    south.acknowledge_as_admin(alarm)
    assert south.reads(alarm) == {"list": True, "alarm": True, "record": True, "stream": True}


def test_an_alarm_moved_to_another_site_in_the_database_reaches_none_of_its_readers(
    south: SouthReader, caplog: pytest.LogCaptureFixture
) -> None:
    alarm = raise_test_alarm(south.s, "LW-N", site="NORTH")
    assert south.reads(alarm) == NOWHERE
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == alarm).values(site="SOUTH"))
    south.acknowledge_as_admin(alarm)  # the live stream now carries the row as it stands
    with caplog.at_level(logging.WARNING):
        assert south.reads(alarm) == NOWHERE
    assert any("alarm refused" in r.getMessage() for r in caplog.records)


def test_a_voice_memo_pointed_at_another_sites_clip_in_the_database_is_streamed_to_nobody(
    south: SouthReader, caplog: pytest.LogCaptureFixture
) -> None:
    """A SOUTH alarm whose memo is re-pointed at a NORTH nurse's clip: the SOUTH control room would
    play that clip as the memo; an administrator, who sees it anyway, is not handed it as a memo."""
    staff(south.s, "N-1", "nurse", "NORTH")
    clip = store_item(south.s, wearer="N-1", start=T0)
    alarm = raise_test_alarm(south.s, "LW-S", site="SOUTH")
    assert south.memo(alarm).status_code == 404  # no memo yet
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == alarm).values(voice_memo_item_id=clip.id))
    with caplog.at_level(logging.WARNING):
        played = south.memo(alarm)
        assert played.status_code == 404, played.status_code
        as_admin = httpx.get(f"{south.api}/alarms/{alarm}/voice-memo", headers=south.admin)
        assert as_admin.status_code == 404, as_admin.status_code
        record = httpx.get(f"{south.api}/alarms/{alarm}/record", headers=south.admin)
        assert record.status_code == 200 and record.json()["voice_memo"] is None, record.text
    assert any("alarm refused" in r.getMessage() for r in caplog.records)


def _cli(services: Any, *args: str) -> Any:
    runner = CliRunner()
    env = settings_env(services.settings)
    get_settings.cache_clear()
    try:
        return runner.invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()


def test_verify_names_an_alarm_whose_wearer_was_changed_in_the_database(south: SouthReader) -> None:
    """The wearer is on the alarm's custody entry and on its seal: both name the change."""
    alarm = raise_test_alarm(south.s, "LW-S", site="SOUTH")
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == alarm).values(wearer="N-1"))
    r = _cli(south.s, "verify", "--json")
    assert r.exit_code != 0
    assert f"alarm {alarm}" in r.output, r.output
    assert "alarm_seal_broken" in r.output and "alarm_wearer_altered" in r.output, r.output


def test_upgrade_seals_adopts_the_alarms_the_ledger_bears_out(south: SouthReader) -> None:
    """Alarms raised before seals have none: they reach no site's readers until ``upgrade-seals
    --yes`` seals those whose site and memo the custody record bears out, and not one moved."""
    kept = raise_test_alarm(south.s, "LW-S", site="SOUTH")
    moved = raise_test_alarm(south.s, "LW-N", site="NORTH")
    _sql(south.s, update(AlarmRecord).values(seal=None))
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == moved).values(site="SOUTH"))
    assert not south.reads(kept)["list"]
    listed = _cli(south.s, "upgrade-seals")
    done = _cli(south.s, "upgrade-seals", "--yes")
    assert "seal-reach" in listed.output and f"alarm {kept}" in listed.output, listed.output
    assert done.exit_code == 1, done.output  # a step refused a row: the moved alarm
    assert f"alarm {moved}" in done.output and "REFUSED" in done.output
    assert south.reads(kept)["list"] and south.reads(kept)["alarm"]
    assert not south.reads(moved)["list"]


def test_upgrade_seals_refuses_an_alarm_whose_device_was_changed_in_the_database(south: SouthReader) -> None:
    """An alarm's device is sealed with it (what it came from, whose messages' items join its
    incident): one re-pointed by SQL at another device before the upgrade is not sealed in."""
    kept = raise_test_alarm(south.s, "LW-S", site="SOUTH")
    moved = raise_test_alarm(south.s, "LW-S2", site="SOUTH")
    _sql(south.s, update(AlarmRecord).values(seal=None))
    _sql(south.s, update(AlarmRecord).where(AlarmRecord.id == moved).values(device_id="LW-S"))
    done = _cli(south.s, "upgrade-seals", "--yes")
    assert done.exit_code == 1, done.output
    lines = {line.split(":")[0]: line for line in done.output.splitlines() if line.startswith("alarm ")}
    assert "matches its custody record" in lines[f"alarm {kept}"], done.output
    assert "REFUSED" in lines[f"alarm {moved}"] and "its device is 'LW-S'" in lines[f"alarm {moved}"]
    assert south.reads(kept)["list"]
    assert not south.reads(moved)["list"]


def test_an_alarm_moved_in_the_database_opens_no_incident_of_that_site_with_its_memo(
    south: SouthReader,
) -> None:
    """An amber alarm turning red opens an incident of its site and links its memo: an alarm moved to
    SOUTH by SQL, its memo pointed at a NORTH nurse's clip, would put that clip in a SOUTH incident."""
    from tests.test_alarms_kit import enrol, later

    staff(south.s, "N-1", "nurse", "NORTH")
    clip = store_item(south.s, wearer="N-1", start=T0)
    device = enrol(south.s, "LW-AMBER", staff_id=None, site="NORTH")
    now = datetime.now(UTC)
    alarms = south.s.alarms
    result = alarms.handle(*device.amber(60, sent_at=now), now=now)
    _sql(
        south.s,
        update(AlarmRecord)
        .where(AlarmRecord.id == result.alarm_id)
        .values(site="SOUTH", voice_memo_item_id=clip.id),
    )
    assert alarms.fire_deadlines(later(61, now)) == 1  # red: an incident is opened
    with south.s.db.session() as session:
        alarm = session.get(AlarmRecord, result.alarm_id)
        assert alarm is not None and alarm.incident_id is not None
    r = httpx.get(f"{south.api}/evidence/{clip.id}", headers=south.headers)
    assert r.status_code == 404, r.text
