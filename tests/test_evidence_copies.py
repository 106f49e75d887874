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
