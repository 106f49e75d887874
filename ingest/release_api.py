"""The reviewed release of an item quarantined for review (``POST /evidence/{id}/quarantine-release``).

A clip signed by a retired key of its camera, or recorded or delivered while its camera was
disabled (a memo of a disabled lone-worker device likewise), is kept but quarantined for review
(``chain_of_custody.quarantines``). Someone who answers for the site's evidence looks at it (an
administrator may read it for review) and releases it with a written reason; from then on it is
served and exported as evidence, and its custody record, and every continuity report made of it,
says it was held for review, why, and who released it, when and why.

Who may release: an administrator, or a security manager of the site the item was captured at (its
capture site as its row's seal vouches for it, ``chain_of_custody.reach_seals``). Never an
investigator, an operator or an auditor, a manager of another site (even one who sees the item
through an incident of theirs), nor a device or the service. A quarantine for integrity (bytes,
hash or record that did not check) is never released, by anyone. There is no command-line
release: every release is a person's, signed in, with their role and site checked as the write
is made.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from accounts.access import require_roles, services
from accounts.service import Principal
from chain_of_custody.core import CoreServices
from chain_of_custody.quarantines import REASON_MAX, REASON_MIN, ReleaseRefused, release
from incidents.access import QUARANTINE_RELEASERS, may_release, visible_evidence
from storage.api_schema import error_responses
from storage.errors import NotFound, NotPermitted

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["evidence"])


class ReleaseIn(BaseModel):
    reason: str = Field(
        min_length=REASON_MIN,
        max_length=REASON_MAX,
        description="why the item, held for review, is evidence after all (kept on its custody record)",
    )


class ReleaseOut(BaseModel):
    item_id: str
    status: str
    released_by: str
    releases: int = Field(description="the seq of the custody entry that quarantined the item")
    custody_entry: int = Field(description="the seq of the release's own custody entry")


@router.post(
    "/evidence/{item_id}/quarantine-release",
    response_model=ReleaseOut,
    responses=error_responses(403, 404, 409, 410, 422),
)
def release_quarantine(
    item_id: str,
    body: ReleaseIn,
    user: Principal = Depends(require_roles(*QUARANTINE_RELEASERS)),
    s: CoreServices = Depends(services),
) -> dict[str, object]:
    """Release the item's quarantine for review, with a reason (10 to 2,000 characters, no control
    characters): a ``quarantine_released`` custody entry naming the caller and the quarantine it
    ends, and the item stored again. 409 ``not_quarantined`` (never, or released already),
    409 ``integrity_quarantine`` (its bytes or record did not check: never released), 403 for
    someone who may not release it, 404 for an item they do not see."""
    with s.db.session() as session:
        item = visible_evidence(session, user, item_id)
        if item is None:
            raise NotFound("no such evidence item")
        if not may_release(user, item, s.key):
            log.warning(
                "quarantine release refused",
                extra={"item": item_id, "actor": user.actor, "refusal": "not_permitted"},
            )
            raise NotPermitted(f"role {user.role} of site {user.site} may not release this item's quarantine")
        try:
            done = release(session, s.ledger, item_id, user.actor, body.reason)
        except ReleaseRefused as exc:
            log.warning(
                "quarantine release refused",
                extra={"item": item_id, "actor": user.actor, "refusal": exc.reason},
            )
            raise
    log.info("quarantine released", extra={"item": item_id, "actor": user.actor, "releases": done.releases})
    return {
        "item_id": item_id,
        "status": "stored",
        "released_by": done.actor,
        "releases": done.releases,
        "custody_entry": done.seq,
    }
