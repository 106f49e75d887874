"""An export holds exactly the redaction of each clip its requester chose (or the latest there was
when they asked), never one made afterwards: a subject access request's package is the version
prepared and reviewed for the requester, not whatever redaction of the clip is newest by the time
the package is built. The manifest says which version each copy is and why it is the one."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from chain_of_custody import manifest as mf
from chain_of_custody.evidence import Provenance
from chain_of_custody.models import EvidenceItem
from incidents.export.models import ExportJob
from tests.test_disclosure_api import _incident, _link
from tests.test_export_api import Server, custody_of, server, wait_ready  # noqa: F401 - the live-server fixture
from tests.test_export_package import download, members, put_evidence

http = httpx.Client(timeout=60)


def _copy(s: Any, clip_id: str, content: bytes, name: str) -> EvidenceItem:
    return put_evidence(
        s,
        content,
        Provenance(
            kind="redacted_clip",
            actor="service:redaction",
            content_type="video/mp4",
            filename=name,
            derived_from_id=clip_id,
        ),
    )


class _Held:
    """Holds the server's export builder back (no build is claimed) until released."""

    def __init__(self, s: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.s = s
        self.go = threading.Event()
        builds = s.exports
        real = builds.claim
        monkeypatch.setattr(builds, "claim", lambda now=None: real(now) if self.go.is_set() else None)

    def release(self) -> None:
        self.go.set()
        self.s.exports.wake()


@pytest.mark.parametrize("asked_by", ["clip", "version"])
def test_a_package_holds_the_redaction_chosen_when_asked_never_a_later_one(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    asked_by: str,
) -> None:
    s = server.services
    boss = server.as_("boss")
    clip = put_evidence(
        s,
        b"the original footage, every face",
        Provenance(kind="clip", actor="dock:D-1", content_type="video/mp4"),
    )
    reviewed = _copy(s, clip.id, b"every face but the requester's hidden", "clip-redacted-v1.mp4")
    incident = _incident(server)
    _link(server, incident["id"], clip.id)
    exports = f"{server.url}/api/v1/incidents/{incident['id']}/exports"

    held = _Held(s, monkeypatch)
    # A package asked for by the clip (its latest redaction now), or by the reviewed version's own id.
    r = http.post(exports, json={} if asked_by == "clip" else {"item_ids": [reviewed.id]}, headers=boss)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    # Before it is built, someone makes another redaction of the clip (its tracks turned off, say).
    later = _copy(s, clip.id, b"a later redaction that leaves everyone visible", "clip-redacted-v2.mp4")
    held.release()

    job = wait_ready(server, job_id, "boss")
    assert reviewed.id in job["included"] and later.id not in job["included"], job  # type: ignore[operator]
    assert "not the redaction this package holds" in job["withheld"][later.id]  # type: ignore[index]
    assert reviewed.id in job["withheld"][clip.id]  # type: ignore[index]
    # The package's signed manifest says which version went in and why.
    files = members(download(s, job_id, tmp_path / f"{job_id}.zip"))
    items = {i["item_id"]: i for i in json.loads(files[mf.MANIFEST])["items"]}
    assert items[later.id]["path"] is None
    assert items[reviewed.id]["path"] is not None
    assert "selection" not in items[later.id]
    why = items[reviewed.id]["selection"]["why"]
    if asked_by == "version":
        assert why == "chosen by the exporter when the export was asked for"
    else:
        assert why.startswith("the latest redaction of the clip when the export was asked for")
    # So does the copy's own custody: its entry for this package names why it went in.
    [entry] = [
        json.loads(e.details)
        for e in custody_of(s, reviewed.id)
        if e.action == "exported" and json.loads(e.details)["export_id"] == job_id
    ]
    assert entry["chosen"] == why
    # The job's record pinned that version when it was asked for.
    with s.db.session() as session:
        pinned = json.loads(session.get(ExportJob, job_id).scope)["pinned"]
    assert pinned[clip.id]["item"] == reviewed.id and pinned[clip.id]["why"] == why

    # Asked for now, by the clip, the later version is the latest; two versions of one clip are refused.
    r = http.post(exports, json={"item_ids": [reviewed.id, later.id]}, headers=boss)
    assert r.status_code == 422 and "choose one redacted copy" in r.text, r.text
    # A copy of a clip the incident does not hold is refused like any item it does not hold.
    stray = put_evidence(
        s, b"another clip", Provenance(kind="clip", actor="dock:D-1", content_type="video/mp4")
    )
    stray_copy = _copy(s, stray.id, b"its copy", "stray-redacted-v1.mp4")
    r = http.post(exports, json={"item_ids": [stray_copy.id]}, headers=boss)
    assert r.status_code == 422 and stray_copy.id in r.text, r.text
