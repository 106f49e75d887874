"""Export routes: ask for an incident's evidence package, follow its build, and hand out expiring links.

An investigator (or security manager, or admin) who can see an incident asks for its package; the
build runs in the background: one pass over the media that checks their hashes, then the package's
layout is stored as its evidence item (see :mod:`incidents.export`). Builds are jobs that any
process's builder claims (:mod:`incidents.export.jobs`); this one is woken at once. The zip is assembled from the
layout and the locked media objects on every download, byte for byte the same each time. Original (unredacted)
footage goes in only when a security manager or admin asks for it and states a reason, which is
recorded in custody on every original exported. A package is downloaded through a link that names
its recipient, expires, can be revoked, and carries an HMAC-signed token, so the recipient (an
officer, a solicitor) needs no account; every download is a ``viewed`` custody entry on the package.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictBool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accounts.access import require_roles, sees_site, services
from accounts.service import hold_person
from chain_of_custody.core import CoreServices
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import SIGNING_KEY_PATH, ServiceKey
from chain_of_custody.models import CustodyEntry, EvidenceItem
from storage.api_schema import error_responses
from storage.bounds import MAX_OFFSET
from storage.errors import InConflict, Invalid, NotFound, NotPermitted, Refused
from storage.idempotency import KeyHeader, Once, json_body
from storage.paging import after_key, link_next, next_headers, page_limit

from ..access import (
    Viewer,
    visible_evidence_ids,
    visible_incident,
)
from ..grants import export_job_read_as_its_incidents, export_job_seal_holds, seal_export_job
from ..models import Incident, IncidentAssignment
from .authority import EXPORTERS, ORIGINALS_AUTHORISERS, holding_refusal, left_visible
from .disclosure import DISCLOSURE_PAGE, DISCLOSURE_PAGE_MAX, DisclosurePage, csv_pages, disclosure_page
from .jobs import ExportBuilds, record_request
from .links import link_secret, make_link_token
from .models import ExportJob, ExportLink
from .plan import (
    REDACTED_VIDEO_KIND,
    ExportError,
    OriginalsPermission,
    Pin,
    gather_items,
    incident_export_scope,
    pin_redactions,
    plan_package,
)

log = logging.getLogger(__name__)


# -- HTTP ----------------------------------------------------------------------------------------


class ExportIn(BaseModel):
    include_originals: StrictBool = False
    reason: str | None = Field(None, max_length=2000, description="required to include original footage")
    item_ids: list[str] | None = Field(
        None,
        max_length=10_000,
        description="only these of the incident's linked items (default: all of them); each must be "
        "linked to the incident and visible to the caller. A redacted copy of a linked clip may be "
        "named instead of the clip: the package then holds exactly that version. A clip named by "
        "itself gets its latest redaction at the time of this request, and no later one",
    )


class ExportOut(BaseModel):
    id: str
    incident_id: str
    status: str
    requested_by: str
    include_originals: bool
    reason: str | None
    created_at: datetime
    finished_at: datetime | None
    media_bytes_total: int
    media_bytes_done: int
    package_sha256: str | None
    package_size: int | None
    filename: str | None
    included: list[str] | None = None
    withheld: dict[str, str] | None = None
    manifest_sha256: str | None = None
    key_fingerprint: str | None = Field(
        None,
        description="SHA-256 fingerprint of the key that signs the package: give it to the recipient "
        "apart from the package, which they must not trust for it",
    )
    signing_key_url: str = Field(SIGNING_KEY_PATH, description="where anyone can fetch the signing key")
    layout_sha256: str | None = Field(
        None, description="SHA-256 of the stored package layout (the item's object)"
    )
    error: str | None = None


class LinkIn(BaseModel):
    recipient: str = Field(
        min_length=3, max_length=200, description="who the link is for, as recorded in custody"
    )
    expires_in_hours: int = Field(72, ge=1, le=24 * 30)
    purpose: str | None = Field(
        None, max_length=2000, description="why the recipient receives the package (the disclosure log)"
    )


class LinkOut(BaseModel):
    id: str
    export_id: str
    recipient: str
    purpose: str | None = None
    created_by: str
    expires_at: datetime
    url: str
    path: str
    about_url: str = Field(description="the link's page: what the recipient checks the file against")
    filename: str | None
    package_sha256: str | None = Field(description="SHA-256 of the zip exactly as downloaded")
    package_size: int | None
    key_fingerprint: str
    signing_key_url: str = SIGNING_KEY_PATH


def _job_out(job: ExportJob, key: ServiceKey | None = None) -> dict[str, Any]:
    """The job as the API shows it; with ``key``, a build not yet finished names the key that will sign it."""
    out: dict[str, Any] = {
        c: getattr(job, c)
        for c in (
            "id",
            "incident_id",
            "status",
            "requested_by",
            "include_originals",
            "reason",
            "created_at",
            "finished_at",
            "media_bytes_total",
            "media_bytes_done",
            "package_sha256",
            "package_size",
            "filename",
        )
    }
    if job.result:
        out.update(json.loads(job.result))
    if out.get("key_fingerprint") is None and key is not None:
        out["key_fingerprint"] = key.fingerprint
    out["error"] = job.error
    return out


router = APIRouter(prefix="/api/v1", tags=["exports"])
exporters = Depends(require_roles(*EXPORTERS))


def export_builds(request: Request) -> ExportBuilds:
    """This process's builder of export packages."""
    found: ExportBuilds = request.app.state.services.exports
    return found


