"""Evidence routes: list, describe, custody trail, byte-range streaming (every read is recorded), retention.

Access follows ``incidents.access``: an item outside the caller's scope answers 404 like a missing one;
auditors see metadata and custody but never media. The routes sit in the application rather than in
``chain_of_custody/`` (which holds evidence items) because that access rule is incident-scoped and
``chain_of_custody`` may not import ``incidents``; retention and legal holds are ``incidents``' too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, StrictBool
from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.access import (
    WRITES_CUSTODY,
    SignInWithin,
    require_roles,
    services,
    services_here,
    signs_in_within,
)
from accounts.service import Principal, stands
from chain_of_custody.core import CoreServices, list_cursors
from chain_of_custody.entries import details_name
from chain_of_custody.ledger import TRAIL_PAGE, Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.quarantines import standings
from chain_of_custody.read_timing import ReadTiming
from chain_of_custody.reads import ReadOf, ReadRefused, looked_up_response
from incidents.access import (
    EVIDENCE_DELETERS,
    EVIDENCE_HOLDERS,
    EVIDENCE_MEDIA,
    EVIDENCE_METADATA,
    HIDDEN_ENTRY,
    evidence_scope,
    hidden_incident_markers,
    reach_checked,
    readable_trail,
    visible_evidence,
)
from incidents.exhibits import visible_exhibits
from incidents.footage import (
    content_disposition,
    download_name,
    incident_refs,
    require_reason,
    scoped_retention,
)
from incidents.retention import RetentionRules, delete_by_hand, set_legal_hold
from ingest import read_grants
from ingest.read_reasons import ReasonRefused, deletion_reason, quarantine_review_reason, read_reason
from ingest.viewing_admissions import AdmissionKey, viewing_admissions
from storage.api_schema import error_responses
from storage.bounds import MAX_OFFSET
from storage.errors import Gone, NotFound
from storage.paging import (
    BadCursor,
    after_position,
    cursor_param,
    link_next,
    link_next_keeping,
    next_headers,
    page_limit,
)

router = APIRouter(prefix="/api/v1", tags=["evidence"])

METADATA_ROLES = EVIDENCE_METADATA
MEDIA_ROLES = EVIDENCE_MEDIA
QUARANTINE_REVIEWERS = ("admin",)  # who may read an item that no longer checks, to find out why


class ExhibitOut(BaseModel):
    incident: str = Field(description="the incident's reference")
    reference: str = Field(description="the item's exhibit reference in that incident, e.g. JS/1")
    producer: str
    assigned_at: datetime


class QuarantineReleaseOut(BaseModel):
    quarantined_entry: int = Field(description="the seq of the custody entry that held it for review")
    quarantine_reason: str
    released_by: str
    released_at: str
    reason: str = Field(description="the reason the person who released it gave")
    custody_entry: int = Field(description="the seq of the release's own custody entry")


class EvidenceItemOut(BaseModel):
    id: str
    kind: str
    status: str
    quarantine_reason: str | None = Field(
        description="why it is or was quarantined (a released item keeps it: see quarantine_releases)"
    )
    sha256: str
    size: int
    content_type: str
    filename: str | None
    source_device_id: str | None
    wearer: str | None
    captured_start: datetime | None
    captured_stop: datetime | None
    derived_from_id: str | None
    copy_type: str = Field(description="master copy (as it arrived) or working copy (derived from one)")
    retain_until: datetime | None
    legal_hold: bool
    created_at: datetime
    exhibits: list[ExhibitOut] = Field(
        default_factory=list,
        description="its exhibit references, in the incidents the caller may see (given once, never reused)",
    )
    quarantine_releases: list[QuarantineReleaseOut] = Field(
        default_factory=list,
        description="each quarantine for review a person released, as its custody record has it (a release that holds)",
    )

    model_config = {"from_attributes": True}


def _out(
    session: Session, s: CoreServices, user: Principal, items: list[EvidenceItem]
) -> list[dict[str, object]]:
    """The items as the API shows them, each with its exhibit references the caller may see and the
    releases from quarantine its custody record holds (one read for them all)."""
    ids = [i.id for i in items]
    refs = visible_exhibits(session, user, ids)
    held = standings(session, s.ledger.verifier, ids)
    released = [i for i, standing in held.items() if standing.released]
    # A reason naming an incident the reader may not see is withheld, as its entry is from the trail.
    markers = hidden_incident_markers(session, user, released) if released else set()

    def releases(item_id: str) -> list[dict[str, object]]:
        done = held[item_id].released if item_id in held else ()
        out: list[dict[str, object]] = []
        for q, r in done:
            said = {"quarantine_reason": q.reason, "reason": r.reason}
            if details_name({"details": said}, markers):
                said = {"quarantine_reason": HIDDEN_ENTRY, "reason": HIDDEN_ENTRY}
            out.append(
                {
                    "quarantined_entry": q.seq,
                    "released_by": r.actor,
                    "released_at": r.at,
                    "custody_entry": r.seq,
                    **said,
                }
            )
        return out

    return [
        {
            **EvidenceItemOut.model_validate(i).model_dump(exclude={"exhibits", "quarantine_releases"}),
            "exhibits": refs.get(i.id, []),
            "quarantine_releases": releases(i.id),
        }
        for i in items
    ]


class CustodyEntryOut(BaseModel):
    seq: int
    id: str
    at: str
    action: str
    actor: str | None = None
    item_seq: int | None
    details: dict[str, object] | None = None
    prev_hash: str
    item_prev_hash: str | None
    entry_hash: str
    signature: str | None = None
    key_id: str
    withheld: str | None = Field(
        None,
        description="why the entry's content is left out (it concerns an incident the caller may not see)",
    )


EVIDENCE_PAGE = 100  # items in a page, unless the caller asks for fewer
EVIDENCE_PAGE_MAX = 1000


@router.get(
    "/evidence",
    response_model=list[EvidenceItemOut],
    responses={**next_headers(), **error_responses(400)},
)
def list_items(
    request: Request,
    response: Response,
    kind: str | None = None,
    status: str | None = None,
    wearer: str | None = None,
    device: str | None = None,
    after: str = cursor_param("items"),
    limit: int = page_limit(EVIDENCE_PAGE, EVIDENCE_PAGE_MAX, "items"),
    offset: int = Query(
        0, ge=0, le=MAX_OFFSET, description="kept for older clients: skip this many (use after)"
    ),
    user: Principal = Depends(require_roles(*METADATA_ROLES)),
    s: CoreServices = Depends(services),
) -> list[dict[str, object]]:
    """Items the caller may see, newest first (when stored, then id), a page at a time: ``limit``,
    then ``after`` as the answer's ``X-Next-After`` (and its ``Link: <...>; rel="next"``, which keeps
    the filters) give it. A page starts right after the previous one's last item, so clips stored
    meanwhile never push one onto two pages or past both. ``offset`` still skips rows for older
    clients; it cannot be combined with ``after``."""
    cursors = list_cursors(s)
    position = cursors.read("evidence", after) if after else None
    if position is not None and offset:
        raise BadCursor("give after or offset, not both")
    q = (
        select(EvidenceItem)
        .where(evidence_scope(user), after_position(EvidenceItem.created_at, EvidenceItem.id, position))
        .order_by(EvidenceItem.created_at.desc(), EvidenceItem.id.desc())
        .limit(limit + 1)
        .offset(offset)
    )
    for col, val in (
        (EvidenceItem.kind, kind),
        (EvidenceItem.status, status),
        (EvidenceItem.wearer, wearer),
        (EvidenceItem.source_device_id, device),
    ):
        if val is not None:
            q = q.where(col == val)
    with s.db.reading() as session:  # only reads: waits for no writer
        rows = list(session.scalars(q))
        # A row whose reach seal does not hold is left out (``reach_checked``): the page may be
        # short, and the next one still starts after the last row read.
        page = _out(session, s, user, reach_checked(session, user, rows[:limit]))
        session.expunge_all()  # kept as read (the read's rollback would expire them)
    if len(rows) > limit:
        last = rows[limit - 1]
        link_next_keeping(response, request, cursors.make("evidence", last.created_at, last.id), limit)
    return page


def _item(s: CoreServices, item_id: str, user: Principal) -> EvidenceItem:
    """The item if the caller may see it; 404 both when it is missing and when it is out of scope."""
    with s.db.reading() as session:
        item = visible_evidence(session, user, item_id)
        session.expunge_all()
    if item is None:
        raise NotFound("no such evidence item")
    return item


def _still_seen(session: Session, user: Principal, item_id: str) -> None:
    """404 unless the caller still sees the item in ``session``, the write transaction that acts on
    it: :func:`_item`'s read answers early, and what they may see is decided as it holds where the
    write is made (``accounts.held_reach``: an unassignment or a move meanwhile narrows it)."""
    if visible_evidence(session, user, item_id) is None:
        raise NotFound("no such evidence item")


def _still_reads(session: Session, user: Principal, item_id: str) -> None:
    """A read looked up in one transaction and recorded in a later one (a whole read, a viewing's
    first range: ``chain_of_custody.reads.looked_up_response``) is admitted again in the one that
    records it: the caller still stands as signed in (``stands``, which also reads their assignments
    and reach again there) and still sees the item."""
    stands(session, user)
    _still_seen(session, user, item_id)


@router.get("/evidence/{item_id}", response_model=EvidenceItemOut)
def get_item(
    item_id: str,
    user: Principal = Depends(require_roles(*METADATA_ROLES)),
    s: CoreServices = Depends(services),
) -> dict[str, object]:
    item = _item(s, item_id, user)
    with s.db.reading() as session:
        return _out(session, s, user, [item])[0]


TRAIL_PAGE_MAX = 5000
NEXT_AFTER_HEADER = "X-Custody-Next-After"


@router.get(
    "/evidence/{item_id}/custody",
    response_model=list[CustodyEntryOut],
    responses=next_headers(NEXT_AFTER_HEADER),
)
def custody_trail(
    item_id: str,
    response: Response,
    after: int = Query(
        0,
        ge=0,
        le=MAX_OFFSET,
        description="the entry number (item_seq) of the last entry already read: the page starts after it",
    ),
    limit: int = Query(TRAIL_PAGE, ge=1, le=TRAIL_PAGE_MAX, description="most entries in the page"),
    user: Principal = Depends(require_roles(*METADATA_ROLES)),
    s: CoreServices = Depends(services),
) -> list[dict[str, object]]:
    """The item's custody entries in order, a page at a time (``limit``, then ``after`` the last
    one's ``item_seq``); while more follow, the answer links the next page (``Link: <...>;
    rel="next"`` and ``X-Custody-Next-After``), so no client takes a page for the whole trail
    unawares. An entry about an incident the caller may not see (a link to it and its reason, a
    hold on it, a retention change it caused) keeps its place and hash but not its content, as in
    an export package."""
    item = _item(s, item_id, user)
    with s.db.reading() as session:
        page = Ledger.item_entries_page(session, item.id, after, limit + 1)
        trail = readable_trail(session, user, item.id, [e.to_json() for e in page[:limit]])
    last = page[limit - 1].body.item_seq if len(page) > limit else None
    link_next(response, f"/api/v1/evidence/{quote(item.id)}/custody", last, limit, NEXT_AFTER_HEADER)
    return trail


class ReadGrantIn(BaseModel):
    reason: str = Field(min_length=10, max_length=2000, description="why the original is read")
    use: read_grants.Use = Field(
        "download", description="download: one read within a minute; play: a player's ranges for an hour"
    )


class ReadGrantOut(BaseModel):
    url: str = Field(description="the content address standing for the reason (it holds no reason)")
    use: str
    expires_at: datetime


@router.post(
    "/evidence/{item_id}/read-grants",
    response_model=ReadGrantOut,
    status_code=201,
    responses=error_responses(403, 404, 422),
)
def grant_read(
    item_id: str,
    body: ReadGrantIn,
    user: Principal = Depends(require_roles(*MEDIA_ROLES)),
    s: CoreServices = Depends(services),
) -> dict[str, object]:
    """State why an original is read, in the body, and get a content address standing for that
    reason (``?grant=``) for what cannot send the ``X-Evidence-Reason`` header: a download or a
    ``<video>``. The address holds no reason; it serves only this item to this person from this
    sign-in, for a short time, and a download's only once (``ingest.read_grants``). Nothing is read
    or recorded until the address is used: the read's custody entry carries the reason then."""
    item = _item(s, item_id, user)
    with s.db.session() as session:
        _still_seen(session, user, item.id)
        issued = read_grants.issue(
            session, user, item.id, body.use, body.reason.strip(), read_grants.grant_seal_key(s.key)
        )
    return {
        "url": f"/api/v1/evidence/{quote(item.id)}/content?grant={issued.token}",
        "use": body.use,
        "expires_at": issued.expires_at,
    }


