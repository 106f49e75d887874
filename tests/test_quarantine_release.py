"""A reviewed release from quarantine, on both databases, through the real routes.

A clip docked after its camera was re-keyed (or a memo of a disabled device) is kept but quarantined
for review. A security manager of the site it was captured at (or an administrator) may release it
with a written reason: a ``quarantine_released`` custody entry, the item stored again, served and
exported as evidence, and every continuity report says it was held for review, why, and who
released it, when and why.

Nobody else gains anything: an investigator, an auditor, a manager of another site (even one who
sees the item through an incident of theirs), a dock, a release sent twice, an empty or huge reason,
an integrity quarantine (bytes or signature that did not check, or an object found altered after a
release: the later quarantine wins), a status put back to ``stored`` by SQL, and a release entry
written by SQL or signed by another key all leave the item quarantined: not served, not exported,
and named by ``evidence verify``."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from chain_of_custody.entries import CustodyAction
from chain_of_custody.evidence import quarantine
from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.package_verify import verify_package
from chain_of_custody.verify import verify_service
from tests.clipkit import Fleet
from tests.conftest import ADMIN_PASSWORD, SIGN_IN_TIMEOUT, recorded_user, wait_for
from tests.test_clip_holder import _enrol_camera, _fleet, _tick
from tests.test_late_clips import _item, _served, _trail, memo_of_a_disabled_device

RELEASE = "/api/v1/evidence/{}/quarantine-release"
REASON = "Reviewed with the wearer: the camera was re-keyed after this incident, footage is genuine"


def _camera(live: Any, serial: str) -> Fleet:
    """A camera worn by S-A at SOUTH (N-B works at NORTH), and a dock of SOUTH for it."""
    for staff_id, site in (("S-A", "SOUTH"), ("N-B", "NORTH")):
        body = {"id": staff_id, "name": f"Staff {staff_id}", "group": "nurse", "site": site}
        r = httpx.post(f"{live.url}/api/v1/staff", json=body, headers=live.admin())
        assert r.status_code in (201, 409), r.text
    key = Ed25519PrivateKey.generate()
    _enrol_camera(live, serial, key, "S-A", "SOUTH")
    return _fleet(live, serial, key, "S-A")


def _held_clip(live: Any, serial: str = "CAM-Q") -> EvidenceItem:
    """A clip of SOUTH its camera signed before it was re-keyed: quarantined for review, for real."""
    fleet = _camera(live, serial)
    worn = _tick()
    _enrol_camera(live, serial, Ed25519PrivateKey.generate(), "N-B", "NORTH")
    item = _item(live, fleet, worn, f"{serial}.mp4")
    assert (item.site, item.status) == ("SOUTH", "quarantined")
    return item


def _person(live: Any, username: str, role: str, site: str | None = None) -> dict[str, str]:
    with live.services.db.session() as session:
        recorded_user(session, live.services.ledger, username, ADMIN_PASSWORD, role, site=site)
    r = httpx.post(
        f"{live.url}/api/v1/auth/token",
        data={"username": username, "password": ADMIN_PASSWORD},
        timeout=SIGN_IN_TIMEOUT,
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _release(live: Any, who: dict[str, str], item_id: str, reason: Any = REASON) -> httpx.Response:
    return httpx.post(f"{live.url}{RELEASE.format(item_id)}", json={"reason": reason}, headers=who)


def _status(live: Any, item_id: str) -> str:
    with live.services.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None
        return item.status


def _problems(live: Any) -> list[str]:
    s = live.services
    with s.db.session() as session:
        return [str(p) for p in verify_service(session, s.store, s.key).problems]


def _incident(live: Any, site: str, item_id: str) -> str:
    body = {
        "category": "physical_assault",
        "occurred_at": "2026-11-22T10:00:00Z",
        "site": site,
        "title": "A&E",
    }
    r = httpx.post(f"{live.url}/api/v1/incidents", json=body, headers=live.admin())
    assert r.status_code == 201, r.text
    incident = str(r.json()["id"])
    r = httpx.post(
        f"{live.url}/api/v1/incidents/{incident}/links",
        json={"kind": "evidence", "target_id": item_id, "reason": "seen on the footage"},
        headers=live.admin(),
    )
    assert r.status_code in (200, 201), r.text
    return incident


def _download(live: Any, incident: str) -> httpx.Response:
    """The incident's package with its originals, built and downloaded through a link: the answer."""
    r = httpx.post(
        f"{live.url}/api/v1/incidents/{incident}/exports",
        json={"include_originals": True, "reason": "Police request ref MPS-2026-1187"},
        headers=live.admin(),
    )
    assert r.status_code == 202, r.text
    export = f"{live.url}/api/v1/exports/{r.json()['id']}"

    def ready() -> bool:
        body = httpx.get(export, headers=live.admin()).json()
        assert body["status"] != "failed", body
        return bool(body["status"] == "ready")

    wait_for(ready, 60, 0.1, "the export to be ready")
    r = httpx.post(f"{export}/links", json={"recipient": "DC Jones"}, headers=live.admin())
    assert r.status_code == 201, r.text
    return httpx.get(r.json()["url"], timeout=60)


