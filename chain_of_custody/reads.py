"""An evidence item's bytes handed out over HTTP: the read's custody entry first, then the stream.

Every route that hands out evidence bytes (the evidence content, an alarm's voice memo) answers
through :func:`item_response`, so none can skip the custody entry or the ``Range`` rules (RFC 9110:
one ``bytes=`` range, 416 when it cannot be met). Who may read which item is the caller's to decide
before calling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter

from storage.errors import Refused

from .core import CoreServices
from .evidence import parse_range, read_item
from .models import EvidenceItem

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
) -> Response:
    """An item's bytes (whole, or the one ``Range`` asked for), streamed after the read's custody
    entry is written."""
    try:
        byte_range = parse_range(request.headers.get("range"), item.size)
    except ValueError:
        raise RangeRefused(item.size) from None

    def start() -> Iterator[bytes]:
        with s.db.session() as session:
            return read_item(session, s.ledger, s.store, item, actor, byte_range, purpose)

    blocks = await asyncio.to_thread(start)
    EVIDENCE_READS.inc()
    headers = {"Accept-Ranges": "bytes", "X-Evidence-SHA256": item.sha256, **headers}
    if byte_range is None:
        headers["Content-Length"] = str(item.size)
        return StreamingResponse(blocks, media_type=item.content_type, headers=headers)
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{item.size}"
    return StreamingResponse(blocks, status_code=206, media_type=item.content_type, headers=headers)
