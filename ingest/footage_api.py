"""What the footage and redaction-review screens need beyond the plain evidence routes: a clip's
waveform, computed here from the stored bytes (a read like any other, recorded in custody).

In the application because who may read a clip is ``incidents.access``'s rule and the waveform is
``redaction``'s; the application sees both."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from accounts.access import WRITES_CUSTODY, require_roles, services
from accounts.service import Principal
from chain_of_custody.core import CoreServices
from chain_of_custody.evidence import quarantine_hook, read_item
from chain_of_custody.models import EvidenceItem
from incidents.access import EVIDENCE_MEDIA, visible_evidence
from incidents.footage import require_reason
from ingest.read_reasons import read_reason
from redaction.waveform import MAX_BUCKETS, waveform
from storage.api_schema import error_responses
from storage.errors import Busy, InConflict, Invalid, NotFound, Unavailable
from storage.slots import NoSlot, Slots

router = APIRouter(prefix="/api/v1", tags=["evidence"])

SOUND_KINDS = ("clip", "redacted_clip", "voice_memo")
# Drawing a waveform reads the whole clip and runs ffmpeg on a worker thread shared with the rest of
# the process (the escalation loop among them): one at a time per person, two in all per process.
WAVEFORMS = Slots(total=2, per_key=1)


class WaveformOut(BaseModel):
    item_id: str
    has_audio: bool
    problem: str | None = None
    rate: int
    duration: float
    seconds_per_bucket: float
    peaks: list[float]
    rms: list[float]


@router.get(
    "/evidence/{item_id}/waveform",
    response_model=WaveformOut,
    responses=error_responses(429, 503),
    dependencies=[WRITES_CUSTODY],
)
async def item_waveform(
    item_id: str,
    buckets: int = Query(1000, ge=1, le=MAX_BUCKETS),
    reason: str | None = Depends(read_reason),
    user: Principal = Depends(require_roles(*EVIDENCE_MEDIA)),
    s: CoreServices = Depends(services),
) -> dict[str, Any]:
    """The sound of a clip as peaks and RMS per slice of time, for choosing ranges to mute or tone.

    Reading the bytes is a custody entry (purpose ``waveform``), as every read of evidence is; the
    ``reason`` (why an original is read: the console asks for one) goes on that entry."""

    def look_up() -> EvidenceItem | None:
        with s.db.reading() as session:  # on a worker thread: never the event loop's
            found = visible_evidence(session, user, item_id)
            session.expunge_all()  # kept as read (the read's rollback would expire it)
            return found

    item = await asyncio.to_thread(look_up)
    if item is None:
        raise NotFound("no such evidence item")
    if item.kind not in SOUND_KINDS:
        raise Invalid(f"a {item.kind.replace('_', ' ')} has no sound to draw")
    if item.status != "stored":
        raise InConflict(f"evidence item {item.id} is {item.status}; it is not served")
    require_reason(item, reason, user.actor, "waveform")

    def compute() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="waveform-") as scratch:
            path = Path(scratch) / "media"
            with s.db.session() as session:
                # Asked again where the read is recorded: the look-up above only answers early, and
                # what the caller may see is decided as it holds here (``accounts.held_reach``).
                now = visible_evidence(session, user, item_id)
                if now is None:
                    raise NotFound("no such evidence item")
                if now.status != "stored":
                    raise InConflict(f"evidence item {now.id} is {now.status}; it is not served")
                blocks = read_item(
                    session,
                    s.ledger,
                    s.store,
                    now,
                    user.actor,
                    None,
                    "waveform",
                    on_altered=quarantine_hook(
                        s.db, s.ledger, item.id, f"drawing its waveform for {user.actor}"
                    ),
                    details={"reason": reason} if reason else None,
                )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                for block in blocks:
                    f.write(block)
            return waveform(path, buckets)

    try:
        WAVEFORMS.take(user.actor)
    except NoSlot as full:
        retry = {"Retry-After": str(s.settings.retry_after_seconds)}
        if full.mine:
            raise Busy("a waveform of yours is being drawn; try again", headers=retry) from None
        raise Unavailable("waveforms are being drawn for others; try again", headers=retry) from None
    try:
        return {"item_id": item.id, **(await asyncio.to_thread(compute))}
    finally:
        WAVEFORMS.give_back(user.actor)