def test_a_manager_of_the_site_releases_a_clip_held_for_review_and_it_is_evidence(
    live: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    item = _held_clip(live)
    incident = _incident(live, "SOUTH", item.id)
    refused = _download(live, incident)
    assert (refused.status_code, refused.json()["reason"]) == (409, "quarantined")  # as before
    quarantined_at = next(e for e in _trail(live, item.id) if e["action"] == "quarantined")
    assert quarantined_at["details"] == {"reason": item.quarantine_reason, "kind": "review"}

    manager = _person(live, "south_boss", "security_manager", "SOUTH")
    with caplog.at_level("INFO"):
        r = _release(live, manager, item.id)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "item_id": item.id,
        "status": "stored",
        "released_by": "user:south_boss",
        "releases": quarantined_at["seq"],
        "custody_entry": r.json()["custody_entry"],
    }
    assert any(rec.getMessage() == "quarantine released" for rec in caplog.records)
    assert not any(REASON in rec.getMessage() or REASON in str(rec.__dict__) for rec in caplog.records)
    released = _trail(live, item.id)[-1]
    assert (released["action"], released["actor"]) == ("quarantine_released", "user:south_boss")
    assert released["details"]["reason"] == REASON
    assert released["details"]["releases"] == quarantined_at["seq"]
    assert _status(live, item.id) == "stored" and _served(live, item.id) == 200
    assert _problems(live) == []
    shown = httpx.get(f"{live.url}/api/v1/evidence/{item.id}", headers=live.admin()).json()
    assert shown["quarantine_releases"] == [
        {
            "quarantined_entry": quarantined_at["seq"],
            "quarantine_reason": item.quarantine_reason,
            "released_by": "user:south_boss",
            "released_at": released["at"],
            "reason": REASON,
            "custody_entry": released["seq"],
        }
    ], shown

    # Exported as evidence, and the package tells a court it was held for review and released.
    got = _download(live, incident)
    assert got.status_code == 200, got.text
    (tmp_path / "package.zip").write_bytes(got.content)
    checked = verify_package(tmp_path / "package.zip", live.services.key.fingerprint)
    assert checked.ok, [str(p) for p in checked.problems]
    with zipfile.ZipFile(io.BytesIO(got.content)) as z:
        manifest = json.loads(z.read("manifest.json"))
        report = z.read("continuity_report.html").decode()
    assert {i["item_id"]: i["status"] for i in manifest["items"]}[item.id] == "stored"
    assert "Released from quarantine after review" in report and "user:south_boss" in report
    assert "signed by a retired key" in report and REASON in report
    statement = httpx.get(f"{live.url}/api/v1/evidence/{item.id}/continuity-statement", headers=live.admin())
    assert statement.status_code == 200, statement.text
    assert "Quarantined for review at" in statement.text and "Released from quarantine at" in statement.text
    assert "south_boss" in statement.text and REASON in statement.text
    assert statement.headers["x-custody-checked"] == "yes"


def test_a_voice_memo_of_a_disabled_device_is_released_by_an_administrator(live: Any) -> None:
    r, _ = memo_of_a_disabled_device(live, "LW-REVIEW")
    assert (r.status_code, r.json()["status"]) == (201, "quarantined"), r.text
    item_id = r.json()["evidence_item_id"]
    r = _release(live, live.admin(), item_id, "Listened to it: the nurse's own voice, raised the alarm")
    assert r.status_code == 200, r.text
    assert _status(live, item_id) == "stored" and _served(live, item_id) == 200