def _job_seen(session: Session, user: Viewer, job: ExportJob, key: ServiceKey) -> dict[str, Any]:
    """The job as ``user`` may read it: a package built for another requester may hold items this
    reader does not see (the original of a copy they see redacted); its list of included items
    names only those they see, as every other list does."""
    out = _job_out(job, key)
    included = out.get("included")
    if isinstance(included, list) and included:
        seen = visible_evidence_ids(session, user, included)
        out["included"] = [i for i in included if i in seen]
    return out


def chosen_items(
    session: Session, user: Viewer, linked: list[str], wanted: list[str]
) -> tuple[list[str], list[str]]:
    """The caller's choice of the incident's items, and the redacted copies among them: each one linked
    to it, or a redacted copy of a clip linked to it (that exact version goes in), and visible to the
    caller (what they could not choose answers 422 naming it, the same for missing and hidden).
    A copy named in place of its clip is packaged through its clip (its record and original go with it)."""
    choice = list(dict.fromkeys(wanted))
    if not choice:
        raise Invalid("choose at least one item")
    seen = visible_evidence_ids(session, user, choice)
    copies = {
        i.id: i
        for i in session.scalars(
            select(EvidenceItem).where(
                EvidenceItem.id.in_(choice),
                EvidenceItem.kind == REDACTED_VIDEO_KIND,
                EvidenceItem.status != "deleted",
            )
        )
    }

    def of_incident(item_id: str) -> bool:
        copy = copies.get(item_id)
        return item_id in linked or (copy is not None and copy.derived_from_id in linked)

    refused = [i for i in choice if i not in seen or not of_incident(i)]
    if refused:
        raise Invalid(f"not items of this incident you may export: {', '.join(refused[:20])}")
    scope = [i if i in linked else str(copies[i].derived_from_id) for i in choice]
    return list(dict.fromkeys(scope)), [i for i in choice if i in copies]


def visible_job(session: Session, user: Viewer, export_id: str) -> ExportJob:
    """The package if ``user`` sees the incident its row names; 404 both when missing and when hidden.
    What it then hands out is checked against its seal (``may_hand_out``)."""
    job = session.get(ExportJob, export_id)
    if job is None or visible_incident(session, user, job.incident_id) is None:
        raise NotFound("no such export")
    return job


def readable_job(session: Session, user: Viewer, export_id: str, key: ServiceKey) -> ExportJob:
    """:func:`visible_job`, read as that incident's package only while ``user`` may
    (``grants.export_job_read_as_its_incidents``): a package moved by SQL to an incident they see
    answers 404 there, as a missing one."""
    job = visible_job(session, user, export_id)
    if not export_job_read_as_its_incidents(key, user.role, job):
        raise NotFound("no such export")
    return job


def may_hand_out(session: Session, user: Viewer, job: ExportJob, key: ServiceKey) -> bool:
    """Whether ``user`` may give the package to someone (a download link): a link hands out every
    byte of it, so only someone who may see every item it holds, and who may export original footage
    if it holds some (``authority.holding_refusal``). The package was fixed for its requester's
    access, not for everyone who sees the incident: another investigator of the incident would
    otherwise hand out (and download) the original of a copy they see only redacted, or originals
    their role may not export. Read from a job whose seal holds only (``incidents.grants``): one
    changed in the database hands out nothing."""
    return export_job_seal_holds(key, job) and holding_refusal(session, user, job) is None


