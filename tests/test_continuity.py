"""A record a solicitor can use, on both databases and the real store: exhibit references given once
and never reused, shown by the evidence API and in export packages; a continuity report (HTML and
PDF) that lists every custody event with its hash, checked against the signed ledger, and flags a
ledger that was altered; a continuity statement draft; and none of it for anyone who may not see
the item, whether asked directly or reached through an incident."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pypdf import PdfReader
from sqlalchemy import update

from chain_of_custody import manifest as mf
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry
from chain_of_custody.package_verify import verify_package
from devices.service import add_staff
from incidents import exhibits
from incidents.export.assemble import assemble, read_layout
from incidents.export.build import build_package
from incidents.export.plan import ExportRequest, gather_items
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_export_package import rewrite
from tests.test_incidents_kit import bearer, store_item, user

T0 = datetime(2026, 3, 4, 23, 0, tzinfo=UTC)
SECRET = "the informant in bay 4"


def _incident(s: Any, title: str, site: str = "NORTH") -> tuple[str, str]:
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=T0, site=site, title=title),
            "user:mgr",
            ledger=s.ledger,
        )
        return incident.id, incident.reference


def _exhibits(client: httpx.Client, item_id: str) -> dict[str, str]:
    r = client.get(f"/api/v1/evidence/{item_id}")
    assert r.status_code == 200, r.text
    return {e["incident"]: e["reference"] for e in r.json()["exhibits"]}


def test_exhibits_reports_and_statements_through_the_api(live: Any) -> None:
    s = live.services
    with s.db.session() as session:
        add_staff(session, s.ledger, "S-JS", "Jane Smith", "nurse", "NORTH", actor="test")
        add_staff(session, s.ledger, "S-AB", "Amir Bashir", "porter", "NORTH", actor="test")
    ids = {
        name: user(s, name, role, site)
        for name, role, site in (
            ("mgr", "security_manager", "NORTH"),
            ("south_mgr", "security_manager", "SOUTH"),
            ("inv", "investigator", None),
            ("other_inv", "investigator", None),
            ("aud", "auditor", None),
        )
    }
    first, second, third = (
        store_item(s, wearer="S-JS", start=T0, stop=T0 + timedelta(minutes=m)) for m in (1, 2, 3)
    )
    porter = store_item(s, wearer="S-AB", start=T0, stop=T0 + timedelta(minutes=4))
    ours_id, ours_ref = _incident(s, "Ward 7")
    theirs_id, theirs_ref = _incident(s, "elsewhere")
    with s.db.session() as session:
        from incidents.models import Incident

        incident = session.get(Incident, ours_id)
        assert incident is not None
        assign_investigator(session, s.ledger, incident, ids["inv"], "user:mgr")
        link_evidence(session, s.ledger, theirs_id, second.id, "user:mgr", SECRET)  # not the investigator's
    mgr = httpx.Client(base_url=live.url, headers=bearer(s, "mgr"), timeout=30)
    inv = httpx.Client(base_url=live.url, headers=bearer(s, "inv"), timeout=30)

    def link(item_id: str, path: str = "links") -> None:
        r = mgr.post(
            f"/api/v1/incidents/{ours_id}/{path}",
            json={"kind": "evidence", "target_id": item_id, "reason": "the assault"},
        )
        assert r.status_code in (200, 201, 204), r.text

    # Given once, per producer within the incident, in the order linked.
    for item in (first, second, porter):
        link(item.id)
    assert _exhibits(mgr, first.id) == {ours_ref: "JS/1"}
    assert _exhibits(mgr, second.id) == {ours_ref: "JS/2", theirs_ref: "JS/1"}  # per incident
    assert _exhibits(mgr, porter.id) == {ours_ref: "AB/1"}
    shown = {
        x["target_id"]: x["exhibit_reference"]
        for x in inv.get(f"/api/v1/incidents/{ours_id}").json()["links"]
    }
    assert shown == {first.id: "JS/1", second.id: "JS/2", porter.id: "AB/1"}
    # The investigator sees the reference in the incident they may see, never the other incident's.
    assert _exhibits(inv, second.id) == {ours_ref: "JS/2"}
    listed = {i["id"]: i["exhibits"] for i in inv.get("/api/v1/evidence", params={"wearer": "S-JS"}).json()}
    assert [e["reference"] for e in listed[first.id]] == ["JS/1"]
    # Never reused: unlinking JS/1 leaves its number taken; relinking gives it back, unchanged.
    link(first.id, "unlink")
    link(third.id)
    assert _exhibits(mgr, third.id) == {ours_ref: "JS/3"}
    link(first.id)
    assert _exhibits(mgr, first.id) == {ours_ref: "JS/1"}
    with s.db.session() as session:
        chain = Ledger.item_entries(session, first.id)
    said = [(e.body.action, json.loads(e.body.details)) for e in chain]
    given = [(a, d["exhibit"], d["incident"], d["producer"]) for a, d in said if "exhibit" in d]
    assert given == [("linked", "JS/1", ours_ref, "Jane Smith")] * 2  # the first link, and the relink

    # The report lists every custody event of the item, each with its entry hash, and its own making.
    r = inv.get(f"/api/v1/evidence/{first.id}/continuity")
    assert r.status_code == 200 and r.headers["x-custody-checked"] == "yes", r.text
    html = r.text
    with s.db.session() as session:
        chain = Ledger.item_entries(session, first.id)
    assert chain[-1].body.action == "viewed" and chain[-1].body.actor == "user:inv"
    assert json.loads(chain[-1].body.details)["purpose"] == "continuity report"
    for e in chain:
        assert e.entry_hash in html, e.body.action
    assert html.count("<tr><td>") >= len(chain) and "JS/1" in html and "Jane Smith" in html
    assert first.sha256 in html and "master copy" in html and "{" not in html.split("</style>")[1]

    # The other incident's link and its reason are withheld from the investigator's report of item 2.
    r = inv.get(f"/api/v1/evidence/{second.id}/continuity")
    assert r.status_code == 200 and theirs_ref not in r.text and SECRET not in r.text and "withheld" in r.text
    r = inv.get(f"/api/v1/incidents/{ours_ref}/continuity")
    assert r.status_code == 200 and theirs_ref not in r.text and SECRET not in r.text
    for ref in ("JS/1", "JS/2", "JS/3", "AB/1"):
        assert ref in r.text

    # PDF: a valid PDF whose text holds the exhibit references.
    r = inv.get(f"/api/v1/incidents/{ours_id}/continuity", params={"format": "pdf"})
    assert (
        r.status_code == 200 and r.headers["content-type"] == "application/pdf" and r.content[:5] == b"%PDF-"
    )
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(r.content)).pages)
    assert "JS/1" in text and "AB/1" in text and ours_ref in text and theirs_ref not in text

    # The statement draft: labelled a draft, filled from the record, one per producer.
    r = inv.get(f"/api/v1/incidents/{ours_id}/continuity-statement")
    assert r.status_code == 200 and r.text.startswith("DRAFT") and r.text.count("WITNESS STATEMENT") == 2
    assert "I produce this master copy as exhibit JS/1" in r.text and first.sha256 in r.text
    assert "Amir Bashir" in r.text and SECRET not in r.text
    r = inv.get(f"/api/v1/evidence/{porter.id}/continuity-statement", params={"format": "html"})
    assert r.status_code == 200 and "DRAFT" in r.text and "AB/1" in r.text

    # Nobody gets a report or a statement of what they may not see: not directly, not via an incident.
    other = httpx.Client(base_url=live.url, headers=bearer(s, "other_inv"), timeout=30)
    south = httpx.Client(base_url=live.url, headers=bearer(s, "south_mgr"), timeout=30)
    for client in (other, south):
        for path in ("continuity", "continuity-statement"):
            assert client.get(f"/api/v1/evidence/{first.id}/{path}").status_code == 404
            assert client.get(f"/api/v1/incidents/{ours_id}/{path}").status_code == 404
    own = other.post(
        "/api/v1/incidents",
        json={"category": "theft", "occurred_at": T0.isoformat(), "site": "NORTH", "title": "mine"},
    )
    assert own.status_code == 201, own.text
    refused = other.post(
        f"/api/v1/incidents/{own.json()['id']}/links",
        json={"kind": "evidence", "target_id": first.id, "reason": "mine now"},
    )
    assert refused.status_code == 404
    window = other.patch(
        f"/api/v1/incidents/{own.json()['id']}",
        json={
            "wearer": "S-JS",
            "window_start": T0.isoformat(),
            "window_end": (T0 + timedelta(hours=1)).isoformat(),
        },
    )
    assert window.status_code == 403
    for path in ("continuity", "continuity-statement"):
        r = other.get(f"/api/v1/incidents/{own.json()['id']}/{path}")
        assert r.status_code == 200 and first.id not in r.text and first.sha256 not in r.text
    with s.db.session() as session:  # and none of those refusals was recorded as a read
        assert not [e for e in Ledger.item_entries(session, first.id) if "other_inv" in e.body.actor]
    aud = httpx.Client(base_url=live.url, headers=bearer(s, "aud"), timeout=30)
    assert aud.get(f"/api/v1/evidence/{first.id}/continuity").status_code == 200  # metadata and custody
    assert aud.get(f"/api/v1/incidents/{ours_id}/continuity").status_code == 403  # never incident records

    # An altered ledger row: the report says so on its first page, and in its header.
    with s.db.session() as session:
        session.execute(
            update(CustodyEntry)
            .where(CustodyEntry.item_id == porter.id, CustodyEntry.action == "linked")
            .values(actor="user:someone_else")
        )
    r = inv.get(f"/api/v1/evidence/{porter.id}/continuity")
    assert r.status_code == 200 and r.headers["x-custody-checked"] == "no"
    assert "DID NOT CHECK" in r.text and "entry_altered" in r.text
    r = inv.get(f"/api/v1/evidence/{porter.id}/continuity", params={"format": "pdf"})
    assert "DID NOT CHECK" in "".join(p.extract_text() for p in PdfReader(io.BytesIO(r.content)).pages)
    assert r.headers["x-custody-checked"] == "no"
    assert inv.get(f"/api/v1/evidence/{first.id}/continuity").headers["x-custody-checked"] == "yes"


def _package(s: Any, incident: tuple[str, str], item_ids: list[str], tmp_path: Path) -> Path:
    with s.db.session() as session:
        items = gather_items(session, item_ids)
    result = build_package(
        s.db,
        s.store,
        s.ledger,
        s.key,
        items,
        ExportRequest(
            export_id=str(uuid.uuid4()),
            incident={"id": incident[0], "reference": incident[1]},
            actor="user:inv",
            retain_until=datetime.now(UTC) + timedelta(days=1),
        ),
    )
    with s.db.session() as session:
        from chain_of_custody.models import EvidenceItem

        row = session.get(EvidenceItem, result.export_id)
        assert row is not None
        session.expunge(row)
    path = tmp_path / f"{result.export_id}.zip"
    path.write_bytes(b"".join(assemble(s.store, read_layout(s.store, row))))
    return path


def test_packages_name_each_exhibit_and_carry_the_report_as_pdf(services: Any, tmp_path: Path) -> None:
    """The configured pattern; working copies get their own reference at export; the manifest, both
    reports and the custody say the same references; the package still verifies, and an altered
    PDF report is caught like any other member."""
    s = services
    with s.db.session() as session:
        add_staff(session, s.ledger, "S-MO", "Mary-Anne O'Neil", "nurse", "NORTH", actor="test")
    incident = _incident(s, "Ward 9")
    clip = store_item(s, wearer="S-MO", start=T0, stop=T0 + timedelta(minutes=1))
    redacted = store_item(s, kind="redacted_clip", derived_from=clip.id)
    exhibits.configure("{incident}/{initials}/{n}")
    try:
        with s.db.session() as session:
            link_evidence(session, s.ledger, incident[0], clip.id, "user:mgr", "the assault")
        path = _package(s, incident, [clip.id], tmp_path)
    finally:
        exhibits.configure(exhibits.DEFAULT_PATTERN)
    with s.db.session() as session:
        refs = exhibits.references(session, incident[0], [clip.id, redacted.id])
    assert refs == {clip.id: f"{incident[1]}/MAO/1", redacted.id: f"{incident[1]}/MAO/2"}
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files[mf.MANIFEST])
    by_id = {i["item_id"]: i for i in manifest["items"]}
    assert (
        by_id[clip.id]["exhibit_reference"] == refs[clip.id] and by_id[clip.id]["copy_type"] == "master copy"
    )
    assert by_id[redacted.id]["exhibit_reference"] == refs[redacted.id]
    assert by_id[redacted.id]["copy_type"] == "working copy"
    assert refs[redacted.id].encode() in files[mf.REPORT]
    pdf = PdfReader(io.BytesIO(files[mf.REPORT_PDF]))
    text = "".join(p.extract_text() for p in pdf.pages)
    assert refs[clip.id] in text and refs[redacted.id] in text and "working copy" in text
    assert mf.REPORT_PDF in {f["path"] for f in manifest["files"]}
    custody = json.loads(files[mf.custody_path(redacted.id)])["entries"]
    assert any(
        e["details"].get("exhibit") == refs[redacted.id]
        for e in custody
        if e["action"] == "exhibit_referenced"
    )
    report = verify_package(path, s.key.fingerprint)
    assert report.ok, [str(p) for p in report.problems]
    altered = files[mf.REPORT_PDF] + b"%% one line more\n"
    forged = rewrite(path, tmp_path / "forged.zip", {**files, mf.REPORT_PDF: altered})
    assert "file_altered" in {p.kind for p in verify_package(forged, s.key.fingerprint).problems}


def test_two_packages_built_at_once_give_each_item_one_reference(services: Any) -> None:
    """Two builds of one incident's package at the same moment (each gives references to the items
    it packs): both succeed, and each item has exactly one reference, numbered without a gap."""
    import threading

    s = services
    with s.db.session() as session:
        add_staff(session, s.ledger, "S-RP", "Rosa Patel", "nurse", "NORTH", actor="test")
    incident = _incident(s, "Ward 2")
    clips = [store_item(s, wearer="S-RP", start=T0, stop=T0 + timedelta(minutes=1)) for _ in range(3)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def build() -> None:
        try:
            start.wait(10)
            with s.db.session() as session:
                exhibits.assign_all(session, s.ledger, incident[0], [c.id for c in clips], "user:mgr")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with s.db.session() as session:
        refs = exhibits.references(session, incident[0], [c.id for c in clips])
    assert sorted(refs.values()) == ["RP/1", "RP/2", "RP/3"], refs


def test_a_stored_entrys_block_list_commitment_is_not_shown_as_a_fact() -> None:
    from incidents.continuity import step_of

    stored = {
        "seq": 7,
        "item_seq": 1,
        "at": "2026-12-05T10:00:00+00:00",
        "action": "stored",
        "actor": "dock:D-1",
        "details": {
            "sha256": "a" * 64,
            "blake3": "b" * 64,
            "size": 10,
            "blocks": {"count": 1, "blake3": "c" * 64},
        },
    }
    step = step_of(stored, {})
    assert not [f for f in step.facts if f.startswith("blocks")], step.facts
    assert step.facts == ("size: 10",)