def test_nobody_else_releases_a_clip_held_for_review(live: Any) -> None:
    item = _held_clip(live)
    before = _trail(live, item.id)
    north_boss = _person(live, "north_boss", "security_manager", "NORTH")
    for who, status in (
        (_person(live, "inv", "investigator"), 403),
        (_person(live, "audit", "auditor"), 403),
        (_person(live, "op", "operator"), 403),
        (north_boss, 404),  # does not see it
        ({}, 401),
        ({"Authorization": "Bearer not-a-token"}, 401),
    ):
        r = _release(live, who, item.id)
        assert r.status_code == status, (who, r.status_code, r.text)
    # A manager of another site who sees it through an incident of theirs still may not release it.
    _incident(live, "NORTH", item.id)
    r = _release(live, north_boss, item.id)
    assert (r.status_code, r.json()["reason"]) == (403, "forbidden"), r.text
    # Nor a device.
    dock = httpx.post(
        f"{live.url}/api/v1/devices/docks", json={"id": "DOCK-X", "site": "SOUTH"}, headers=live.admin()
    )
    r = _release(live, {"Authorization": f"Bearer {dock.json()['token']}"}, item.id)
    assert r.status_code == 401, r.text
    after = _trail(live, item.id)
    assert after[: len(before)] == before
    assert "quarantine_released" not in [e["action"] for e in after]
    assert _status(live, item.id) == "quarantined" and _served(live, item.id) == 409


def test_an_integrity_quarantine_is_never_released_and_a_later_one_wins(live: Any) -> None:
    s = live.services
    fleet = _camera(live, "CAM-I")
    _enrol_camera(live, "CAM-I", Ed25519PrivateKey.generate(), "N-B", "NORTH")
    # A signature that does not verify (a key the camera never had): for integrity.
    stranger = dataclasses.replace(fleet, camera_key=Ed25519PrivateKey.generate(), wearer="N-B")
    forged = _item(live, stranger, _tick(), "f.mp4")
    assert forged.status == "quarantined"
    assert _trail(live, forged.id)[-1]["details"]["kind"] == "integrity"
    r = _release(live, live.admin(), forged.id)
    assert (r.status_code, r.json()["reason"]) == (409, "integrity_quarantine"), r.text
    assert _status(live, forged.id) == "quarantined"

    # Released for review, then found altered by a read: quarantined again, and that one stands.
    held = _held_clip(live, "CAM-J")
    assert _release(live, live.admin(), held.id).status_code == 200
    with s.db.session() as session:
        quarantine(session, s.ledger, held.id, "stored object hashes to something else; found by a read", {})
    for _ in range(2):
        r = _release(live, live.admin(), held.id)
        assert (r.status_code, r.json()["reason"]) == (409, "integrity_quarantine"), r.text
    with s.db.session() as session:  # the row put back by SQL serves nothing
        session.execute(update(EvidenceItem).where(EvidenceItem.id == held.id).values(status="stored"))
    assert _served(live, held.id) == 409
    assert _status(live, held.id) == "quarantined"  # the refused read quarantined it again


