"""A redaction request never hides less than the service's own settings, and leaving a person visible
needs the authority that releasing original footage needs, with a stated reason: the new copy's
custody, its redaction record and any package holding it say whom it leaves visible and who asked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from chain_of_custody import manifest as mf
from chain_of_custody.evidence import Provenance
from chain_of_custody.models import EvidenceItem
from firmware_simulators.scene import render_clip
from incidents.export.models import ExportJob
from redaction.models import RedactionJob
from tests.test_disclosure_api import _incident, _link
from tests.test_export_api import Server, custody_of, server, wait_ready  # noqa: F401 - the live-server fixture
from tests.test_export_package import download, members, put_evidence

http = httpx.Client(timeout=60)

WEAKER = [
    ({"threshold": 0.99}, "threshold"),
    ({"threshold": 1.0}, "threshold"),
    ({"mask_scale": 0.2}, "mask_scale"),
    ({"style": "none"}, "style"),
    ({"detect_width": 64}, "detect_width"),
    ({"stride": 500}, "stride"),
    ({"fine_stride": 0}, "fine_stride"),
    ({"fine_width": 64}, "fine_width"),
    ({"blur_cells": 64}, "blur_cells"),
    ({"pixel_cells": 400}, "pixel_cells"),
    ({"cover": "nothing"}, "cover"),
]


def test_a_redaction_may_not_hide_less_than_the_defaults_nor_hand_out_anyone_left_visible_unauthorised(
    server: Server,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s: Any = server.services
    render_clip(
        tmp_path / "faces.mp4",
        seconds=1,
        width=320,
        height=240,
        fps=25,
        faces=2,
        seed=11,
        min_face=40,
        max_face=70,
    )
    clip = put_evidence(
        s,
        tmp_path / "faces.mp4",
        Provenance(kind="clip", actor="dock:D-1", content_type="video/mp4", filename="ward.mp4"),
    )
    incident = _incident(server)
    _link(server, incident["id"], clip.id)
    redactions = f"{server.url}/api/v1/evidence/{clip.id}/redactions"

    def ask(who: str, spec: dict[str, Any]) -> httpx.Response:
        return http.post(redactions, json=spec, headers=server.as_(who))

    # Settings weaker than the service's own, whoever asks (an admin too): refused, said why, logged.
    for settings, name in WEAKER:
        with caplog.at_level(logging.WARNING, logger="redaction.spec"):
            caplog.clear()
            r = ask("admin", {"settings": settings})
            assert r.status_code == 422, (settings, r.text)
            assert r.json()["reason"] == "weaker_than_default" and name in r.json()["error"], r.text
            assert any(getattr(rec, "reason", None) == "weaker_than_default" for rec in caplog.records)

    r = ask("admin", {"settings": {"threshold": True}})
    assert r.status_code == 422 and r.json()["reason"] == "bad_setting", r.text

    # Leaving a person visible needs a stated reason (422), whoever asks.
    visible = {"exclusions": [{"track": 0, "reason": "the requester, who asked for their own footage"}]}
    for who in ("inv", "boss"):
        r = ask(who, {"exclusions": [{"track": 0, "reason": "him"}]})
        assert r.status_code == 422 and r.json()["reason"] == "exclusion_reason_required", r.text
    with s.db.session() as session:
        assert session.query(RedactionJob).filter_by(source_item_id=clip.id).count() == 0

    # Stronger than the defaults is fine for anyone who may redact; so is an authorised exclusion.
    r = ask("inv", {"settings": {"threshold": 0.1, "mask_scale": 2.0, "style": "solid", "cover": "head"}})
    assert r.status_code == 202, r.text
    assert s.redaction_worker().run_once() == r.json()["id"]
    r = ask("boss", visible)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert s.redaction_worker().run_once() == job_id
    with s.db.session() as session:
        job = session.get(RedactionJob, job_id)
        assert job.status == "done", job.error
        copy_id, record_id = job.result_item_id, job.record_item_id
        record_item = session.get(EvidenceItem, record_id)
        record = json.loads(s.store.get_bytes(record_item.object_key, record_item.version_id))
    left = [
        {
            "track": 0,
            "start": None,
            "end": None,
            "reason": "the requester, who asked for their own footage",
            "by": "user:boss",
        }
    ]
    # The copy's custody (and the original's) and its redaction record name whom it leaves visible.
    for item_id in (copy_id, clip.id):
        [done] = [json.loads(e.details) for e in custody_of(s, item_id) if e.action == "redacted"][-1:]
        assert done["requested_by"] == "user:boss"
        assert [{**e, "by": done["requested_by"]} for e in done["edits"]["exclusions"]] == left
    assert record["left_visible"] == left and record["requested_by"] == "user:boss"

    # Handing that copy out hands out a face: an investigator may not (403), a manager only with a
    # stated reason (422), and nothing is built for either refusal.
    exports = f"{server.url}/api/v1/incidents/{incident['id']}/exports"
    with caplog.at_level(logging.WARNING, logger="incidents.export.api"):
        caplog.clear()
        r = http.post(exports, json={"item_ids": [copy_id]}, headers=server.as_("inv"))
        assert r.status_code == 403 and r.json()["reason"] == "release_not_authorised", r.text
        assert any(getattr(rec, "reason", None) == "release_not_authorised" for rec in caplog.records)
    r = http.post(exports, json={"item_ids": [copy_id]}, headers=server.as_("boss"))
    assert r.status_code == 422 and r.json()["reason"] == "release_reason_required", r.text
    r = http.post(exports, json={}, headers=server.as_("inv"))  # the latest version, which leaves one visible
    assert r.status_code == 403 and r.json()["reason"] == "release_not_authorised", r.text
    with s.db.session() as session:
        assert session.query(ExportJob).filter_by(incident_id=incident["id"]).count() == 0
    # A package holding that copy says which version it is and whom it leaves visible, and by whom.
    r = http.post(
        exports,
        json={"item_ids": [copy_id], "reason": "the requester's own subject access request"},
        headers=server.as_("boss"),
    )
    assert r.status_code == 202, r.text
    wait_ready(server, r.json()["id"], "boss")
    files = members(download(s, r.json()["id"], tmp_path / "package.zip"))
    items = {i["item_id"]: i for i in json.loads(files[mf.MANIFEST])["items"]}
    selection = items[copy_id]["selection"]
    assert selection["redaction_version"] == 2 and selection["requested_by"] == "user:boss"
    assert selection["left_visible"] == left
    # Nor may an investigator of the incident hand that package on by a link.
    links = f"{server.url}/api/v1/exports/{r.json()['id']}/links"
    link = {"recipient": "DC Jones, Thames Valley Police", "expires_in_hours": 24}
    refused = http.post(links, json=link, headers=server.as_("inv"))
    assert refused.status_code == 403, refused.text
    assert http.post(links, json=link, headers=server.as_("boss")).status_code == 201
