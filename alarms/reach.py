"""Who reads an alarm, checked against its seal where alarms are read.

An alarm's site decides which security manager lists it, opens it, acts on it and follows it on the
live stream, and its voice memo item is streamed to whoever reads it. SQL cannot check an HMAC, so
the rows a site's query returns (and the changes the live stream sends) are checked here against
the seal the service wrote (``chain_of_custody.alarm_seals``): an alarm whose seal does not hold
reaches no site-scoped reader, and its memo nobody, with a warning naming it. Readers of every site
still see the alarm (nothing is widened for them), but not a memo its row no longer vouches for.
What is figured in SQL rather than listed (open alarms per device, the performance figures) leaves
such a row out by id (:func:`readable_scope`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from accounts.access import SiteViewer, site_scope, sites_seen
from chain_of_custody.alarm_seals import alarm_holds
from chain_of_custody.models import EvidenceItem
from chain_of_custody.raise_seals import vouched_view
from chain_of_custody.reach_seals import SiteReach
from chain_of_custody.visit_seals import visit_holds
from devices.models import Device

from .models import AlarmRecord, LoneWorkerVisit


def alarm_sealed(secret: bytes, row: AlarmRecord) -> bool:
    """Whether the alarm's row is as the service sealed it; a warning names it when not."""
    return alarm_holds(
        secret, row.id, row.site, row.wearer, row.device_id, row.voice_memo_item_id, row.seal, row.incident_id
    )


def by_site(viewer: SiteViewer | None) -> bool:
    """Whether the viewer reads alarms by their site (``viewer`` None: the service itself)."""
    return viewer is not None and sites_seen(viewer) is not None


def readable(secret: bytes, viewer: SiteViewer | None, rows: Iterable[AlarmRecord]) -> list[AlarmRecord]:
    """The rows, in order, a viewer reads once each seal is checked: what a ``site_scope`` query
    returned, before it is used. A viewer of every site reads them all."""
    if not by_site(viewer):
        return list(rows)
    return [r for r in rows if alarm_sealed(secret, r)]


def readable_visits(
    secret: bytes,
    viewer: SiteViewer | None,
    visits: Iterable[LoneWorkerVisit],
    devices: Mapping[str, Device] | None = None,
) -> list[LoneWorkerVisit]:
    """The visits, in order, a viewer reads beside the devices they see: for a reader by site only
    rows whose seal holds (``chain_of_custody.visit_seals``, over the visit's device among the rest),
    so a visit moved by SQL to a device of their site (with the address a worker of another site
    gave) is not shown there. A reader of every site reads them all, as :func:`readable`. With
    ``devices`` (the rows of the devices shown, by id), a visit whose seal holds is shown only
    beside the device's holder now (:func:`held_now`), to every reader: one whose seal does not
    hold says nothing of whose it is, and is read as above."""
    site_reader, shown = by_site(viewer), []
    for v in visits:
        device = None if devices is None else devices.get(v.device_id)
        former = device is not None and not held_now(v, device)
        if former or site_reader:
            sealed = visit_holds(secret, v, v.seal)
            if (former and sealed) or (site_reader and not sealed):
                continue
        shown.append(v)
    return shown


def held_now(visit: LoneWorkerVisit, device: Device) -> bool:
    """Whether ``visit`` was begun under its device's holder now: the member of staff it is assigned
    to and, for a visit that records one, the site it is enrolled at. A visit of a former holder
    (the device re-enrolled at another site, or handed to another worker, while it was open) is
    still theirs (its missed check-in is raised for them, where it began: ``alarms.visits``), and is
    not shown on the device's line as its new holder's, nor to its new site: its note is where the
    former holder went."""
    return visit.wearer == device.assigned_staff_id and visit.site in (None, device.site)


_SEALED = (
    AlarmRecord.id,
    AlarmRecord.site,
    AlarmRecord.wearer,
    AlarmRecord.device_id,
    AlarmRecord.voice_memo_item_id,
    AlarmRecord.seal,
    AlarmRecord.incident_id,  # covered by the seal once the alarm has one (``alarm_seals``)
)


def readable_scope(
    session: Session, secret: bytes, viewer: SiteViewer | None, *where: ColumnElement[bool]
) -> list[ColumnElement[bool]]:
    """WHERE clauses on ``alarms`` selecting, of the rows ``where`` selects, those the viewer reads:
    of their sites and, for a reader by site, none whose seal does not hold. SQL cannot check an
    HMAC, so for a reader by site the sealed columns of the rows ``where`` selects at their sites
    are read once, streamed, and each row whose seal does not hold (a warning names it) is left out
    by id: what a figure made in SQL (a count, the performance figures) needs, as :func:`readable`
    is what a list needs. Nothing more is read for any other viewer."""
    clauses = list(where)
    if viewer is None:
        return clauses
    clauses.append(site_scope(viewer, AlarmRecord.site))
    if not by_site(viewer):
        return clauses
    rows = session.execute(select(*_SEALED).where(*clauses).execution_options(yield_per=1000))
    unsealed = [str(row[0]) for row in rows if not alarm_holds(secret, *row)]
    if unsealed:
        clauses.append(AlarmRecord.id.not_in(unsealed))
    return clauses


def device_items(
    session: Session, secret: bytes, device_id: str, item_ids: Iterable[str | None]
) -> list[str]:
    """Of the items an alarm's row (or its device's message rows) points at as its evidence, in order,
    those its device recorded, by an item row whose reach seal holds (``chain_of_custody.reach_seals``):
    those pointers are not under the alarm's seal, so an item pointed at by SQL (another site's clip)
    is neither linked into the alarm's incident nor shown as its payload."""
    wanted = list(dict.fromkeys(i for i in item_ids if i))
    if not wanted:
        return []
    reach = SiteReach(secret=secret)
    rows = session.scalars(
        select(EvidenceItem).where(EvidenceItem.id.in_(wanted), EvidenceItem.source_device_id == device_id)
    )
    own = {i.id for i in rows if reach.holds(i)}
    return [i for i in wanted if i in own]


def change_body(secret: bytes, scoped: bool, body: str) -> str | None:
    """A live stream change as sent (without the seal it was recorded with); None when a reader by
    site may not have it because the alarm it carries is not as the service sealed it."""
    change: dict[str, Any] = json.loads(body)
    recorded = "seal" in change  # changes recorded before seals carry none
    seal = change.pop("seal", None)
    raised = change.pop("raise", None)
    if isinstance(raised, dict):  # no note, position or payload a row altered in the database gave it
        change["alarm"] = vouched_view(
            secret, change["alarm"], bool(raised.get("provisional")), raised.get("seal")
        )
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
            a.get("incident_id"),
        ):
            return None
    return json.dumps(change) if recorded else body
