"""What the service publishes to anyone, without an account: the key that signs its custody record and
export packages, so that a recipient can check a package against a key obtained from the trust itself
rather than the copy inside the package (which a forger would replace with their own)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from accounts.access import require_roles, services
from accounts.service import Principal
from chain_of_custody.core import CoreServices
from chain_of_custody.keys import SIGNING_KEY_PATH, published_key
from chain_of_custody.tree_heads import TreeHeadLog
from chain_of_custody.verify_jobs import CustodyVerification, Verifications, ask
from incidents.access import VERIFIERS, visible_evidence
from storage.api_schema import error_responses
from storage.bounds import DB_INT_MAX
from storage.errors import Invalid, NotFound, Unavailable

# Who may read the log's tree heads and proofs: a witness (another trust, the police) is given an
# auditor's account; a proof costs the server work, so it is not open to anyone.
WITNESSES = ("admin", "auditor")

router = APIRouter(tags=["custody"])


@router.get(SIGNING_KEY_PATH)
def signing_key(s: CoreServices = Depends(services)) -> dict[str, str]:
    """Public on purpose: a public key is no secret, and a recipient with no account (the police, a
    defence expert) must be able to fetch it from the trust's own address to compare fingerprints."""
    return published_key(s.key)


def _log(s: CoreServices) -> TreeHeadLog:
    log = s.ledger.tree_heads
    if log is None:
        raise Unavailable("this service keeps no custody log")
    return log


@router.get("/api/v1/custody/tree-head")
def tree_head(
    user: Principal = Depends(require_roles(*WITNESSES)), s: CoreServices = Depends(services)
) -> dict[str, Any]:
    """The newest signed tree head of the custody log, covering every entry committed so far."""
    return _log(s).current(s.db.engine).to_json()


@router.get("/api/v1/custody/consistency")
def consistency(
    first: int = Query(ge=1, le=DB_INT_MAX),
    second: int = Query(ge=1, le=DB_INT_MAX),
    user: Principal = Depends(require_roles(*WITNESSES)),
    s: CoreServices = Depends(services),
) -> dict[str, Any]:
    """RFC 9162 consistency proof that the log of ``first`` entries is a prefix of the log of ``second``."""
    try:
        path = _log(s).consistency(first, second, s.db.engine)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return {"first": first, "second": second, "path": path}


class VerifyIn(BaseModel):
    item_id: str | None = Field(
        None, max_length=36, description="check this item's row and object only (the ledger is checked whole)"
    )
    check_objects: bool = Field(True, description="re-read stored objects and compare their hashes")


class Finding(BaseModel):
    kind: str = Field(description="what is wrong: entry_altered, object_altered, ledger_truncated, ...")
    where: str
    detail: str


class VerificationOut(BaseModel):
    id: str
    status: str = Field(description="running, done (see ok and problems) or failed (see error)")
    requested_by: str
    item_id: str | None
    objects_checked: bool
    progress: str | None = Field(description="what the verification is checking now")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    ok: bool | None = Field(description="None until it is done")
    entries_checked: int | None
    problems: list[Finding]
    notes: list[str]


def verifications(request: Request) -> Verifications:
    """The application's verification jobs (``ingest.services.Services``), beside the core services."""
    found: Verifications = request.app.state.services.verifications
    return found


@router.post(
    "/api/v1/custody/verify",
    status_code=202,
    response_model=VerificationOut,
    responses=error_responses(404),
)
def verify(
    body: VerifyIn,
    response: Response,
    user: Principal = Depends(require_roles(*VERIFIERS)),
    s: CoreServices = Depends(services),
    jobs: Verifications = Depends(verifications),
) -> dict[str, Any]:
    """Start ``evidence verify`` as a job: the whole ledger chain, its checkpoints and tree heads, and
    every item's row and stored object (or one item's). It answers at once (202) with the job, to be
    read at its ``Location`` until it is done; while one is running (one at a time, on any instance)
    that one is the answer, whatever was asked. It reads and changes no evidence; each finding names
    what is wrong and where."""
    if body.item_id is not None:
        with s.db.session() as session:
            if visible_evidence(session, user, body.item_id) is None:
                raise NotFound("no such evidence item")
    with s.db.session() as session:
        job, new = ask(session, user.actor, body.item_id, body.check_objects)
        out = job.to_json()
    if new:
        jobs.wake()
    response.headers["Location"] = f"/api/v1/custody/verify/{out['id']}"
    return out


@router.get("/api/v1/custody/verify/{job_id}", response_model=VerificationOut, responses=error_responses(404))
def verification(
    job_id: str = Path(max_length=36),
    user: Principal = Depends(require_roles(*VERIFIERS)),
    s: CoreServices = Depends(services),
) -> dict[str, Any]:
    """A verification asked for with ``POST /api/v1/custody/verify``: how it goes, and what it found."""
    with s.db.reading() as session:  # a status poll only reads: it never queues behind a writer
        job = session.get(CustodyVerification, job_id)
        if job is None:
            raise NotFound("no such verification")
        return job.to_json()
