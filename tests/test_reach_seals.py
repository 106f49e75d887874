"""What decides a security manager's reach is checked where it is used, not only by ``evidence verify``,
on both databases and the real store: a member of staff's site, an evidence item's wearer, recording
device and original, moved by SQL, widen nobody's list, stream or link (and so nobody's export) of
evidence; the rows are sealed (``chain_of_custody.reach_seals``), ``evidence verify`` names a broken
seal, and ``evidence upgrade-seals`` adopts rows sealed before seals were kept, where the ledger bears
them out."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import update
from typer.testing import CliRunner

from chain_of_custody.models import EvidenceItem
from devices.models import StaffMember
from devices.service import enrol_keyed_device
from ingest.cli import app
from ingest.settings import get_settings
from tests.conftest import settings_env
from tests.test_incidents_kit import bearer, staff, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
REASON = "reviewing the assault on Ward 7"


def _camera(services: Any, serial: str, site: str) -> None:
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with services.db.session() as session:
        enrol_keyed_device(
            session, services.ledger, "camera", serial, base64.b64encode(key).decode(), "test", site=site
        )


def _sql(services: Any, statement: Any) -> None:
    """A change made in the database behind the service's back."""
    with services.db.session() as session:
        session.execute(statement)


class SouthManager:
    """The SOUTH security manager's view through the API: the list, one item, its bytes, and a link
    of it into a SOUTH incident (what an export packs)."""

    def __init__(self, live: Any) -> None:
        self.api, self.s, self.admin = f"{live.url}/api/v1", live.services, live.admin()
        self.headers = bearer(self.s, "south_mgr")
        body = {"category": "theft", "occurred_at": T0.isoformat(), "site": "SOUTH"}
        r = httpx.post(f"{self.api}/incidents", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        self.incident = r.json()["id"]

    def listed(self) -> set[str]:
        r = httpx.get(f"{self.api}/evidence", params={"limit": 1000}, headers=self.headers)
        assert r.status_code == 200, r.text
        return {i["id"] for i in r.json()}

    def reaches(self, item_id: str) -> dict[str, bool]:
        """Whether each way of reaching one item succeeds."""
        one = httpx.get(f"{self.api}/evidence/{item_id}", headers=self.headers)
        stream = httpx.get(
            f"{self.api}/evidence/{item_id}/content", params={"reason": REASON}, headers=self.headers
        )
        link = httpx.post(
            f"{self.api}/incidents/{self.incident}/links",
            json={"kind": "evidence", "target_id": item_id, "reason": "seen nearby"},
            headers=self.headers,
        )
        if stream.status_code == 200:
            assert stream.content == self._bytes(item_id)
        return {
            "list": item_id in self.listed(),
            "item": one.status_code == 200,
            "stream": stream.status_code == 200,
            "link": link.status_code == 201,
        }

    def _bytes(self, item_id: str) -> bytes:
        with self.s.db.session() as session:
            item = session.get(EvidenceItem, item_id)
            assert item is not None
            key, version = item.object_key, item.version_id
        return self.s.store.get_bytes(key, version)


NOWHERE = {"list": False, "item": False, "stream": False, "link": False}


@pytest.fixture
def south(live: Any) -> SouthManager:
    s = live.services
    staff(s, "N-1", "nurse", "NORTH")
    staff(s, "S-2", "porter", "SOUTH")
    _camera(s, "CAM-N", "NORTH")
    _camera(s, "CAM-S", "SOUTH")
    user(s, "south_mgr", "security_manager", "SOUTH")
    return SouthManager(live)


def test_a_manager_reaches_their_own_sites_footage(south: SouthManager) -> None:
    """The control: footage worn at SOUTH, or recorded by a SOUTH camera, is the SOUTH manager's."""
    worn = store_item(south.s, wearer="S-2", start=T0)
    recorded = store_item(south.s, device="CAM-S", start=T0)
    for item in (worn, recorded):
        assert south.reaches(item.id) == {"list": True, "item": True, "stream": True, "link": True}


def test_a_staff_site_moved_in_the_database_widens_no_reach(
    south: SouthManager, caplog: pytest.LogCaptureFixture
) -> None:
    clip = store_item(south.s, wearer="N-1", start=T0)
    assert clip.id not in south.listed()
    _sql(south.s, update(StaffMember).where(StaffMember.id == "N-1").values(site="SOUTH"))
    with caplog.at_level(logging.WARNING):
        assert south.reaches(clip.id) == NOWHERE
    assert any("member of staff refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "moved",
    [{"wearer": "S-2"}, {"source_device_id": "CAM-S"}],
    ids=["wearer", "recording device"],
)
def test_an_items_wearer_or_device_moved_in_the_database_widens_no_reach(
    south: SouthManager, moved: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    clip = store_item(south.s, wearer="N-1", device="CAM-N", start=T0)
    _sql(south.s, update(EvidenceItem).where(EvidenceItem.id == clip.id).values(**moved))
    with caplog.at_level(logging.WARNING):
        assert south.reaches(clip.id) == NOWHERE
    assert any("evidence item refused" in r.getMessage() for r in caplog.records)


def test_an_items_original_moved_in_the_database_widens_no_reach(south: SouthManager) -> None:
    """A NORTH clip re-pointed at a SOUTH original, as though it were that clip's redacted copy."""
    south_clip = store_item(south.s, wearer="S-2", start=T0)
    north_clip = store_item(south.s, wearer="N-1", start=T0)
    _sql(
        south.s,
        update(EvidenceItem).where(EvidenceItem.id == north_clip.id).values(derived_from_id=south_clip.id),
    )
    assert south.reaches(north_clip.id) == NOWHERE
    assert south.reaches(south_clip.id)["stream"]


def test_an_item_linked_to_a_managers_incident_stays_theirs_whatever_its_wearer(
    south: SouthManager,
) -> None:
    """A broken seal takes away only the reach the row decides: a link (on custody) still holds."""
    clip = store_item(south.s, wearer="S-2", start=T0)
    assert south.reaches(clip.id)["link"]
    _sql(south.s, update(EvidenceItem).where(EvidenceItem.id == clip.id).values(wearer="N-1"))
    found = south.reaches(clip.id)
    assert found["list"] and found["item"] and found["stream"], found


def _verify(services: Any) -> tuple[int, str]:
    runner = CliRunner()
    env = settings_env(services.settings)
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["verify", "--json"], env=env)
    finally:
        get_settings.cache_clear()
    return r.exit_code, r.output


def test_verify_names_broken_reach_seals(south: SouthManager) -> None:
    clip = store_item(south.s, wearer="N-1", start=T0)
    _sql(south.s, update(StaffMember).where(StaffMember.id == "N-1").values(seal="0" * 64))
    _sql(south.s, update(EvidenceItem).where(EvidenceItem.id == clip.id).values(reach_seal="0" * 64))
    code, output = _verify(south.s)
    assert code != 0
    assert "staff_seal_broken" in output and "member of staff N-1" in output
    assert "item_seal_broken" in output and f"evidence item {clip.id}" in output


def test_upgrade_seals_adopts_what_the_ledger_bears_out(south: SouthManager) -> None:
    """Rows from before seals have none: they reach nobody until ``upgrade-seals --yes`` seals those
    whose wearer, device and site the custody record bears out, and not one moved in the database."""
    kept = store_item(south.s, wearer="S-2", start=T0)
    moved = store_item(south.s, wearer="N-1", start=T0)
    _sql(south.s, update(EvidenceItem).values(reach_seal=None))
    _sql(south.s, update(StaffMember).values(seal=None))
    _sql(south.s, update(EvidenceItem).where(EvidenceItem.id == moved.id).values(wearer="S-2"))
    assert kept.id not in south.listed()
    runner = CliRunner()
    env = settings_env(south.s.settings)
    get_settings.cache_clear()
    try:
        listed = runner.invoke(app, ["upgrade-seals"], env=env)
        done = runner.invoke(app, ["upgrade-seals", "--yes"], env=env)
    finally:
        get_settings.cache_clear()
    assert "seal-reach" in listed.output, listed.output
    assert done.exit_code == 1, done.output  # a step refused a row: the moved item
    assert moved.id in done.output
    assert south.listed() >= {kept.id}
    assert moved.id not in south.listed()


def test_a_window_follows_no_wearer_moved_in_the_database(live: Any) -> None:
    """An incident's footage window links a wearer's clips as they arrive: a NORTH nurse's site moved
    to SOUTH in the database takes none of their footage into a SOUTH incident."""
    s = live.services
    staff(s, "N-1", "nurse", "NORTH")
    user(s, "south_mgr", "security_manager", "SOUTH")
    _sql(s, update(StaffMember).where(StaffMember.id == "N-1").values(site="SOUTH"))
    manager = bearer(s, "south_mgr")
    body = {
        "category": "theft",
        "occurred_at": T0.isoformat(),
        "site": "SOUTH",
        "wearer": "N-1",
        "window_start": (T0 - timedelta(hours=1)).isoformat(),
        "window_end": (T0 + timedelta(days=30)).isoformat(),
    }
    r = httpx.post(f"{live.url}/api/v1/incidents", json=body, headers=manager)
    assert r.status_code in (201, 403, 422), r.text
    store_item(s, wearer="N-1", start=T0, stop=T0 + timedelta(minutes=2))
    assert SouthManagerList(live, manager).ids() == set()


class SouthManagerList:
    def __init__(self, live: Any, headers: dict[str, str]) -> None:
        self.url, self.headers = f"{live.url}/api/v1/evidence", headers

    def ids(self) -> set[str]:
        r = httpx.get(self.url, params={"limit": 1000}, headers=self.headers)
        assert r.status_code == 200, r.text
        return {i["id"] for i in r.json()}


def test_a_manager_cannot_seal_again_a_member_of_staff_moved_to_their_site(south: SouthManager) -> None:
    """Re-registering a nurse whose row was moved to SOUTH in the database would have the service
    seal the move: refused like another site's staff number. An administrator who confirms the move
    records the site on custody, so the ledger says what the service seals."""
    clip = store_item(south.s, wearer="N-1", start=T0)
    _sql(south.s, update(StaffMember).where(StaffMember.id == "N-1").values(site="SOUTH"))
    body = {"id": "N-1", "name": "Staff N-1", "group": "nurse", "site": "SOUTH"}
    r = httpx.post(f"{south.api}/staff", json=body, headers=south.headers)
    assert r.status_code == 409, r.text
    assert south.reaches(clip.id) == NOWHERE
    assert httpx.post(f"{south.api}/staff", json=body, headers=south.admin).status_code == 201
    _, output = _verify(south.s)
    assert "staff_site_altered" not in output and "staff_seal_broken" not in output, output
    assert south.reaches(clip.id)["stream"]  # moved by the service now: SOUTH's
