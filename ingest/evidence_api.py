"""Evidence read routes: list, describe, custody trail, and byte-range streaming (every read is recorded)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select

from accounts.service import Principal
from chain_of_custody.evidence import parse_range, read_item
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem

from .auth import require_roles, services
from .metrics import EVIDENCE_READS
from .services import Services

router = APIRouter(prefix="/api/v1", tags=["evidence"])

METADATA_ROLES = ("admin", "security_manager", "investigator", "auditor")
MEDIA_ROLES = ("admin", "security_manager", "investigator")


class EvidenceItemOut(BaseModel):
    id: str
    kind: str
    status: str
    quarantine_reason: str | None
    sha256: str
    size: int
    content_type: str
    filename: str | None
    source_device_id: str | None
    wearer: str | None
    captured_start: datetime | None
    captured_stop: datetime | None
    derived_from_id: str | None
    retain_until: datetime | None
    legal_hold: bool
    created_at: datetime

    model_config = {"from_attributes": True}


class CustodyEntryOut(BaseModel):
    seq: int
    id: str
    at: str
    action: str
    actor: str
    item_seq: int | None
    details: dict[str, object]
    prev_hash: str
    item_prev_hash: str | None
    entry_hash: str
    signature: str
    key_id: str


@router.get("/evidence", response_model=list[EvidenceItemOut])
def list_items(
    kind: str | None = None,
    status: str | None = None,
    wearer: str | None = None,
    device: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    user: Principal = Depends(require_roles(*METADATA_ROLES)),
    s: Services = Depends(services),
) -> list[EvidenceItem]:
    q = select(EvidenceItem).order_by(EvidenceItem.created_at.desc()).limit(limit).offset(offset)
    for col, val in (
        (EvidenceItem.kind, kind),
        (EvidenceItem.status, status),
        (EvidenceItem.wearer, wearer),
        (EvidenceItem.source_device_id, device),
    ):
        if val is not None:
            q = q.where(col == val)
    with s.db.session() as session:
        return list(session.scalars(q))


def _item(s: Services, item_id: str) -> EvidenceItem:
    with s.db.session() as session:
        item = session.get(EvidenceItem, item_id)
    if item is None:
        raise HTTPException(404, "no such evidence item")
    return item


@router.get("/evidence/{item_id}", response_model=EvidenceItemOut)
def get_item(
    item_id: str, user: Principal = Depends(require_roles(*METADATA_ROLES)), s: Services = Depends(services)
) -> EvidenceItem:
    return _item(s, item_id)


@router.get("/evidence/{item_id}/custody", response_model=list[CustodyEntryOut])
def custody_trail(
    item_id: str, user: Principal = Depends(require_roles(*METADATA_ROLES)), s: Services = Depends(services)
) -> list[dict[str, object]]:
    _item(s, item_id)
    with s.db.session() as session:
        return [e.to_json() for e in Ledger.item_entries(session, item_id)]


@router.get("/evidence/{item_id}/content")
async def content(
    item_id: str,
    request: Request,
    user: Principal = Depends(require_roles(*MEDIA_ROLES)),
    s: Services = Depends(services),
) -> Response:
    """Stream the item's bytes (HTTP Range supported); the read is a custody entry before any byte leaves."""
    item = _item(s, item_id)
    if item.status == "deleted":
        raise HTTPException(410, "evidence deleted under its retention class")
    try:
        byte_range = parse_range(request.headers.get("range"), item.size)
    except ValueError:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{item.size}"})

    def start() -> object:
        with s.db.session() as session:
            return read_item(session, s.ledger, s.store, item, user.actor, byte_range)

    blocks = await asyncio.to_thread(start)
    EVIDENCE_READS.inc()
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{item.sha256}"',
        "X-Evidence-SHA256": item.sha256,
        "Content-Disposition": f'attachment; filename="{item.id}"',
    }
    if byte_range is None:
        headers["Content-Length"] = str(item.size)
        return StreamingResponse(blocks, media_type=item.content_type, headers=headers)  # type: ignore[arg-type]
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{item.size}"
    return StreamingResponse(blocks, status_code=206, media_type=item.content_type, headers=headers)  # type: ignore[arg-type]


@router.get("/custody/public-key")
def public_key(
    user: Principal = Depends(
        require_roles("admin", "security_manager", "investigator", "auditor", "operator")
    ),
    s: Services = Depends(services),
) -> dict[str, str]:
    """The service's Ed25519 public key that signs custody entries, checkpoints and exports."""
    return {
        "algorithm": "Ed25519",
        "public_key_b64": s.key.public_b64,
        "public_key_pem": s.key.public_pem,
        "fingerprint_sha256": s.key.fingerprint,
        "key_id": s.key.key_id,
    }