def redaction_choices(session: Session, copy_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Which redaction of its clip each redacted copy among ``copy_ids`` is, as the ``redacted``
    custody entry that made it records (what a package's manifest says of it): its ``version`` and
    the ``left_visible`` tracks."""
    if not copy_ids:
        return {}
    rows = session.execute(
        select(CustodyEntry.item_id, CustodyEntry.details)
        .where(CustodyEntry.item_id.in_(copy_ids), CustodyEntry.action == CustodyAction.REDACTED)
        .order_by(CustodyEntry.seq)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for item_id, details in rows:
        try:
            done = json.loads(details) or {}
            edits = done.get("edits") or {}
            tracks = [e.get("track") for e in edits.get("exclusions") or [] if isinstance(e, dict)]
        except (ValueError, AttributeError, TypeError):
            continue
        if str(item_id) not in out and isinstance(done.get("version"), int):
            out[str(item_id)] = {"version": done["version"], "left_visible": tracks}
    return out


def _may_release_left_visible(session: Session, user: Viewer, pins: dict[str, Pin], reason: str) -> None:
    """A package that holds a redacted copy leaving someone visible hands out that person's face as an
    original would: the same roles and a stated reason (10 characters or more), else refused."""
    visible = left_visible(session, [p.item for p in pins.values() if p.item])
    if not visible:
        return
    if user.role not in ORIGINALS_AUTHORISERS:
        log.warning(
            "export refused: a chosen redaction leaves someone visible",
            extra={"reason": "release_not_authorised", "actor": user.actor, "item": visible[0]},
        )
        raise Refused(
            "release_not_authorised",
            f"the redacted copy {visible[0]} leaves a person visible; role {user.role} may not hand it "
            "out (as with original footage): choose another version",
            403,
        )
    if len(reason) < 10:
        log.warning(
            "export refused: no reason for releasing a face",
            extra={"reason": "release_reason_required", "actor": user.actor, "item": visible[0]},
        )
        raise Refused(
            "release_reason_required",
            f"the redacted copy {visible[0]} leaves a person visible: say why it is handed out "
            "(10 characters or more)",
            422,
        )


@router.post(
    "/incidents/{incident_id}/exports",
    response_model=ExportOut,
    status_code=202,
    responses=error_responses(400, 409, 422, 429),
)
def request_export(
    incident_id: str,
    body: ExportIn,
    request: Request,
    idempotency_key: KeyHeader = None,
    user: Viewer = exporters,
    s: CoreServices = Depends(services),
    builds: ExportBuilds = Depends(export_builds),
) -> Response:
    """Start building the incident's evidence package; poll the returned export until it is ready.
    Sent again with the same ``Idempotency-Key``, it answers the first answer and builds nothing new."""
    reason = (body.reason or "").strip()
    if body.include_originals:
        if user.role not in ORIGINALS_AUTHORISERS:
            raise NotPermitted(f"role {user.role} may not export original footage")
        if len(reason) < 10:
            raise Invalid("exporting original footage needs a stated reason (10 characters or more)")
    retry = Once.of(request, idempotency_key, user.user_id, body, s.settings.idempotency_key_hours)
    with s.db.session() as session:
        if (first := retry.claim(session)) is not None:
            return first  # before the share is counted: the first request is in it already
        hold_person(session, user.user_id)  # counted and inserted as one step (see ``_within_share``)
        _within_share(
            session,
            select(func.count()).where(ExportJob.requested_by == user.actor, ExportJob.status == "building"),
            s.settings.max_exports_building_per_user,
            "too_many_exports",
            "exports building, as many as one person may: wait until one is ready",
            s.settings.retry_after_seconds,
        )
        try:
            summary, item_ids = incident_export_scope(session, user, incident_id)
        except LookupError:
            raise NotFound("no such incident") from None
        if not item_ids:
            raise InConflict("nothing is linked to this incident yet")
        chosen: list[str] = []
        if body.item_ids is not None:
            item_ids, chosen = chosen_items(session, user, item_ids, body.item_ids)
        try:
            items = gather_items(session, item_ids)
        except ExportError as exc:
            raise InConflict(str(exc)) from None
        # The one redaction of each clip the package holds, fixed now and kept on the job: what the
        # requester chose (or the latest there is now), never a version made after they asked.
        asked_at = datetime.now(UTC)
        try:
            pins = pin_redactions(items, chosen, asked_at)
        except ExportError as exc:
            raise Invalid(str(exc)) from None
        _may_release_left_visible(session, user, pins, reason)
        # What the scope gathers beyond the links (a linked copy's original) goes in only if the
        # requester may see it (the one access rule); otherwise it is listed by hash only.
        seen = visible_evidence_ids(session, user, [i.id for i in items])
        outside = sorted(i.id for i in items if i.id not in seen)
        permission = OriginalsPermission(user.actor, user.role, reason) if body.include_originals else None
        planned = plan_package(items, permission, outside=outside, pins=pins)
        total = sum(p.item.size for p in planned if p.include_media)
        job = ExportJob(
            id=str(uuid.uuid4()),
            incident_id=summary["id"],
            requested_by=user.actor,
            requester_role=user.role,
            include_originals=body.include_originals,
            reason=reason or None,
            scope=json.dumps(
                {
                    "incident": summary,
                    "item_ids": item_ids,
                    "outside": outside,
                    "pinned": {orig: pin.to_json() for orig, pin in pins.items()},
                }
            ),
            media_bytes_total=total,
            media_bytes_done=0,
            status="building",
            created_at=asked_at,
            heartbeat_at=datetime.now(UTC),
        )
        seal_export_job(job, s.key)
        session.add(job)
        session.flush()
        record_request(session, s.ledger, job)
        location = {"Location": f"/api/v1/exports/{job.id}"}
        answer = retry.answer(session, 202, json_body(ExportOut, _job_out(job, s.key)), location)
    builds.wake()
    return answer


def _within_share(
    session: Session,
    count: Any,
    limit: int,
    reason: str,
    what: str,
    retry_after: int | None = None,
) -> None:
    """Refuse (429) one more of something costly when the caller already holds ``limit`` of them.

    The caller takes their own row lock first (``accounts.service.hold_person``) and adds the new row
    in the same transaction: requests of theirs at once count one after the other, never together."""
    held = int(session.scalar(count) or 0)
    if held >= limit:
        log.warning("share refused", extra={"reason": reason, "held": held, "limit": limit})
        raise Refused(reason, f"you have {held} {what}", 429, retry_after=retry_after)


EXPORTS_PAGE = 100  # packages in a page of an incident's list, unless the caller asks for fewer
EXPORTS_PAGE_MAX = 1000


@router.get("/incidents/{incident_id}/exports", response_model=list[ExportOut], responses=next_headers())
def incident_exports(
    incident_id: str,
    response: Response,
    after: str = after_key("id", "package"),
    limit: int = page_limit(EXPORTS_PAGE, EXPORTS_PAGE_MAX, "packages"),
    user: Viewer = exporters,
    s: CoreServices = Depends(services),
) -> list[dict[str, Any]]:
    """The incident's packages, newest first, a page at a time (``limit``, then ``after``): while more
    follow, the answer links the next page (``Link: <...>; rel="next"`` and ``X-Next-After``)."""
    with s.db.reading() as session:  # only reads: waits for no writer
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise NotFound("no such incident")
        q = select(ExportJob).where(ExportJob.incident_id == incident.id)
        if after:
            last = session.get(ExportJob, after)
            if last is None or last.incident_id != incident.id:
                raise Invalid("after names no package of this incident")
            q = q.where(
                (ExportJob.created_at < last.created_at)
                | ((ExportJob.created_at == last.created_at) & (ExportJob.id < last.id))
            )
        jobs = session.scalars(
            q.order_by(ExportJob.created_at.desc(), ExportJob.id.desc()).limit(limit + 1)
        ).all()
        page = [
            _job_seen(session, user, j, s.key)
            for j in jobs[:limit]
            if export_job_read_as_its_incidents(s.key, user.role, j)
        ]
        key = incident.id
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    next_after = jobs[limit - 1].id if len(jobs) > limit else None
    link_next(response, f"/api/v1/incidents/{quote(key)}/exports", next_after, limit)
    return page


@router.get(
    "/incidents/{incident_id}/disclosures",
    response_model=None,
    responses={200: {**next_headers()[200], "content": {"text/csv": {}}}},
)
def incident_disclosures(
    incident_id: str,
    response: Response,
    format: Literal["json", "csv"] = "json",
    after: int = Query(
        0,
        ge=0,
        le=MAX_OFFSET,
        description="the custody entry number of the previous page's last download (its X-Next-After): "
        "the page starts after it; 0 for the first page",
    ),
    limit: int = Query(
        DISCLOSURE_PAGE, ge=1, le=DISCLOSURE_PAGE_MAX, description="most downloads in the page"
    ),
    user: Viewer = exporters,
    s: CoreServices = Depends(services),
) -> Any:
    """The incident's disclosure log: every package, every link (recipient, purpose, who issued it,
    expiry, revocation, its number of downloads) and every download, from the export, link and custody
    records. A link allows any number of downloads until it expires, so the log comes a page at a time
    (``limit`` downloads, then ``after``): while more follow, the answer links the next page
    (``Link: <...>; rel="next"`` and ``X-Next-After``). ``?format=csv`` is the whole log as one row per
    event, streamed a page at a time as it is read."""
    with s.db.reading() as session:
        incident = visible_incident(session, user, incident_id)
        if incident is None:
            raise NotFound("no such incident")
        reference, incident_key = incident.reference, incident.id
        if format == "json":
            page = disclosure_page(session, incident, after, limit, readable=job_reader(s.key, user))
    if format == "csv":
        return StreamingResponse(
            csv_pages(_disclosure_pages(s, user, incident_key, after)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="disclosure-log-{reference}.csv"'},
        )
    link_next(response, f"/api/v1/incidents/{quote(incident_key)}/disclosures", page.next_after, limit)
    return page.log


def job_reader(key: ServiceKey, user: Viewer) -> Callable[[ExportJob], bool]:
    """Which packages whose row names an incident ``user`` reads as that incident's (its disclosure
    log's, ``disclosure_page``'s ``readable``)."""
    return lambda job: export_job_read_as_its_incidents(key, user.role, job)


def _disclosure_pages(
    s: CoreServices, user: Viewer, incident_id: str, after: int
) -> Iterator[DisclosurePage]:
    """The log's pages from ``after`` to its end, each read in its own short transaction."""
    while True:
        with s.db.reading() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                return
            page = disclosure_page(
                session, incident, after, DISCLOSURE_PAGE_MAX, readable=job_reader(s.key, user)
            )
        yield page
        if page.next_after is None:
            return
        after = page.next_after


