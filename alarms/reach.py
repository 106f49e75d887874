"""Who reads an alarm, checked against its seal where alarms are read.

An alarm's site decides which security manager lists it, opens it, acts on it and follows it on the
live stream, and its voice memo item is streamed to whoever reads it. SQL cannot check an HMAC, so
the rows a site's query returns (and the changes the live stream sends) are checked here against
the seal the service wrote (``chain_of_custody.alarm_seals``): an alarm whose seal does not hold
reaches no site-scoped reader, and its memo nobody, with a warning naming it. Readers of every site
still see the alarm (nothing is widened for them), but not a memo its row no longer vouches for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from accounts.access import SiteViewer, sites_seen
from chain_of_custody.alarm_seals import alarm_holds

from .models import AlarmRecord


def alarm_sealed(secret: bytes, row: AlarmRecord) -> bool:
    """Whether the alarm's row is as the service sealed it; a warning names it when not."""
    return alarm_holds(secret, row.id, row.site, row.wearer, row.device_id, row.voice_memo_item_id, row.seal)


def by_site(viewer: SiteViewer | None) -> bool:
    """Whether the viewer reads alarms by their site (``viewer`` None: the service itself)."""
    return viewer is not None and sites_seen(viewer) is not None


def readable(secret: bytes, viewer: SiteViewer | None, rows: Iterable[AlarmRecord]) -> list[AlarmRecord]:
    """The rows, in order, a viewer reads once each seal is checked: what a ``site_scope`` query
    returned, before it is used. A viewer of every site reads them all."""
    if not by_site(viewer):
        return list(rows)
    return [r for r in rows if alarm_sealed(secret, r)]


def change_body(secret: bytes, scoped: bool, body: str) -> str | None:
    """A live stream change as sent (without the seal it was recorded with); None when a reader by
    site may not have it because the alarm it carries is not as the service sealed it."""
    change: dict[str, Any] = json.loads(body)
    recorded = "seal" in change  # changes recorded before seals carry none
    seal = change.pop("seal", None)
    if scoped:
        a = change["alarm"]
        if not alarm_holds(
            secret,
            a["id"],
            a.get("site"),
            a.get("wearer"),
            a.get("device_id"),
            a.get("voice_memo_item_id"),
            seal,
        ):
            return None
    return json.dumps(change) if recorded else body