async def read_timing() -> ReadTiming:
    """A read's timing, started before its sign-in is looked up (on the event loop, as a dependency
    resolved ahead of the others): its ``Server-Timing`` covers the whole wait for the first byte."""
    return ReadTiming()


@router.get(
    "/evidence/{item_id}/content",
    responses=error_responses(403, 409, 416, 429, 503),
    dependencies=[WRITES_CUSTODY],
)
async def content(
    item_id: str,
    request: Request,
    timing: ReadTiming = Depends(read_timing),
    review_reason: str | None = Depends(quarantine_review_reason),
    reason: str | None = Depends(read_reason),
    grant: str | None = Query(
        None,
        min_length=16,
        max_length=64,
        description="a read grant's token (``POST /evidence/{id}/read-grants``): the reason it stands "
        "for, for the console's download and player, which cannot send the header",
    ),
    sign_in: SignInWithin = Depends(signs_in_within(*MEDIA_ROLES)),
    s: CoreServices = Depends(services_here),
) -> Response:
    """Stream the item's bytes (HTTP Range supported); the read is a custody entry before any byte
    leaves, and the bytes are checked against the recorded digest as they stream (cut off and the
    item quarantined if they differ). A quarantined item is refused, except to an administrator
    reviewing it with a stated ``review_reason`` (recorded on its custody). An original is read only
    with a stated ``reason`` (422 ``reason_required`` otherwise). The download is named
    for the incident, the capture time and what it is (``incidents.footage.download_name``).

    The caller is signed in (token or console session, then the role) on the worker thread and in
    the transaction of the read's look-up (``accounts.access.SignInWithin``), not on one of its own
    first; a session's due touch is still a short write transaction of its own, after it."""

    def look_up(session: Session, user: Principal) -> tuple[ReadOf, datetime | None]:
        # On a worker thread, in the transaction that records a player's range (``looked_up_response``):
        # the event loop serves every other request meanwhile. With the read, when its grant expires.
        item = visible_evidence(session, user, item_id)
        if item is None:
            raise NotFound("no such evidence item")
        granted = (
            read_grants.check(session, user, item.id, grant, read_grants.grant_seal_key(s.key))
            if grant is not None
            else None
        )
        refs = incident_refs(session, user, item)
        stated, admit = reason, None
        if granted is not None:
            stated = granted.reason
            # A download's grant is used by the read it admits, not by a refused one (busy, a bad range).
            admit = partial(
                read_grants.use_up,
                granted=granted,
                item_id=item.id,
                ledger=s.ledger,
                seal_key=read_grants.grant_seal_key(s.key),
                actor=user.actor,
            )
        if item.status == "deleted":
            raise Gone("evidence deleted under its retention class")
        reviewing = item.status == "quarantined"
        if reviewing and (user.role not in QUARANTINE_REVIEWERS or review_reason is None):
            raise ReadRefused(
                "quarantined",
                f"evidence item {item.id} is quarantined ({item.quarantine_reason}); it is not served as "
                "evidence (an administrator may read it for review, stating why)",
            )
        require_reason(item, review_reason if reviewing else stated, user.actor, "content")
        name = download_name(item, refs[0] if refs else None)
        read = ReadOf(
            item,
            user.actor,
            {"ETag": f'"{item.sha256}"', "Content-Disposition": content_disposition(name, inline=False)},
            "quarantine review" if reviewing else "view",
            review_reason=review_reason if reviewing else None,
            reason=stated,
            sign_in=user.sign_in,
            admit=admit,
            again=partial(_still_reads, user=user, item_id=item.id),
        )
        return read, granted.expires_at if granted is not None else None

    # A player's range: the look-up of this read by this sign-in, kept a moment for its next ranges
    # (``viewing_admissions``); each range is still signed in, recorded and checked.
    kept = (
        viewing_admissions(request, s.settings)
        if request.headers.get("range") is not None and review_reason is None
        else None
    )

    def admitted(session: Session, user: Principal) -> ReadOf:
        if grant is not None and reason is not None:
            raise ReasonRefused("reason_conflict", "a read grant stands for its reason: state none beside it")
        if kept is None:
            return look_up(session, user)[0]
        key = AdmissionKey.of(user, item_id, reason, grant)
        return kept.look_up(key, partial(look_up, user=user))(session)

    return await looked_up_response(s, request, sign_in, admitted, timing)