def test_a_status_flipped_by_sql_or_a_forged_release_gains_nothing(live: Any) -> None:
    s = live.services
    item = _held_clip(live)
    incident = _incident(live, "SOUTH", item.id)
    with s.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == item.id).values(status="stored"))
    assert any("quarantined in the custody record" in p and item.id in p for p in _problems(live))
    refused = _download(live, incident)
    assert (refused.status_code, refused.json()["reason"]) == (409, "quarantined")

    # A release entry signed by another key (a forger's), chained in its place, the row put back.
    quarantined = next(e for e in _trail(live, item.id) if e["action"] == "quarantined")
    forger = Ledger(ServiceKey(Ed25519PrivateKey.generate()))
    with s.db.session() as session:
        forger.append(
            session,
            CustodyAction.QUARANTINE_RELEASED,
            "user:south_boss",
            item_id=item.id,
            details={"releases": quarantined["seq"], "reason": REASON},
        )
        session.execute(update(EvidenceItem).where(EvidenceItem.id == item.id).values(status="stored"))
    problems = _problems(live)
    assert any(p.startswith("release_unheld") for p in problems), problems
    assert any("quarantined in the custody record" in p and item.id in p for p in problems), problems
    refused = _download(live, incident)
    assert (refused.status_code, refused.json()["reason"]) == (409, "quarantined")

    # A release the service signed that names another entry than the quarantine ends nothing.
    stored_seq = next(e["seq"] for e in _trail(live, item.id) if e["action"] == "stored")
    with s.db.session() as session:
        s.ledger.append(
            session,
            CustodyAction.QUARANTINE_RELEASED,
            "user:south_boss",
            item_id=item.id,
            details={"releases": stored_seq, "reason": REASON},
        )
    assert _served(live, item.id) == 409 and _status(live, item.id) == "quarantined"
    assert sum(p.startswith("release_unheld") for p in _problems(live)) == 2

    # A genuine release edited by SQL (another item's, or its reason) no longer holds either.
    other = _held_clip(live, "CAM-O")
    assert _release(live, live.admin(), other.id).status_code == 200
    with s.db.session() as session:
        row = session.scalars(
            select(CustodyEntry).where(CustodyEntry.item_id == other.id).order_by(CustodyEntry.seq.desc())
        ).first()
        assert row is not None and row.action == "quarantine_released"
        row.details = row.details.replace("Reviewed", "Reviewd")
    assert _served(live, other.id) == 409
    assert _status(live, other.id) == "quarantined"


def test_a_release_twice_or_with_an_empty_huge_or_controlled_reason_is_refused(live: Any) -> None:
    item = _held_clip(live)
    manager = _person(live, "south_boss", "security_manager", "SOUTH")
    for reason, code in (("", 422), ("   short  ", 422), ("x" * 2001, 422), ("x" * 1_000_000, 422)):
        r = _release(live, manager, item.id, reason)
        assert r.status_code == code, (len(reason), r.status_code)
    r = _release(live, manager, item.id, "genuine footage\x1b[2J, seen by me")
    assert (r.status_code, r.json()["reason"]) == (422, "invalid_reason"), r.text
    assert _status(live, item.id) == "quarantined"
    assert _release(live, manager, item.id).status_code == 200
    r = _release(live, manager, item.id)
    assert (r.status_code, r.json()["reason"]) == (409, "not_quarantined"), r.text
    releases = [e for e in _trail(live, item.id) if e["action"] == "quarantine_released"]
    assert len(releases) == 1
    # An item never quarantined has nothing to release.
    stored = _item(live, _camera(live, "CAM-N"), _tick(), "fine.mp4")
    assert stored.status == "stored"
    r = _release(live, live.admin(), stored.id)
    assert (r.status_code, r.json()["reason"]) == (409, "not_quarantined"), r.text


def test_a_quarantine_recorded_before_kinds_is_told_by_its_reason_conservatively() -> None:
    from chain_of_custody.quarantines import INTEGRITY, REVIEW, kind_of

    retired = (
        "signed by a retired key of the device (its key from 2026-11-01T10:00:00.000000Z until "
        "2026-11-02T10:00:00.000000Z), not its current one"
    )
    disabled = "camera CAM-1 was disabled (reported lost, say) when the clip was received"
    while_lost = "recorded while the device was disabled (since 2026-11-01T10:00:00.000000Z)"
    memo = "device LW-1 was disabled when it sent the memo"
    for reason in (retired, disabled, while_lost, memo, f"{retired}; {while_lost}; {disabled}"):
        assert kind_of({"reason": reason}) == REVIEW, reason
    for details in (
        {"reason": "stored bytes hash to ab, the camera reported cd"},
        {"reason": f"{retired}; stored bytes hash to ab, the camera reported cd"},
        {"reason": f"camera signature over the clip manifest does not verify; {disabled}"},
        {"reason": "received 3 bytes hashing to ab; the device signed cd"},
        {"reason": retired, "digest": "sha256"},
        {"reason": f"{retired} and then some"},
        {"reason": retired, "kind": "something else"},
        {"reason": ""},
        {},
    ):
        assert kind_of(details) == INTEGRITY, details
