"""An incident's timeline tells everything that happened to it and its evidence: the link with its
reason, an alarm linked, a redaction version made, the export built, the download link issued to
its recipient, the download through it, the link revoked, a legal hold placed and lifted. Each is
a line in the history API and in words on the console's timeline page, and nothing of it reaches
someone who may not see the incident: a security manager of another site and an investigator not
assigned to it get neither page, and another site's incident that holds the same clip shows none of
this incident's package, links, recipients or holds. On PostgreSQL and the real store, with the
package built and downloaded through the service."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from accounts.models import User
from accounts.service import create_user, issue_token
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from tests.test_alarms_kit import raise_test_alarm
from tests.test_cross_site_reads import cookie
from tests.test_disclosure_api import _incident, _link, database_url, http, server, wait_ready
from tests.test_export_api import PASSWORD, Server
from tests.test_export_package import make_incident_evidence

__all__ = ["database_url", "server"]  # the fixtures, used by name

RECIPIENT = "DC Jones, Met Police"
HOLD_REASON = "solicitor's letter of claim"


def _manager_of(server: Server, name: str, site: str) -> None:
    """A security manager of ``site`` with a token, as the fixture's users have."""
    s: Any = server.services
    with s.db.session() as session:
        create_user(session, name, PASSWORD, "security_manager", site=site, key=s.key)
    with s.db.session() as session:
        row = session.scalar(select(User).where(User.username == name))
        server.tokens[name], _ = issue_token(
            session, row, timedelta(hours=2), s.key.derived_secret(CREDENTIAL_SEALS)
        )


def _history(server: Server, incident_id: str, who: str) -> list[dict[str, Any]]:
    """The incident's whole history as ``who`` reads it; its timeline is the same, line for line
    (one reading of both: the package's lines, and nothing the reader may not see, in each)."""
    told = []
    for route in ("history", "timeline"):
        r = http.get(
            f"{server.url}/api/v1/incidents/{incident_id}/{route}",
            params={"limit": 5000},
            headers=server.as_(who),
        )
        assert r.status_code == 200, r.text
        assert "link" not in r.headers  # the whole history in one page
        told.append(r.json())
    history, timeline = told
    assert timeline == history, [x for x in history if x not in timeline][:5]
    return history  # type: ignore[no-any-return]


