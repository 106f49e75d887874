"""Master and working copies are named as such where the API shows an item (both databases)."""

from __future__ import annotations

import httpx

from tests.test_incidents_kit import store_item


def test_original_is_the_master_copy_and_a_derived_item_a_working_copy(live) -> None:  # type: ignore[no-untyped-def]
    original = store_item(live.services, wearer="S-1")
    redacted = store_item(live.services, kind="redacted_clip", derived_from=original.id)
    admin = live.admin()
    one = {
        i: httpx.get(f"{live.url}/api/v1/evidence/{i}", headers=admin).json()["copy_type"]
        for i in (original.id, redacted.id)
    }
    assert one == {original.id: "master copy", redacted.id: "working copy"}
    listed = httpx.get(f"{live.url}/api/v1/evidence", headers=admin).json()
    assert {i["id"]: i["copy_type"] for i in listed} == one


def test_an_original_is_read_only_with_a_stated_reason_a_redacted_copy_without(live) -> None:  # type: ignore[no-untyped-def]
    """The console asks for a reason before it plays an original; the API insists on one too, for
    every client: no reason, no bytes and no read on custody; the reason given is on the read's entry."""
    data = b"original footage bytes " * 500
    original = store_item(live.services, wearer="S-1", data=data)
    redacted = store_item(live.services, kind="redacted_clip", derived_from=original.id)
    admin, api = live.admin(), f"{live.url}/api/v1/evidence"

    def reads(item_id: str) -> list[dict[str, object]]:
        trail = httpx.get(f"{api}/{item_id}/custody", headers=admin).json()
        return [e for e in trail if e["action"] == "viewed"]

    for route in ("content", "waveform"):
        for params in ({}, {"reason": " " * 12}):
            r = httpx.get(f"{api}/{original.id}/{route}", headers=admin, params=params)
            assert r.status_code == 422 and r.json()["reason"] == "reason_required", (route, r.text)
            assert data not in r.content
    r = httpx.get(f"{api}/{original.id}/content", headers={**admin, "Range": "bytes=0-9"})
    assert r.status_code == 422 and r.json()["reason"] == "reason_required"
    assert reads(original.id) == []

    reason = "checking the assault at the front desk"
    r = httpx.get(f"{api}/{original.id}/content", headers=admin, params={"reason": reason})
    assert r.status_code == 200 and r.content == data
    assert [e["details"]["reason"] for e in reads(original.id)] == [reason]  # type: ignore[index]

    r = httpx.get(f"{api}/{redacted.id}/content", headers=admin)
    assert r.status_code == 200 and len(reads(redacted.id)) == 1
