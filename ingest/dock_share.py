"""How many unfinished uploads one dock may have open: a dock cannot fill the service with uploads
it never finishes, and one that lost track of its own is told which they are.

An upload stops counting when it finishes, is terminated or expires (``upload_expiry_hours`` after
it was opened, whether or not the sweeper has marked it yet), so abandoned uploads never shut a
dock out for longer than that.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.settings import DockUploadSettings

from .models import Upload
from .tus_protocol import TusRefusal

log = logging.getLogger(__name__)


class TooManyOpen(TusRefusal):
    """The dock has as many unfinished uploads open as one dock may (429): finish, resume or terminate
    one of those named in ``detail.open_uploads`` (the oldest first), or wait for it to expire."""

    def __init__(self, limit: int, open_ids: list[str], retry_after: int) -> None:
        super().__init__(
            429,
            "too_many_open_uploads",
            f"this dock has {limit} unfinished uploads open, as many as one dock may: finish, resume "
            "or terminate one first",
            retry_after,
        )
        self.detail = {"open_uploads": open_ids}


def room_for_one_more(session: Session, dock_id: str, now: datetime, settings: DockUploadSettings) -> None:
    """Refuse (:class:`TooManyOpen`) a dock that already has ``max_open_uploads_per_dock`` open."""
    limit = settings.max_open_uploads_per_dock
    open_ids = list(
        session.scalars(
            select(Upload.id)
            .where(Upload.dock_id == dock_id, Upload.status == "open", Upload.expires_at > now)
            .order_by(Upload.created_at)
            .limit(limit)
        )
    )
    if len(open_ids) >= limit:
        log.warning("dock at its open upload limit", extra={"dock": dock_id, "limit": limit})
        raise TooManyOpen(limit, open_ids, settings.retry_after_seconds)
