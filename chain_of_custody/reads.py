"""An evidence item's bytes handed out over HTTP: the read's custody entry first, then the stream.

Every route that hands out evidence bytes (the evidence content, an alarm's voice memo) answers
through :func:`item_response`, so none can skip the custody entry or the ``Range`` rules (RFC 9110:
one ``bytes=`` range, 416 when it cannot be met). Who may read which item is the caller's to decide
before calling, and whether a quarantined item may be read at all (``review_reason``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter

from storage.errors import Refused

from .core import CoreServices
from .evidence import RecordUntrusted, parse_range, quarantine, quarantine_hook, read_item
from .models import EvidenceItem

log = logging.getLogger(__name__)


class ReadRefused(Refused):
    """Evidence that may not be served (quarantined, or its record no longer checks)."""

    status = 409
    structured = True


EVIDENCE_READS = Counter("evidence_reads_total", "Evidence reads (each is a custody entry)")


class RangeRefused(Refused):
    """A ``Range`` the stored bytes cannot meet: 416 with ``Content-Range: bytes */<size>``, in the
    one error envelope like every other refusal."""

    status = 416

    def __init__(self, size: int) -> None:
        super().__init__(
            "range_not_satisfiable",
            f"the range asked for is not within the {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )


async def item_response(
    s: CoreServices,
    item: EvidenceItem,
    request: Request,
    actor: str,
    headers: dict[str, str],
    purpose: str = "view",
    *,
    review_reason: str | None = None,
    reason: str | None = None,
) -> Response:
    """An item's bytes (whole, or the one ``Range`` asked for), streamed after the read's custody
    entry is written, and checked against the recorded digest as they stream: bytes that no longer
    match are cut off short of the Content-Length and the item is quarantined.

    ``review_reason`` reads an item already quarantined (for review: the caller decided who may), as
    it is held, unchecked, without the recorded hash as its ETag; the reason goes on custody.
    ``reason`` is why an item in good order is read (an original played in the console), on custody too."""
    try:
        byte_range = parse_range(request.headers.get("range"), item.size)
    except ValueError:
        raise RangeRefused(item.size) from None
    reviewing = review_reason is not None
    where = f"serving it to {actor} ({purpose})"

    def start() -> Iterator[bytes]:
        with s.db.session() as session:
            try:
                return read_item(
                    session,
                    s.ledger,
                    s.store,
                    item,
                    actor,
                    byte_range,
                    purpose,
                    on_altered=quarantine_hook(s.db, s.ledger, item.id, where),
                    verify=not reviewing,
                    details={"reason": review_reason or reason} if (reviewing or reason) else None,
                )
            except RecordUntrusted as exc:
                session.rollback()
                log.error(
                    "evidence read refused: record altered", extra={"item": item.id, "problem": str(exc)}
                )
                with s.db.session() as other:
                    quarantine(other, s.ledger, item.id, f"{exc}; found while {where}", {})
                raise

    try:
        blocks = await asyncio.to_thread(start)
    except RecordUntrusted as exc:
        raise ReadRefused("record_altered", f"the item cannot be served: {exc}") from None
    EVIDENCE_READS.inc()
    headers = {"Accept-Ranges": "bytes", **headers}
    if reviewing:
        headers.pop("ETag", None)
        headers["X-Evidence-Status"] = "quarantined"
    else:
        headers["X-Evidence-SHA256"] = item.sha256
    if byte_range is None:
        headers["Content-Length"] = str(item.size)
        return StreamingResponse(blocks, media_type=item.content_type, headers=headers)
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{item.size}"
    return StreamingResponse(blocks, status_code=206, media_type=item.content_type, headers=headers)