@router.get("/custody/public-key")
def public_key(
    user: Principal = Depends(
        require_roles("admin", "security_manager", "investigator", "auditor", "operator")
    ),
    s: CoreServices = Depends(services),
) -> dict[str, str]:
    """The service's Ed25519 public key that signs custody entries, checkpoints and exports."""
    return {
        "algorithm": "Ed25519",
        "public_key_b64": s.key.public_b64,
        "public_key_pem": s.key.public_pem,
        "fingerprint_sha256": s.key.fingerprint,
        "key_id": s.key.key_id,
    }


class RetentionOut(BaseModel):
    item_id: str
    status: str
    retention_class: str = Field(alias="class")
    keep_until: datetime | None
    object_locked_until: datetime | None
    legal_hold: bool
    holds: list[int]
    open_incidents: list[str]
    closed_incidents: list[str]
    expired: bool

    model_config = {"populate_by_name": True}


class HoldIn(BaseModel):
    hold: StrictBool
    reason: str = Field(min_length=3, max_length=2000)


def _rules(s: CoreServices) -> RetentionRules:
    return RetentionRules.from_settings(s.settings)


@router.get("/evidence/{item_id}/retention", response_model=RetentionOut, response_model_by_alias=True)
def retention(
    item_id: str,
    user: Principal = Depends(require_roles(*METADATA_ROLES)),
    s: CoreServices = Depends(services),
) -> dict[str, object]:
    """The item's retention class, until when it is kept, its object lock and its legal holds."""
    item = _item(s, item_id, user)
    with s.db.reading() as session:
        return scoped_retention(session, user, item, _rules(s), datetime.now(UTC))