def _page_rows(text: str, item_id: str) -> dict[str, list[list[str]]]:
    """The timeline page's rows about ``item_id``, by kind: each row's cells (when, what, item, who,
    detail) as the page writes them."""
    rows: dict[str, list[list[str]]] = {}
    for kind, body in re.findall(
        rf'<tr data-kind="([^"]+)" data-item="{re.escape(item_id)}">(.*?)</tr>', text, flags=re.S
    ):
        cells = [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", body, flags=re.S)]
        rows.setdefault(kind, []).append(cells)
    return rows


def _one(lines: list[dict[str, Any]], kind: str, **where: Any) -> dict[str, Any]:
    found = [x for x in lines if x["kind"] == kind and all(x.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (kind, where, [(x["kind"], x.get("item_id")) for x in lines])
    return found[0]


def test_every_kind_of_custody_event_is_a_line_of_the_timeline_and_only_for_its_readers(
    server: Server, tmp_path: Path
) -> None:
    s: Any = server.services
    admin, inv = server.as_("admin"), server.as_("inv")
    # A real clip with a redaction version (its "redacted" entry as the worker writes it), linked to
    # an incident at QEH whose investigator is assigned; an SOS alarm of the site linked too.
    ev = make_incident_evidence(s, tmp_path)
    incident = _incident(server)
    incident_id, reference = incident["id"], incident["reference"]
    _link(server, incident_id, ev.clip.id)
    alarm_id = raise_test_alarm(s, device_id="LW-TIMELINE", site="QEH")
    r = http.post(
        f"{server.url}/api/v1/incidents/{incident_id}/links",
        json={"kind": "alarm", "target_id": alarm_id, "reason": "the SOS from the ward"},
        headers=admin,
    )
    assert r.status_code in (200, 201), r.text

    # The investigator's package of the clip (its redacted copy goes in), a link to an officer,
    # one download through it, the link revoked.
    r = http.post(
        f"{server.url}/api/v1/incidents/{incident_id}/exports", json={"item_ids": [ev.clip.id]}, headers=inv
    )
    assert r.status_code == 202, r.text
    job = wait_ready(server, r.json()["id"])
    links = f"{server.url}/api/v1/exports/{job['id']}/links"
    r = http.post(links, json={"recipient": RECIPIENT, "purpose": "charging decision"}, headers=inv)
    assert r.status_code == 201, r.text
    link = r.json()
    assert http.get(link["url"]).status_code == 200
    assert http.delete(f"{links}/{link['id']}", headers=inv).status_code == 204

    # A legal hold placed on the incident by its site's manager, and lifted.
    for hold in (True, False):
        r = http.put(
            f"{server.url}/api/v1/incidents/{incident_id}/legal-hold",
            json={"hold": hold, "reason": HOLD_REASON},
            headers=server.as_("boss"),
        )
        assert r.status_code == 200, r.text

    # The assigned investigator's history holds a line of each kind, with who and when.
    lines = _history(server, incident_id, "inv")
    assert [x["at"] for x in lines] == sorted(x["at"] for x in lines)
    linked = {x["details"]["target"]: x for x in lines if x["kind"] == "linked"}
    assert linked[ev.clip.id]["details"]["reason"] == "seen on the footage"
    assert linked[alarm_id]["actor"] == "user:admin"
    assert _one(lines, "alarm")["details"]["alarm_id"] == alarm_id
    redacted = _one(lines, "custody:redacted", item_id=ev.clip.id)
    assert redacted["details"]["redacted_item"] == ev.redacted.id
    put_in = [x for x in lines if x["kind"] == "custody:exported" and x["item_id"] != job["id"]]
    assert {x["details"]["export_id"] for x in put_in} == {job["id"]} and put_in
    assert {x["actor"] for x in put_in} == {"user:inv"}
    built = _one(lines, "custody:exported", item_id=job["id"])
    assert built["actor"] == "user:inv" and built["item_kind"] == "export" and built["root_id"] == job["id"]
    assert built["details"]["package_sha256"] == job["package_sha256"]
    assert set(built["details"]["included"]) == set(job["included"])
    issued = _one(lines, "custody:link_issued", item_id=job["id"])
    assert issued["actor"] == "user:inv" and issued["details"]["recipient"] == RECIPIENT
    assert issued["details"]["purpose"] == "charging decision"
    downloaded = _one(lines, "custody:viewed", item_id=job["id"])
    assert downloaded["actor"] == f"link:{link['id']}" and downloaded["recipient"] == RECIPIENT
    revoked = _one(lines, "custody:link_revoked", item_id=job["id"])
    assert revoked["actor"] == "user:inv" and revoked["details"]["recipient"] == RECIPIENT
    assert issued["at"] <= downloaded["at"] <= revoked["at"]
    # The request is a line of its own, before the build: who asked for the package, and when.
    requested = _one(lines, "custody:export_requested", item_id=job["id"])
    assert requested["actor"] == "user:inv" and requested["item_kind"] == "export"
    assert requested["root_id"] == job["id"] and requested["entry_hash"]
    assert requested["details"]["export"] == job["id"] and requested["details"]["incident_id"] == incident_id
    assert requested["at"] <= built["at"] <= issued["at"]
    holds = [x for x in lines if x["kind"] == "custody:legal_hold" and x["item_id"] == ev.clip.id]
    assert [x["details"]["on"] for x in holds] == [True, False]
    assert {x["details"]["reason"] for x in holds} == {HOLD_REASON}
    assert {x["actor"] for x in holds} == {"user:boss"}
    # The package's own arrival is its "built" line; no package line is a bare "stored".
    assert not [x for x in lines if x.get("item_id") == job["id"] and x["kind"] == "custody:stored"]

    # The console's timeline page says each of them in words, with the recipient as who downloaded.
    browser = cookie(s, "inv")
    page = http.get(f"{server.url}/incidents/{reference}/timeline", headers=browser)
    assert page.status_code == 200, page.text
    for words in (
        "export requested",
        f"package {job['id'][:8]}; no original footage",
        "linked",
        "seen on the footage",
        "alarm linked",
        "the SOS from the ward",
        "redaction version made",
        "put in an export package",
        "export package built",
        "download link issued",
        f"to {RECIPIENT}; for charging decision",
        "export package downloaded",
        f"{RECIPIENT} (link {link['id'][:8]})",
        "download link revoked",
        "legal hold placed",
        "legal hold lifted",
        HOLD_REASON.replace("'", "&#39;"),
    ):
        assert words in page.text, words
    for kind in ("custody:link_issued", "custody:link_revoked", "custody:viewed", "custody:legal_hold"):
        assert f'data-kind="{kind}"' in page.text, kind
    assert f'data-item="{job["id"]}"' in page.text
    # The package's five lines on the page, each once, with when and who (the recipient for the download).
    rows = _page_rows(page.text, job["id"])
    for kind, what, by in (
        ("custody:export_requested", "export requested", "user:inv"),
        ("custody:exported", "export package built", "user:inv"),
        ("custody:link_issued", "download link issued", "user:inv"),
        ("custody:viewed", "export package downloaded", f"{RECIPIENT} (link {link['id'][:8]})"),
        ("custody:link_revoked", "download link revoked", "user:inv"),
    ):
        assert len(rows.get(kind, [])) == 1, (kind, sorted(rows))
        at, said, _item, who, _detail = rows[kind][0]
        assert re.fullmatch(r'<time datetime="[^"]+">\d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} UTC</time>', at), at
        assert (said, html.unescape(who)) == (what, by), kind

    # Nobody who may not see the incident sees any of it: a security manager of another site and an
    # investigator not assigned to it get neither the history nor the page.
    _manager_of(server, "rvi_boss", "RVI")
    for who in ("rvi_boss", "other_inv"):
        r = http.get(f"{server.url}/api/v1/incidents/{incident_id}/history", headers=server.as_(who))
        assert r.status_code == 404, (who, r.text)
        r = http.get(f"{server.url}/incidents/{reference}/timeline", headers=cookie(s, who))
        assert r.status_code == 404, who
        assert RECIPIENT not in r.text and HOLD_REASON.replace("'", "&#39;") not in r.text

    # Another site's incident holding the same clip: its manager reads the clip's custody there, but
    # nothing of this incident's package, its links and recipient, its hold or the incident itself.
    r = http.post(
        f"{server.url}/api/v1/incidents",
        json={
            "category": "verbal_abuse",
            "occurred_at": "2026-11-22T10:00:00Z",
            "site": "RVI",
            "title": "Gate",
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    other = r.json()
    _link(server, other["id"], ev.clip.id)
    theirs = _history(server, other["id"], "rvi_boss")
    assert any(x.get("item_id") == ev.clip.id for x in theirs)  # the clip is followed there
    text = json.dumps(theirs)
    for secret in (
        job["id"],
        link["id"],
        RECIPIENT,
        HOLD_REASON,
        incident_id,
        reference,
        "charging decision",
    ):
        assert secret not in text, secret
    assert not [x for x in theirs if x["kind"] in ("custody:link_issued", "custody:link_revoked")]
    assert not [x for x in theirs if x.get("item_id") == job["id"] or x.get("recipient")]
    about_ours = [x for x in theirs if x["kind"] in ("custody:legal_hold", "custody:exported")]
    assert about_ours and all(
        x["withheld"] and not x["details"] for x in about_ours
    )  # place kept, no content
    page = http.get(f"{server.url}/incidents/{other['reference']}/timeline", headers=cookie(s, "rvi_boss"))
    assert page.status_code == 200
    for secret in (job["id"][:8], RECIPIENT, HOLD_REASON.replace("'", "&#39;"), reference):
        assert secret not in page.text, secret


def test_a_package_download_line_names_no_item_the_reader_no_longer_sees(
    server: Server, tmp_path: Path
) -> None:
    """A download's entry lists the items its bytes held (``items_read``); once a clip is unlinked
    from the incident, its reader no longer sees it, and the timeline's download line names it no more
    than the package's built line does (as ``GET /exports/{id}`` lists only what the reader sees)."""
    s: Any = server.services
    inv = server.as_("inv")
    ev = make_incident_evidence(s, tmp_path)
    incident = _incident(server)
    incident_id = incident["id"]
    _link(server, incident_id, ev.clip.id)
    r = http.post(
        f"{server.url}/api/v1/incidents/{incident_id}/exports", json={"item_ids": [ev.clip.id]}, headers=inv
    )
    assert r.status_code == 202, r.text
    job = wait_ready(server, r.json()["id"])
    r = http.post(
        f"{server.url}/api/v1/exports/{job['id']}/links", json={"recipient": RECIPIENT}, headers=inv
    )
    assert r.status_code == 201, r.text
    assert http.get(r.json()["url"]).status_code == 200
    before = _one(_history(server, incident_id, "inv"), "custody:viewed", item_id=job["id"])
    read = set(before["details"]["items_read"])
    assert read and read <= {ev.clip.id, ev.redacted.id}, before["details"]

    r = http.post(
        f"{server.url}/api/v1/incidents/{incident_id}/unlink",
        json={"kind": "evidence", "target_id": ev.clip.id, "reason": "another incident's footage"},
        headers=server.as_("admin"),
    )
    assert r.status_code == 204, r.text
    lines = _history(server, incident_id, "inv")
    after = _one(lines, "custody:viewed", item_id=job["id"])
    built = _one(lines, "custody:exported", item_id=job["id"])
    assert not set(built["details"].get("included") or []) & read, built["details"]
    assert not set(after["details"].get("items_read") or []) & read, after["details"]
