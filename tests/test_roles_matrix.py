"""Every route of the real application against every role: an explicit policy table, checked exhaustively.

HOW TO ADD A ROUTE (read this when this test fails with "routes without a policy"):

1. Add one entry to ``POLICY`` below, keyed by ``(METHOD, path)`` exactly as FastAPI reports it
   (for example ``("GET", "/api/v1/alarms/{alarm_id}")``). Say which personas get a 2xx (``ok``),
   which get 404 because the object is outside their scope (``hidden``), and nothing else: every other
   signed-in persona is expected to get 403. A route for docks instead of people is ``Rule(dock=True)``;
   a route authenticated by a device's signature is ``Rule(device=True)`` (user and dock tokens get 401).
2. If the route needs a body, query parameters, a particular path parameter or some state to exist
   first, add a ``Sample`` to ``SAMPLES`` (path parameters default to the fixture's objects in
   ``PATH_DEFAULTS``; add yours there if the name is new).
3. A route that is open without a token must be listed in ``OPEN`` with the reason; nothing else is.

Personas: admin; ``manager`` (security manager of the incident's site) and ``manager_other_site``;
``investigator`` (assigned to the incident) and ``investigator_unassigned``; operator; auditor;
``dock`` (a dock token, which is not a user token). Every route is also called without a token and
must answer 401, except the ``OPEN`` ones.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from accounts.models import User
from accounts.service import Principal, issue_token
from chain_of_custody.row_seals import CREDENTIAL_SEALS
from devices.service import enrol_dock, enrol_keyed_device
from incidents.service import (
    IncidentDraft,
    assign_investigator,
    create_incident,
    link_alarm,
    link_evidence,
)
from incidents.subject_access.service import RequestDraft, receive_request
from tests.clipkit import Fleet, clip_metadata, sha256
from tests.conftest import wait_for
from tests.test_alarms_kit import raise_test_alarm
from tests.test_incidents_kit import staff, store_item, user

USERS = (
    "admin",
    "manager",
    "manager_other_site",
    "investigator",
    "investigator_unassigned",
    "operator",
    "auditor",
)
PERSONAS = (*USERS, "dock")

EVERYONE = frozenset(USERS)
IN_SCOPE = frozenset({"admin", "manager", "investigator"})
OUT_OF_SCOPE = frozenset({"manager_other_site", "investigator_unassigned"})
MANAGERS_ANY_SITE = frozenset({"admin", "manager", "manager_other_site"})
SEE_ALL_EVIDENCE = frozenset({"admin", "auditor"})
CONTROL_ROOM = MANAGERS_ANY_SITE | {"operator"}
OTHER_SITE = frozenset({"manager_other_site"})
# One alarm (raised at NORTH): a security manager handles their own site's alarms only, as the API's
# site rule says (``accounts.access.site_scope``); another site's is missing.
ALARM_HANDLERS = frozenset({"admin", "manager", "operator"})

# Open without a token, and why.
OPEN = {
    ("POST", "/api/v1/auth/token"): "the login itself",
    ("GET", "/healthz"): "liveness and readiness probe: says only whether seals await the upgrade",
    ("GET", "/openapi.json"): "API documentation (browsed at the console's /docs and /redoc)",
    (
        "GET",
        "/api/v1/exports/download/{token}",
    ): "the signed, expiring link token in the URL is the credential "
    "(a police or CPS recipient has no account); every download is a custody entry",
    (
        "GET",
        "/api/v1/exports/download/{token}/about",
    ): "the link's page: the same token is the credential; it reads no evidence, only the package's "
    "SHA-256 and the signing key's fingerprint for the recipient to check against",
    ("GET", "/.well-known/evidence-signing-key"): "the public signing key: no secret, and a recipient "
    "without an account must get the fingerprint from the trust rather than from the package",
}


@dataclass(frozen=True)
class Rule:
    ok: frozenset[str] = frozenset()  # 2xx
    hidden: frozenset[str] = frozenset()  # 404: the object is outside their scope
    dock: bool = False  # dock token only; every user token is refused with 401
    device: bool = False  # signed by a device key (no persona holds one): every persona gets 401

    def expect(self, persona: str) -> str:
        if self.device:
            return "401"
        if self.dock:
            return "2xx" if persona == "dock" else "401"
        if persona == "dock":
            return "401"
        if persona in self.ok:
            return "2xx"
        if persona in self.hidden:
            return "404"
        return "403"


POLICY: dict[tuple[str, str], Rule] = {
    # Dock uploads (tus): docks only.
    ("OPTIONS", "/api/v1/dock/uploads"): Rule(dock=True),
    ("POST", "/api/v1/dock/uploads"): Rule(dock=True),
    ("HEAD", "/api/v1/dock/uploads/{upload_id}"): Rule(dock=True),
    ("PATCH", "/api/v1/dock/uploads/{upload_id}"): Rule(dock=True),
    ("DELETE", "/api/v1/dock/uploads/{upload_id}"): Rule(dock=True),
    # Evidence: scope decides metadata; media never for auditors or operators.
    ("GET", "/api/v1/evidence"): Rule(ok=EVERYONE - {"operator"}),
    ("GET", "/api/v1/evidence/{item_id}"): Rule(ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/evidence/{item_id}/custody"): Rule(ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/evidence/{item_id}/retention"): Rule(ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/evidence/{item_id}/content"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/evidence/{item_id}/waveform"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("POST", "/api/v1/evidence/{item_id}/read-grants"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/evidence/{item_id}/continuity"): Rule(ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/evidence/{item_id}/continuity-statement"): Rule(
        ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE
    ),
    ("PUT", "/api/v1/evidence/{item_id}/legal-hold"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=frozenset({"manager_other_site"})
    ),
    ("DELETE", "/api/v1/evidence/{item_id}"): Rule(ok=frozenset({"admin"})),
    ("POST", "/api/v1/evidence/{item_id}/quarantine-release"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=frozenset({"manager_other_site"})
    ),
    ("GET", "/api/v1/custody/public-key"): Rule(ok=EVERYONE),
    ("GET", "/api/v1/custody/tree-head"): Rule(ok=frozenset({"admin", "auditor"})),
    ("GET", "/api/v1/custody/consistency"): Rule(ok=frozenset({"admin", "auditor"})),
    ("POST", "/api/v1/custody/verify"): Rule(ok=frozenset({"admin", "auditor"})),
    ("GET", "/api/v1/custody/verify/{job_id}"): Rule(ok=frozenset({"admin", "auditor"})),
    # People and devices.
    ("POST", "/api/v1/staff"): Rule(ok=MANAGERS_ANY_SITE),
    ("POST", "/api/v1/devices/docks"): Rule(ok=MANAGERS_ANY_SITE),
    ("POST", "/api/v1/devices/cameras"): Rule(ok=MANAGERS_ANY_SITE),
    ("GET", "/api/v1/devices"): Rule(ok=MANAGERS_ANY_SITE | {"auditor", "operator"}),
    # A security manager changes their own site's devices only (``accounts.access``): another
    # site's is missing.
    ("PATCH", "/api/v1/devices/{device_id}"): Rule(ok=frozenset({"admin", "manager"}), hidden=OTHER_SITE),
    ("GET", "/api/v1/me"): Rule(ok=EVERYONE),
    ("GET", "/api/v1/users"): Rule(ok=frozenset({"admin"})),
    ("POST", "/api/v1/users"): Rule(ok=frozenset({"admin"})),
    ("GET", "/api/v1/users/{user_id}"): Rule(ok=frozenset({"admin"})),
    ("PATCH", "/api/v1/users/{user_id}"): Rule(ok=frozenset({"admin"})),
    # Incidents: role first (403), then scope (404).
    ("POST", "/api/v1/incidents"): Rule(
        ok=frozenset({"admin", "manager", "investigator", "investigator_unassigned"})
    ),
    ("GET", "/api/v1/incidents"): Rule(ok=IN_SCOPE | OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("PATCH", "/api/v1/incidents/{incident_id}"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}/timeline"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}/continuity"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}/continuity-statement"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}/history"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    # The sample links an alarm: only roles that read alarms may (an investigator gets 403).
    ("POST", "/api/v1/incidents/{incident_id}/links"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=OUT_OF_SCOPE
    ),
    ("POST", "/api/v1/incidents/{incident_id}/unlink"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("PUT", "/api/v1/incidents/{incident_id}/investigators/{user_id}"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=frozenset({"manager_other_site"})
    ),
    ("DELETE", "/api/v1/incidents/{incident_id}/investigators/{user_id}"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=frozenset({"manager_other_site"})
    ),
    ("PUT", "/api/v1/incidents/{incident_id}/legal-hold"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=frozenset({"manager_other_site"})
    ),
    ("GET", "/api/v1/statistics"): Rule(ok=MANAGERS_ANY_SITE | {"auditor"}),
    # Redaction: media roles request versions; metadata roles follow their progress; both within scope.
    ("GET", "/api/v1/evidence/{item_id}/redactions"): Rule(ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE),
    ("POST", "/api/v1/evidence/{item_id}/redactions"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/redaction-jobs/{job_id}"): Rule(ok=IN_SCOPE | {"auditor"}, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/redaction-jobs"): Rule(ok=MANAGERS_ANY_SITE),
    # Export packages: media roles, within the incident's scope.
    ("POST", "/api/v1/incidents/{incident_id}/exports"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}/exports"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/exports/{export_id}"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("POST", "/api/v1/exports/{export_id}/links"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("DELETE", "/api/v1/exports/{export_id}/links/{link_id}"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/incidents/{incident_id}/disclosures"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    # Subject access requests: who sees the request's incident; anyone who writes incidents records one
    # (a security manager for their own site: the sample's site is NORTH).
    ("POST", "/api/v1/subject-access-requests"): Rule(ok=IN_SCOPE | {"investigator_unassigned"}),
    ("GET", "/api/v1/subject-access-requests"): Rule(ok=IN_SCOPE | OUT_OF_SCOPE),
    ("GET", "/api/v1/subject-access-requests/{request_id}"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("PATCH", "/api/v1/subject-access-requests/{request_id}"): Rule(ok=IN_SCOPE, hidden=OUT_OF_SCOPE),
    ("GET", "/api/v1/subject-access-requests/{request_id}/candidates"): Rule(
        ok=IN_SCOPE, hidden=OUT_OF_SCOPE
    ),
    # Control room: operators and managers act on alarms; auditors may look.
    ("GET", "/api/v1/alarms"): Rule(ok=CONTROL_ROOM | {"auditor"}),
    ("GET", "/api/v1/alarms/stream"): Rule(ok=CONTROL_ROOM | {"auditor"}),
    ("GET", "/api/v1/alarms/{alarm_id}"): Rule(ok=ALARM_HANDLERS | {"auditor"}, hidden=OTHER_SITE),
    ("GET", "/api/v1/lone-workers"): Rule(ok=CONTROL_ROOM | {"auditor"}),
    ("GET", "/api/v1/alarms/performance"): Rule(ok=CONTROL_ROOM | {"auditor"}),
    ("GET", "/api/v1/alarms/{alarm_id}/record"): Rule(ok=ALARM_HANDLERS | {"auditor"}, hidden=OTHER_SITE),
    # The matrix's alarm is an SOS, which has no voice memo: the roles that may play one get 404.
    ("GET", "/api/v1/alarms/{alarm_id}/voice-memo"): Rule(hidden=CONTROL_ROOM),
    ("GET", "/api/v1/staff"): Rule(ok=MANAGERS_ANY_SITE | {"auditor", "operator"}),
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): Rule(ok=ALARM_HANDLERS, hidden=OTHER_SITE),
    ("POST", "/api/v1/alarms/{alarm_id}/escalate"): Rule(ok=ALARM_HANDLERS, hidden=OTHER_SITE),
    ("POST", "/api/v1/alarms/{alarm_id}/resolve"): Rule(ok=ALARM_HANDLERS, hidden=OTHER_SITE),
    ("POST", "/api/v1/devices/lone-workers"): Rule(ok=MANAGERS_ANY_SITE),
    ("POST", "/api/v1/devices/lone-workers/{device_id}/broker-password"): Rule(
        ok=frozenset({"admin", "manager"}), hidden=OTHER_SITE
    ),
    ("PUT", "/api/v1/lone-worker/devices/{device_id}/alarms/{event_id}/voice-memo"): Rule(device=True),
    # Operations.
    ("GET", "/metrics"): Rule(ok=frozenset({"admin", "auditor"})),
}


@dataclass
class Fixture:
    """The objects the matrix acts on, all at site NORTH except where said."""

    client: TestClient
    services: Any
    tokens: dict[str, str]
    ids: dict[str, Any]
    fleet: Fleet
    clip: bytes = field(default=b"")


@dataclass(frozen=True)
class Sample:
    json: Callable[[Fixture, str], Any] | None = None
    params: dict[str, Any] | None = None
    headers: Callable[[Fixture], dict[str, str]] | None = None
    content: bytes | None = None
    path: dict[str, str] = field(default_factory=dict)  # path parameter -> key in Fixture.ids
    prepare: Callable[[Fixture], dict[str, str]] | None = None  # returns path parameter overrides


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _pub() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return base64.b64encode(
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def _tus(fx: Fixture) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0"}


def _new_upload(fx: Fixture) -> str:
    r = fx.client.post(
        "/api/v1/dock/uploads",
        headers={
            "Authorization": f"Bearer {fx.tokens['dock']}",
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(fx.clip)),
            "Upload-Metadata": clip_metadata(
                fx.fleet, sha256(fx.clip), len(fx.clip), filename=f"{uuid.uuid4().hex}.mp4"
            ),
        },
    )
    assert r.status_code == 201, r.text
    return r.headers["location"].rsplit("/", 1)[-1]


def _reassign(fx: Fixture) -> dict[str, str]:
    from incidents.models import Incident

    with fx.services.db.session() as session:
        assign_investigator(
            session,
            fx.services.ledger,
            session.get(Incident, fx.ids["incident"]),
            fx.ids["investigator2"],
            "test",
        )
    return {}


def _relink_alarm(fx: Fixture) -> dict[str, str]:
    with fx.services.db.session() as session:
        link_alarm(session, fx.services.ledger, fx.ids["incident"], "ALARM-1", "test", "raised during it")
    return {}


def _held_for_review(fx: Fixture) -> dict[str, str]:
    """A NORTH clip of the incident, held for review (a retired key's signature): one for each call,
    as a release is made once."""
    why = (
        "signed by a retired key of the device (its key from 2026-11-01T09:00:00Z until "
        "2026-12-01T09:00:00Z), not its current one"
    )
    item = store_item(fx.services, wearer="S-N", site="NORTH", quarantine_reason=why, for_review=True)
    with fx.services.db.session() as session:
        link_evidence(session, fx.services.ledger, fx.ids["incident"], item.id, "test", "held for review")
    return {"item_id": item.id}


def _deletable(fx: Fixture) -> dict[str, str]:
    lock = fx.ids["deletable_lock"]
    wait_for(
        lambda: datetime.now(UTC) > lock + timedelta(seconds=1), 30, 0.1, "the deletable item's lock to pass"
    )
    return {}


SAMPLES: dict[tuple[str, str], Sample] = {
    ("OPTIONS", "/api/v1/dock/uploads"): Sample(headers=_tus),
    ("POST", "/api/v1/dock/uploads"): Sample(
        headers=lambda fx: {
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(fx.clip)),
            "Upload-Metadata": clip_metadata(fx.fleet, sha256(fx.clip), len(fx.clip), filename="matrix.mp4"),
        }
    ),
    ("HEAD", "/api/v1/dock/uploads/{upload_id}"): Sample(headers=_tus),
    ("PATCH", "/api/v1/dock/uploads/{upload_id}"): Sample(
        headers=lambda fx: {
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        prepare=lambda fx: {"upload_id": _new_upload(fx)},
        content=b"\x00" * 10,
    ),
    ("DELETE", "/api/v1/dock/uploads/{upload_id}"): Sample(
        headers=_tus, prepare=lambda fx: {"upload_id": _new_upload(fx)}
    ),
    # An original is read only with a stated reason (recorded on the read's custody entry).
    ("GET", "/api/v1/evidence/{item_id}/content"): Sample(params={"reason": "checking the footage"}),
    ("GET", "/api/v1/evidence/{item_id}/waveform"): Sample(params={"reason": "checking the footage"}),
    ("POST", "/api/v1/evidence/{item_id}/read-grants"): Sample(
        json=lambda f, u: {"reason": "checking the footage"}
    ),
    ("PUT", "/api/v1/evidence/{item_id}/legal-hold"): Sample(
        json=lambda fx, p: {"hold": True, "reason": "police request"}
    ),
    ("DELETE", "/api/v1/evidence/{item_id}"): Sample(
        params={"reason": "recorded by mistake"}, path={"item_id": "deletable"}, prepare=_deletable
    ),
    ("POST", "/api/v1/evidence/{item_id}/quarantine-release"): Sample(
        json=lambda fx, p: {"reason": "Reviewed with the camera's issue log"}, prepare=_held_for_review
    ),
    ("POST", "/api/v1/staff"): Sample(
        json=lambda fx, p: {"id": f"S-NEW-{p}", "name": "New Starter", "group": "porter"}
    ),
    ("POST", "/api/v1/devices/docks"): Sample(json=lambda fx, p: {"id": f"DOCK-{p}-{uuid.uuid4().hex[:6]}"}),
    ("POST", "/api/v1/devices/cameras"): Sample(
        json=lambda fx, p: {"id": f"CAM-{p}-{uuid.uuid4().hex[:6]}", "public_key": _pub()}
    ),
    ("PATCH", "/api/v1/devices/{device_id}"): Sample(json=lambda fx, p: {"status": "active"}),
    ("POST", "/api/v1/users"): Sample(
        json=lambda fx, p: {"username": f"new-{p}", "password": "a long enough password", "role": "auditor"}
    ),
    ("PATCH", "/api/v1/users/{user_id}"): Sample(json=lambda fx, p: {"full_name": f"renamed by {p}"}),
    ("POST", "/api/v1/incidents"): Sample(
        json=lambda fx, p: {
            "category": "theft",
            "occurred_at": _now(),
            "site": "NORTH",
            "title": "wallet taken",
        }
    ),
    ("PATCH", "/api/v1/incidents/{incident_id}"): Sample(json=lambda fx, p: {"title": f"updated by {p}"}),
    ("POST", "/api/v1/incidents/{incident_id}/links"): Sample(
        json=lambda fx, p: {
            "kind": "alarm",
            "target_id": fx.ids["alarm"],
            "reason": "raised during the incident",
        }
    ),
    ("POST", "/api/v1/incidents/{incident_id}/unlink"): Sample(
        json=lambda fx, p: {"kind": "alarm", "target_id": "ALARM-1", "reason": "a different alarm"},
        prepare=_relink_alarm,
    ),
    ("PUT", "/api/v1/incidents/{incident_id}/investigators/{user_id}"): Sample(
        path={"user_id": "investigator2"}
    ),
    ("DELETE", "/api/v1/incidents/{incident_id}/investigators/{user_id}"): Sample(
        path={"user_id": "investigator2"}, prepare=_reassign
    ),
    ("PUT", "/api/v1/incidents/{incident_id}/legal-hold"): Sample(
        json=lambda fx, p: {"hold": True, "reason": "tribunal"}
    ),
    ("GET", "/api/v1/statistics"): Sample(params={"by": ["month", "site"]}),
    ("GET", "/api/v1/custody/consistency"): Sample(params={"first": 1, "second": 1}),
    ("POST", "/api/v1/custody/verify"): Sample(json=lambda fx, p: {"item_id": fx.ids["item"]}),
    ("GET", "/api/v1/custody/verify/{job_id}"): Sample(path={"job_id": "verification"}),
    ("POST", "/api/v1/evidence/{item_id}/redactions"): Sample(
        json=lambda fx, p: {"note": f"requested by {p}"}
    ),
    ("POST", "/api/v1/incidents/{incident_id}/exports"): Sample(
        json=lambda fx, p: {"include_originals": False}
    ),
    ("GET", "/api/v1/alarms/stream"): Sample(params={"follow": "false"}),
    ("GET", "/api/v1/alarms/{alarm_id}"): Sample(
        prepare=lambda fx: {"alarm_id": raise_test_alarm(fx.services)}
    ),
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): Sample(
        prepare=lambda fx: {"alarm_id": raise_test_alarm(fx.services)}
    ),
    ("POST", "/api/v1/alarms/{alarm_id}/escalate"): Sample(
        prepare=lambda fx: {"alarm_id": raise_test_alarm(fx.services)}
    ),
    ("POST", "/api/v1/alarms/{alarm_id}/resolve"): Sample(
        prepare=lambda fx: {"alarm_id": raise_test_alarm(fx.services)}, json=lambda fx, p: {"outcome": "test"}
    ),
    ("POST", "/api/v1/devices/lone-workers"): Sample(
        json=lambda fx, p: {"id": f"LW-{p}-{uuid.uuid4().hex[:6]}", "public_key": _pub()}
    ),
    ("POST", "/api/v1/devices/lone-workers/{device_id}/broker-password"): Sample(
        path={"device_id": "lone_worker"}
    ),
    ("POST", "/api/v1/exports/{export_id}/links"): Sample(
        json=lambda fx, p: {"recipient": f"DC Smith for {p}"}
    ),
    ("DELETE", "/api/v1/exports/{export_id}/links/{link_id}"): Sample(
        prepare=lambda fx: {"link_id": _new_link(fx)}
    ),
    ("POST", "/api/v1/subject-access-requests"): Sample(
        json=lambda fx, p: {
            "requester": f"Sam for {p}",
            "contact": "sam@example.org",
            "received_on": _today(),
            "site": "NORTH",
        }
    ),
    ("PATCH", "/api/v1/subject-access-requests/{request_id}"): Sample(
        json=lambda fx, p: {"notes": f"by {p}"}
    ),
    ("GET", "/api/v1/subject-access-requests/{request_id}/candidates"): Sample(
        params={"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    ),
}

# Which fixture object a path parameter names, unless the sample says otherwise.
PATH_DEFAULTS = {
    "item_id": "item",
    "incident_id": "incident",
    "user_id": "investigator",
    "device_id": "camera",
    "upload_id": "upload",
    "job_id": "job",
    "export_id": "export",
    "link_id": "link",
    "request_id": "subject_access_request",
    "alarm_id": "alarm",
    "event_id": "event",
}


def _admin(fx: Fixture) -> dict[str, str]:
    return {"Authorization": f"Bearer {fx.tokens['admin']}"}


def _new_link(fx: Fixture) -> str:
    r = fx.client.post(
        f"/api/v1/exports/{fx.ids['export']}/links", json={"recipient": "matrix"}, headers=_admin(fx)
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def console_routes() -> set[tuple[str, str]]:
    """The web console's pages: cookie sessions, not tokens; their own matrix is in test_console_access."""
    from console import ROUTERS

    return {
        (m, r.path)
        for router in ROUTERS
        for r in router.routes
        for m in getattr(r, "methods", ()) or ()
        if m != "HEAD"
    }


def app_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path) of every API route the application serves, included routers flattened."""
    out: set[tuple[str, str]] = set()
    console = console_routes()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if method == "HEAD" and "GET" in (route.methods or ()):
                continue  # the implicit HEAD of a GET route
            if (method, str(route.path)) in console:
                continue
            out.add((method, str(route.path)))
    return out


@pytest.fixture
def fx(sqlite_services):  # type: ignore[no-untyped-def]
    from ingest.app import create_app

    s = sqlite_services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-S", "porter", "SOUTH")
    ids: dict[str, Any] = {}
    sites = {"manager": "NORTH", "manager_other_site": "SOUTH"}
    roles = {
        "manager": "security_manager",
        "manager_other_site": "security_manager",
        "investigator_unassigned": "investigator",
    }
    for name in (*USERS, "investigator2"):
        ids[name] = user(
            s, name, roles.get(name, "investigator" if name == "investigator2" else name), sites.get(name)
        )
    tokens: dict[str, str] = {}
    with s.db.session() as session:
        for name in USERS:
            tokens[name], _ = issue_token(
                session,
                session.get(User, ids[name]),
                timedelta(hours=1),
                s.key.derived_secret(CREDENTIAL_SEALS),
            )
        dock = enrol_dock(session, s.ledger, "DOCK-M", "test", site="NORTH")
        camera_key = Ed25519PrivateKey.generate()
        pub = base64.b64encode(
            camera_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode()
        enrol_keyed_device(session, s.ledger, "camera", "CAM-M", pub, "test", staff_id="S-N", site="NORTH")
        incident = create_incident(
            session,
            IncidentDraft(category="physical_assault", occurred_at=datetime.now(UTC), site="NORTH"),
            "test",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, ids["investigator"], "test")
        ids["incident"] = incident.id
        request = receive_request(
            session,
            s.ledger,
            Principal(ids["investigator"], "investigator", "investigator", None),
            RequestDraft("Sam Requester", "sam@example.org", datetime.now(UTC).date(), "NORTH"),
        )
        ids["subject_access_request"] = request.id
    tokens["dock"] = dock.token
    ids["camera"] = "CAM-M"
    ids["event"] = str(uuid.uuid4())
    ids["alarm"] = raise_test_alarm(s)
    ids["lone_worker"] = "LW-MATRIX"
    item = store_item(s, wearer="S-N")
    with s.db.session() as session:
        link_evidence(session, s.ledger, ids["incident"], item.id, "test", "shows it")
    ids["item"] = item.id
    with s.db.session() as session:
        from redaction.jobs import enqueue

        ids["job"] = enqueue(session, item.id, "test").id
    with s.db.session() as session:
        from chain_of_custody.verify_jobs import ask

        ids["verification"] = ask(session, "user:test", None, False)[0].id
    deletable = store_item(s, wearer="S-N", lock=timedelta(seconds=1))
    ids["deletable"] = deletable.id
    ids["deletable_lock"] = deletable.retain_until
    fleet = Fleet("", dock.token, "CAM-M", camera_key, "S-N")
    app = create_app(s.settings, s)
    with TestClient(app) as client:
        fixture = Fixture(client, s, tokens, ids, fleet, clip=uuid.uuid4().bytes * 8)
        ids["upload"] = _new_upload(fixture)
        r = client.post(f"/api/v1/incidents/{ids['incident']}/exports", json={}, headers=_admin(fixture))
        assert r.status_code == 202, r.text
        ids["export"] = r.json()["id"]
        wait_for(
            lambda: (
                client.get(f"/api/v1/exports/{ids['export']}", headers=_admin(fixture)).json()["status"]
                == "ready"
            ),
            60,
            0.1,
            "the export package to be built",
        )
        yield fixture


def _call(fx: Fixture, method: str, path: str, persona: str | None) -> Any:
    sample = SAMPLES.get((method, path), Sample())
    overrides = sample.prepare(fx) if sample.prepare else {}
    url = path
    for name, default in PATH_DEFAULTS.items():
        if "{" + name + "}" in url:
            value = overrides.get(name) or fx.ids[sample.path.get(name, default)]
            url = url.replace("{" + name + "}", str(value))
    headers = sample.headers(fx) if sample.headers else {}
    if persona is not None:
        headers["Authorization"] = f"Bearer {fx.tokens[persona]}"
    return fx.client.request(
        method,
        url,
        headers=headers,
        params=sample.params,
        json=sample.json(fx, persona or "anonymous") if sample.json else None,
        content=sample.content,
    )


def _matches(expected: str, status: int) -> bool:
    return 200 <= status < 300 if expected == "2xx" else status == int(expected)


def _not_one_envelope(method: str, r: Any) -> str | None:
    """What is wrong with a refusal's body, if it is not the one error envelope (``ingest.errors``)."""
    if r.status_code < 400 or method == "HEAD":  # a HEAD answer has no body
        return None
    try:
        body = r.json()
    except ValueError:
        return f"not JSON: {r.text[:80]!r}"
    if not isinstance(body, dict) or set(body) != {"error", "reason", "detail"}:
        return f"not the envelope: {r.text[:120]}"
    if not (isinstance(body["error"], str) and isinstance(body["reason"], str) and body["reason"]):
        return f"error and reason must be text: {r.text[:120]}"
    return None