@router.put("/evidence/{item_id}/legal-hold", response_model=RetentionOut, response_model_by_alias=True)
def legal_hold(
    item_id: str,
    body: HoldIn,
    user: Principal = Depends(require_roles(*EVIDENCE_HOLDERS)),
    s: CoreServices = Depends(services),
) -> dict[str, object]:
    """Place (``hold: true``) or release every legal hold on this item (and what is derived from it)."""
    item = _item(s, item_id, user)
    if item.status == "deleted":
        raise Gone("evidence deleted under its retention class")
    now = datetime.now(UTC)
    with s.db.session() as session:
        _still_seen(session, user, item.id)
        set_legal_hold(
            session,
            s.ledger,
            s.store,
            _rules(s),
            "evidence",
            item.id,
            body.hold,
            body.reason,
            user.actor,
            now,
        )
        fresh = session.get(EvidenceItem, item.id)
        assert fresh is not None
        return scoped_retention(session, user, fresh, _rules(s), now)


@router.delete("/evidence/{item_id}", status_code=204)
def delete_item(
    item_id: str,
    reason: str | None = Depends(deletion_reason),
    user: Principal = Depends(require_roles(*EVIDENCE_DELETERS)),
    s: CoreServices = Depends(services),
) -> Response:
    """Delete an item by hand (recorded with a tombstone); refused while linked, held or locked by
    storage. Why (``X-Evidence-Reason``, or ``?reason=``) is required: 422 ``reason_required``."""
    if reason is None or not reason.strip():
        raise ReasonRefused(
            "reason_required", "say why the item is deleted (X-Evidence-Reason, 3 characters or more)"
        )
    _item(s, item_id, user)
    with s.db.session() as session:
        delete_by_hand(session, s.ledger, s.store, item_id, user.actor, reason, datetime.now(UTC))
    return Response(status_code=204)