@router.get("/exports/{export_id}", response_model=ExportOut)
def get_export(
    export_id: str, user: Viewer = exporters, s: CoreServices = Depends(services)
) -> dict[str, Any]:
    with s.db.reading() as session:  # a status poll only reads: it never queues behind a build's writes
        return _job_seen(session, user, readable_job(session, user, export_id, s.key), s.key)


@router.post(
    "/exports/{export_id}/links",
    response_model=LinkOut,
    status_code=201,
    responses=error_responses(400, 409, 422, 429),
)
def create_link(
    export_id: str,
    body: LinkIn,
    request: Request,
    idempotency_key: KeyHeader = None,
    user: Viewer = exporters,
    s: CoreServices = Depends(services),
) -> Response:
    """A download link for a named recipient, valid for ``expires_in_hours``. Sent again with the same
    ``Idempotency-Key``, it answers the first link and issues no other."""
    now = datetime.now(UTC).replace(microsecond=0)
    retry = Once.of(request, idempotency_key, user.user_id, body, s.settings.idempotency_key_hours)
    with s.db.session() as session:
        if (
            first := retry.claim(session, restore=lambda kept: {LINK_TOKEN: _link_token(s, kept)})
        ) is not None:
            return first  # before the share is counted: the first link is in it already
        job = visible_job(session, user, export_id)
        if not may_hand_out(session, user, job, s.key):
            raise NotPermitted("this package holds evidence you may not hand out")
        if job.status != "ready":
            raise InConflict(f"the export is {job.status}, not ready")
        hold_person(session, user.user_id)
        _within_share(
            session,
            select(func.count()).where(
                ExportLink.created_by == user.actor,
                ExportLink.revoked_at.is_(None),
                ExportLink.expires_at > now,
            ),
            s.settings.max_export_links_per_user,
            "too_many_links",
            "download links live, as many as one person may: revoke one or let one expire",
        )
        link = ExportLink(
            id=str(uuid.uuid4()),
            export_id=job.id,
            recipient=body.recipient.strip(),
            purpose=(body.purpose or "").strip() or None,
            created_by=user.actor,
            created_at=now,
            expires_at=now + timedelta(hours=body.expires_in_hours),
        )
        session.add(link)
        filename, package_sha256, package_size = job.filename, job.package_sha256, job.package_size
        fingerprint = json.loads(job.result or "{}").get("key_fingerprint") or s.key.fingerprint
        s.ledger.append(
            session,
            CustodyAction.LINK_ISSUED,
            user.actor,
            item_id=job.id,
            details={
                "link": link.id,
                "recipient": link.recipient,
                "purpose": link.purpose,
                "expires_at": link.expires_at.isoformat(),
                "package_sha256": package_sha256,
            },
        )
        token = make_link_token(link_secret(s.key), link.id, job.id, link.expires_at)
        path = f"/api/v1/exports/download/{token}"
        base = str(request.base_url).rstrip("/")
        out = {
            "id": link.id,
            "export_id": job.id,
            "recipient": link.recipient,
            "purpose": link.purpose,
            "created_by": link.created_by,
            "expires_at": link.expires_at,
            "url": base + path,
            "path": path,
            "about_url": base + path + "/about",
            "filename": filename,
            "package_sha256": package_sha256,
            "package_size": package_size,
            "key_fingerprint": fingerprint,
        }
        answer = retry.answer(session, 201, json_body(LinkOut, out), withheld={LINK_TOKEN: token})
    log.info("export link issued", extra={"export": job.id, "link": link.id, "by": user.actor})
    return answer


