"""Packages carry only what belongs to them, on both databases: an item linked to two incidents is
exported for one; the other incident (its reference, its id, the free-text reason it was linked
with, the package it went into) appears nowhere in the package, while every custody chain still
verifies and each withheld entry's hash is the ledger's own."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chain_of_custody import manifest as mf
from chain_of_custody.ledger import Ledger
from chain_of_custody.package_verify import verify_package
from incidents.service import IncidentDraft, create_incident, link_evidence
from tests.test_continuity import _package
from tests.test_export_package import resign, rewrite
from tests.test_incidents_kit import store_item

SECRET = "informant in bay 4 says the porter started it"


def _incident(s: Any, title: str) -> tuple[str, str]:
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(
                category="physical_assault", occurred_at=datetime.now(UTC), site="NORTH", title=title
            ),
            "user:m",
            ledger=s.ledger,
        )
        return incident.id, incident.reference


def test_a_package_withholds_other_incidents_and_still_verifies(services: Any, tmp_path: Path) -> None:
    s = services
    clip = store_item(s)
    ours_id, ours_ref = _incident(s, "ours")
    theirs_id, theirs_ref = _incident(s, "theirs")
    with s.db.session() as session:
        link_evidence(session, s.ledger, theirs_id, clip.id, "user:other", SECRET)
    earlier = _package(
        s, (theirs_id, theirs_ref), [clip.id], tmp_path
    )  # their package, on the clip's custody
    with s.db.session() as session:
        link_evidence(session, s.ledger, ours_id, clip.id, "user:m", "shows the assault")
        ledger_hashes = {e.body.item_seq: e.entry_hash for e in Ledger.item_entries(session, clip.id)}
    path = _package(s, (ours_id, ours_ref), [clip.id], tmp_path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        text = {n: z.read(n) for n in z.namelist()}
    for needle in (theirs_ref, theirs_id, SECRET, earlier.stem):
        assert needle.encode() not in raw, needle
        for name, data in text.items():
            assert needle.encode() not in data, (needle, name)
    chain = json.loads(text[mf.custody_path(clip.id)])["entries"]
    withheld = {e["item_seq"]: e for e in chain if "withheld" in e}
    assert withheld, chain
    for seq, e in withheld.items():
        assert e["entry_hash"] == ledger_hashes[seq] and "details" not in e and "actor" not in e
    assert any((e.get("details") or {}).get("incident") == ours_ref for e in chain)  # our link stays
    manifest = json.loads(text[mf.MANIFEST])
    record = next(i for i in manifest["items"] if i["item_id"] == clip.id)
    assert record["custody"]["withheld"] == {str(k): e["entry_hash"] for k, e in sorted(withheld.items())}
    report = verify_package(path, s.key.fingerprint)
    assert report.ok, [str(p) for p in report.problems]


def test_withholding_an_entry_the_manifest_does_not_list_is_named(services: Any, tmp_path: Path) -> None:
    """Even re-signed with the genuine key, an entry passed off as withheld (its content dropped) that
    the signed manifest does not list is caught; so is a withheld entry whose hash was changed."""
    s = services
    clip = store_item(s)
    ours_id, ours_ref = _incident(s, "ours")
    theirs_id, _ = _incident(s, "theirs")
    with s.db.session() as session:
        link_evidence(session, s.ledger, theirs_id, clip.id, "user:other", SECRET)
        link_evidence(session, s.ledger, ours_id, clip.id, "user:m", "shows the assault")
    path = _package(s, (ours_id, ours_ref), [clip.id], tmp_path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    cpath = mf.custody_path(clip.id)
    doc = json.loads(files[cpath])
    received = next(i for i, e in enumerate(doc["entries"]) if e["action"] == "received")
    doc["entries"][received] = {
        **{k: doc["entries"][received][k] for k in ("seq", "id", "at", "action", "item_id", "item_seq")},
        **{k: doc["entries"][received][k] for k in ("prev_hash", "item_prev_hash", "key_id", "entry_hash")},
        "withheld": "not for you",
    }
    forged = resign({**files, cpath: mf.encode(doc)}, s.key.private)
    report = verify_package(rewrite(path, tmp_path / "forged.zip", forged), s.key.fingerprint)
    assert "custody_withheld_disagrees" in {p.kind for p in report.problems}, [
        str(p) for p in report.problems
    ]