def test_every_route_has_a_policy(fx: Fixture) -> None:
    served = app_routes(fx.client.app)
    missing = sorted(served - POLICY.keys() - OPEN.keys())
    assert not missing, (
        f"routes without a policy in tests/test_roles_matrix.py (see the instructions at its top): {missing}"
    )
    stale = sorted(POLICY.keys() - served)
    assert not stale, f"policy entries for routes the application no longer serves: {stale}"


def test_every_route_refuses_a_missing_token(fx: Fixture) -> None:
    wrong = []
    for method, path in sorted(app_routes(fx.client.app) - OPEN.keys()):
        r = _call(fx, method, path, None)
        if r.status_code != 401:
            wrong.append(f"{method} {path}: {r.status_code}")
        elif problem := _not_one_envelope(method, r):
            wrong.append(f"{method} {path}: {problem}")
    assert not wrong, wrong
    for method, path in OPEN:
        if method == "GET" and "{" not in path:
            assert fx.client.get(path).status_code == 200, path
    # The download link's token is its credential: a forged or missing one gets nothing.
    assert fx.client.get("/api/v1/exports/download/forged-token").status_code == 404
    assert fx.client.get("/api/v1/exports/download/forged-token/about").status_code == 404


def test_roles_matrix(fx: Fixture) -> None:
    wrong = []
    checked = 0
    for (method, path), rule in POLICY.items():
        for persona in PERSONAS:
            expected = rule.expect(persona)
            r = _call(fx, method, path, persona)
            checked += 1
            if not _matches(expected, r.status_code):
                wrong.append(
                    f"{method} {path} as {persona}: expected {expected}, got {r.status_code} {r.text[:160]}"
                )
            elif problem := _not_one_envelope(method, r):
                wrong.append(f"{method} {path} as {persona}: {problem}")
    assert not wrong, "\n".join(wrong)
    assert checked == len(POLICY) * len(PERSONAS)


def test_login_is_the_only_way_in(fx: Fixture) -> None:
    from tests.test_incidents_kit import PASSWORD

    r = fx.client.post("/api/v1/auth/token", data={"username": "auditor", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["role"] == "auditor"
    r = fx.client.post("/api/v1/auth/token", data={"username": "auditor", "password": "not the password"})
    assert r.status_code == 401