LINK_TOKEN = "{link_token}"  # stands for a link's token in an answer kept under an Idempotency-Key


def _link_token(s: CoreServices, kept: dict[str, Any]) -> str:
    """The token of a link answered before, made again from its id, package and expiry (the
    database keeps no link's token: whoever reads it could download the package)."""
    expires_at = datetime.fromisoformat(str(kept["expires_at"]).replace("Z", "+00:00"))
    return make_link_token(link_secret(s.key), str(kept["id"]), str(kept["export_id"]), expires_at)


def may_revoke(session: Session, user: Viewer, job: ExportJob, link: ExportLink) -> bool:
    """Whether ``user`` may revoke the link: the person who issued it (even once they no longer see
    the incident: taking back what they handed out only narrows it), an investigator assigned to the
    incident now (by an assignment whose seal held at sign-in, ``Viewer.assignments``), or an
    administrator or a security manager of the incident's site (an incident whose seal holds,
    ``Viewer.reach.incidents``, read once a request). Seeing the incident is not enough
    on its own: the rule says who answers for the disclosure."""
    if user.actor == link.created_by:
        return True
    incident = session.get(Incident, job.incident_id)
    if incident is None:
        return False
    if user.role == "admin":
        return True
    if user.role == "security_manager":
        return sees_site(user, incident.site) and incident.id in user.reach.incidents
    if user.role == "investigator":
        assigned = session.scalar(
            select(IncidentAssignment.id).where(
                IncidentAssignment.incident_id == incident.id,
                IncidentAssignment.user_id == user.user_id,
                IncidentAssignment.unassigned_at.is_(None),
                IncidentAssignment.id.in_(sorted(user.assignments)),
            )
        )
        return assigned is not None
    return False


@router.delete("/exports/{export_id}/links/{link_id}", status_code=204)
def revoke_link(
    export_id: str, link_id: str, user: Viewer = exporters, s: CoreServices = Depends(services)
) -> Response:
    """Revoke a download link (a ``link_revoked`` custody entry on the package): its issuer, an
    investigator assigned to the incident, or an administrator or security manager of its site
    (``may_revoke``); anyone else gets 404, as for a link they cannot see."""
    with s.db.session() as session:
        job = session.get(ExportJob, export_id)
        # Locked: a second revocation at once waits and finds it revoked (one entry, the first's),
        # and a download being recorded (``downloads.still_serves``) is recorded before it or refused.
        link = session.get(ExportLink, link_id, with_for_update=True)
        if (
            job is None
            or link is None
            or link.export_id != job.id
            or not may_revoke(session, user, job, link)
        ):
            raise NotFound("no such link")
        if link.revoked_at is None:
            link.revoked_at = datetime.now(UTC)
            link.revoked_by = user.actor
            s.ledger.append(
                session,
                CustodyAction.LINK_REVOKED,
                user.actor,
                item_id=job.id,
                details={"link": link.id, "recipient": link.recipient},
            )
    return Response(status_code=204)
