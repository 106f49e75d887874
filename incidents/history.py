"""An incident's whole history as one reader may see it: its own events and its evidence's custody,
a page at a time.

The incident's own lines (when it happened, created, changed, assigned, links and unlinks with their
reasons, the evidence and alarms linked now) are joined with the custody
entries of every evidence item linked to it now or before, and of the copies derived from them
(redaction versions, redaction records): views and downloads, redactions, exports, legal holds,
retention changes; and the custody of the incident's export packages (each an item of its own): the
package requested (its ``export_requested`` entry, of no item: the package is an item once built),
built, each download link issued to its recipient, each download through a link, each link
revoked. Only items the reader may see now are followed (``access.visible_evidence_ids``:
an unlinked item an investigator no longer sees keeps its unlink line but shows nothing after it),
only packages they read as the incident's (``grants.export_job_read_as_its_incidents``, as its
disclosure log reads them; a package's list of items names only those they see), and an entry that
names an incident the reader may not see is withheld exactly as ``GET /evidence/{id}/custody``
withholds it (``access.readable_trail``).

An item read a few hundred thousand times (ranged reads) has that many custody entries, so neither
the history nor the timeline is ever read whole: each line has a place in one total order (its time,
then its source, then its row's number), and a page is the ``limit`` lines after a :class:`Place`
(``after``), read by keyset from each source and merged. The next page starts after the last line
of this one (``Place.text``, the ``after=`` of the API's ``Link: ...; rel="next"``).

The API (``GET /api/v1/incidents/{id}/history`` and ``/timeline``, which answer the same) and the
console's timeline page all call :func:`history_page`; there is no other reading of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true
from sqlalchemy.orm import Session

from chain_of_custody.canonical import rfc3339
from chain_of_custody.entries import CustodyAction
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry, EvidenceItem

from .access import Viewer, alarm_link_on_custody, link_on_custody, readable_trails, visible_evidence_ids
from .custody_links import ever_linked_to
from .export.models import ExportJob, ExportLink
from .grants import export_job_read_as_its_incidents
from .models import Incident, IncidentEvent, IncidentLink

# The steps of an item's arrival other than "stored": its "stored" line (digest, size) tells the arrival.
ARRIVAL_STEPS = frozenset({"captured", "received", "verified"})
OWN_EVENTS = frozenset({"linked", "unlinked"})  # of this incident: told by its own timeline
# A package's arrival: its "exported" line (package built, with its hashes) tells it.
PACKAGE_ARRIVAL = ARRIVAL_STEPS | {"stored"}
# What in a package's entries names the items it holds or withholds (a list of ids, a list of media
# each naming its item, ids to reasons; a download's "viewed" entry lists the items its bytes held):
# only the items the reader sees are named.
PACKAGE_ITEM_LISTS = ("included", "media", "withheld", "items_read")
MAX_ITEMS = 5000  # items followed for one incident (links and the copies derived from them)
HISTORY_PAGE = 1000
"""Lines of a history or timeline page by default (the API's page, the console's page)."""
HISTORY_PAGE_MAX = 5000

# The sources of lines, in the order lines of one instant are told.
OCCURRED, EVENT, EVIDENCE, ALARM, CUSTODY = range(5)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLACE = re.compile(r"^(\d{1,19})-([0-4])-(\d{1,19})$")
AFTER_PATTERN = r"^(\d{1,19}-[0-4]-\d{1,19})?$"  # a place, or empty (from the start)


@dataclass(frozen=True, order=True)
class Place:
    """Where a line stands in an incident's history: its time (microseconds since 1970), its
    source, and its row's number within that source (an event's id, a link's id, a custody entry's
    ledger number). Every line has one, and no two lines share one."""

    micros: int
    source: int
    number: int

    @classmethod
    def of(cls, at: datetime, source: int, number: int) -> Place:
        return cls((at.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1), source, number)

    @classmethod
    def parse(cls, text: str) -> Place | None:
        """The place an ``after=`` names; None for an empty one (from the start). A malformed one
        raises ``ValueError`` (the route's pattern refuses it first)."""
        if not text:
            return None
        m = _PLACE.match(text)
        if m is None:
            raise ValueError("not a place in a history")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    @property
    def text(self) -> str:
        return f"{self.micros}-{self.source}-{self.number}"

    @property
    def at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.micros)


def _after(
    at: Any, number: Any, source: int, place: Place | None, at_value: Any = None
) -> ColumnElement[bool]:
    """The rows of ``source`` that come after ``place``, as a condition on their time and number."""
    if place is None:
        return true()
    when = place.at if at_value is None else at_value
    if source > place.source:
        return at >= when
    if source < place.source:
        return at > when
    return or_(at > when, and_(at == when, number > place.number))


Line = tuple[Place, dict[str, Any]]


def _own_lines(session: Session, incident: Incident, place: Place | None, n: int) -> list[Line]:
    """At most ``n`` of the incident's own lines after ``place``, in order (each source read by keyset)."""
    lines: list[Line] = []
    occurred = Place.of(incident.occurred_at, OCCURRED, 0)
    if place is None or occurred > place:
        lines.append(
            (
                occurred,
                {
                    "at": incident.occurred_at,
                    "kind": "occurred",
                    "actor": None,
                    "details": {"category": incident.category},
                },
            )
        )
    for ev in session.scalars(
        select(IncidentEvent)
        .where(
            IncidentEvent.incident_id == incident.id, _after(IncidentEvent.at, IncidentEvent.id, EVENT, place)
        )
        .order_by(IncidentEvent.at, IncidentEvent.id)
        .limit(n)
    ):
        lines.append(
            (
                Place.of(ev.at, EVENT, ev.id),
                {"at": ev.at, "kind": ev.kind, "actor": ev.actor, "details": json.loads(ev.details)},
            )
        )
    recorded = func.coalesce(EvidenceItem.captured_start, EvidenceItem.created_at)
    for link, item in session.execute(
        select(IncidentLink, EvidenceItem)
        .join(EvidenceItem, EvidenceItem.id == IncidentLink.target_id)
        .where(
            IncidentLink.incident_id == incident.id,
            IncidentLink.target_kind == "evidence",
            IncidentLink.unlinked_at.is_(None),
            link_on_custody(),  # as custody holds it: a row moved here or planted by SQL tells nothing
            _after(recorded, IncidentLink.id, EVIDENCE, place),
        )
        .order_by(recorded, IncidentLink.id)
        .limit(n)
    ):
        at = item.captured_start or item.created_at
        lines.append(
            (
                Place.of(at, EVIDENCE, link.id),
                {
                    "at": at,
                    "kind": f"evidence:{item.kind}",
                    "actor": None,
                    "details": {
                        "item_id": item.id,
                        "status": item.status,
                        "wearer": item.wearer,
                        "device": item.source_device_id,
                        "captured_start": item.captured_start,
                        "captured_stop": item.captured_stop,
                        "sha256": item.sha256,
                        "linked_by": link.linked_by,
                        "reason": link.reason,
                    },
                },
            )
        )
    for link in session.scalars(
        select(IncidentLink)
        .where(
            IncidentLink.incident_id == incident.id,
            IncidentLink.target_kind == "alarm",
            IncidentLink.unlinked_at.is_(None),
            alarm_link_on_custody(),
            _after(IncidentLink.linked_at, IncidentLink.id, ALARM, place),
        )
        .order_by(IncidentLink.linked_at, IncidentLink.id)
        .limit(n)
    ):
        lines.append(
            (
                Place.of(link.linked_at, ALARM, link.id),
                {
                    "at": link.linked_at,
                    "kind": "alarm",
                    "actor": None,
                    "details": {
                        "alarm_id": link.target_id,
                        "linked_by": link.linked_by,
                        "reason": link.reason,
                    },
                },
            )
        )
    lines.sort(key=lambda line: line[0])
    return lines[:n]


def _family(session: Session, roots: list[str]) -> dict[str, str]:
    """Every item derived from ``roots`` (breadth first, a few generations): item -> its root."""
    root_of = {r: r for r in roots}
    frontier = list(roots)
    for _ in range(3):
        if not frontier or len(root_of) >= MAX_ITEMS:
            break
        children = session.execute(
            select(EvidenceItem.id, EvidenceItem.derived_from_id).where(
                EvidenceItem.derived_from_id.in_(frontier)
            )
        ).all()
        frontier = []
        for child, parent in children:
            if child not in root_of and parent is not None:
                root_of[child] = root_of[parent]
                frontier.append(child)
    return root_of


def _entry(row: CustodyEntry) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "id": row.id,
        "at": row.at,
        "action": row.action,
        "actor": row.actor,
        "item_id": row.item_id,
        "item_seq": row.item_seq,
        "details": json.loads(row.details),
        "prev_hash": row.prev_hash,
        "item_prev_hash": row.item_prev_hash,
        "key_id": row.key_id,
        "entry_hash": row.entry_hash,
        "signature": row.signature,
    }


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _entries_after(
    session: Session, item_ids: Sequence[str], place: Place | None, n: int, seqs: Sequence[int] = ()
) -> list[CustodyEntry]:
    """At most ``n`` custody entries of ``item_ids`` (and the entries numbered ``seqs``, of no item)
    after ``place``, in order (time, then ledger number). A custody entry's time is RFC 3339 text of
    fixed width, so it orders and compares as text."""
    when = rfc3339(place.at) if place is not None else None
    chunks = [CustodyEntry.item_id.in_(item_ids[i : i + 500]) for i in range(0, len(item_ids), 500)]
    chunks += [CustodyEntry.seq.in_(seqs[i : i + 500]) for i in range(0, len(seqs), 500)]
    found: list[CustodyEntry] = []
    for chunk in chunks:
        found += session.scalars(
            select(CustodyEntry)
            .where(chunk, _after(CustodyEntry.at, CustodyEntry.seq, CUSTODY, place, when))
            .order_by(CustodyEntry.at, CustodyEntry.seq)
            .limit(n)
        )
    found.sort(key=lambda row: (row.at, row.seq))
    return found[:n]


def _packages(session: Session, viewer: Viewer | None, key: ServiceKey, incident: Incident) -> list[str]:
    """The incident's export packages the reader reads as its, as its disclosure log reads them
    (``grants.export_job_read_as_its_incidents``: a package moved to it by SQL is not); every one
    for the service itself. A package is an item with its job's id once built."""
    jobs = session.scalars(
        select(ExportJob)
        .where(ExportJob.incident_id == incident.id)
        .order_by(ExportJob.created_at, ExportJob.id)
        .limit(MAX_ITEMS)
    )
    return [j.id for j in jobs if viewer is None or export_job_read_as_its_incidents(key, viewer.role, j)]


def _requests(session: Session, incident: Incident, packages: set[str]) -> dict[int, str]:
    """The ``export_requested`` custody entry of each of ``packages`` (an entry of no item: the package
    is an item only once built), by its ledger number: seq -> the package's id. Found as the builder
    finds it (``export.jobs.request_refusal``: by action, then the job's id in the details), and
    kept only when it asks for that package for this incident."""
    ordered = sorted(packages)
    found: dict[int, str] = {}
    for start in range(0, len(ordered), 100):
        chunk = ordered[start : start + 100]
        rows = session.execute(
            select(CustodyEntry.seq, CustodyEntry.details).where(
                CustodyEntry.action == CustodyAction.EXPORT_REQUESTED,
                CustodyEntry.item_id.is_(None),
                or_(*(CustodyEntry.details.contains(f'"export":{json.dumps(p)}') for p in chunk)),
            )
        )
        for seq, text in rows:
            try:
                details = json.loads(text)
            except ValueError:
                continue
            if (
                isinstance(details, dict)
                and details.get("export") in packages
                and details.get("incident_id") == incident.id
            ):
                found[int(seq)] = str(details["export"])
    return found


def _item_named(entry: Any) -> str | None:
    if isinstance(entry, dict):
        item = entry.get("item")
        return item if isinstance(item, str) else None
    return entry if isinstance(entry, str) else None


def _package_items_seen(session: Session, viewer: Viewer | None, details: dict[str, Any]) -> dict[str, Any]:
    """A package's entry naming only the items the reader sees among those it holds or withholds (a
    package was built for its requester's access, not every reader's), as ``GET /exports/{id}`` does."""
    if viewer is None or not any(details.get(k) for k in PACKAGE_ITEM_LISTS):
        return details
    named = [
        i
        for k in PACKAGE_ITEM_LISTS
        for i in (_item_named(e) for e in (details.get(k) or []))
        if i is not None
    ]
    seen = visible_evidence_ids(session, viewer, named)
    out = dict(details)
    for k in PACKAGE_ITEM_LISTS:
        value = details.get(k)
        if isinstance(value, dict):
            out[k] = {i: v for i, v in value.items() if i in seen}
        elif isinstance(value, list):
            out[k] = [e for e in value if _item_named(e) in seen]
    return out


def _recipients(session: Session, packages: set[str], rows: Sequence[CustodyEntry]) -> dict[str, str]:
    """The recipient of each link that a package's downloads among ``rows`` came through (the download's
    actor is ``link:<id>``), as the disclosure log names them: link id -> recipient."""
    links = {
        r.actor.removeprefix("link:") for r in rows if r.item_id in packages and r.actor.startswith("link:")
    }
    if not links:
        return {}
    found = session.execute(
        select(ExportLink.id, ExportLink.recipient).where(
            ExportLink.id.in_(sorted(links)), ExportLink.export_id.in_(sorted(packages))
        )
    )
    return {link_id: recipient for link_id, recipient in found}


def _custody_lines(
    session: Session,
    viewer: Viewer | None,
    key: ServiceKey,
    incident: Incident,
    place: Place | None,
    n: int,
) -> list[Line]:
    """At most ``n`` custody lines of the incident's evidence (and its copies) and of its export
    packages, after ``place``."""
    ever_linked = list(
        dict.fromkeys(
            session.scalars(
                select(IncidentLink.target_id)
                .where(IncidentLink.incident_id == incident.id, IncidentLink.target_kind == "evidence")
                .order_by(IncidentLink.id)
                .limit(MAX_ITEMS)
            )
        )
    )
    on_custody = ever_linked_to(session, incident.id, ever_linked)  # a row planted or moved by SQL: not
    root_of = _family(session, [i for i in ever_linked if i in on_custody])
    ids = list(root_of)
    if viewer is not None:
        allowed = visible_evidence_ids(session, viewer, ids)
        ids = [i for i in ids if i in allowed]
    packages = set(_packages(session, viewer, key, incident)) - set(ids)
    for package in sorted(packages):
        root_of[package] = package
        ids.append(package)
    if not ids:
        return []
    kinds: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        for item_id, kind in session.execute(
            select(EvidenceItem.id, EvidenceItem.kind).where(EvidenceItem.id.in_(ids[start : start + 500]))
        ):
            kinds[item_id] = kind
    for package in packages:
        kinds.setdefault(package, "export")  # asked for, not built yet: no item of its own so far
    # Each package's request (who asked for it, and when): an entry of no item, told as the package's.
    requested = _requests(session, incident, packages)
    request_seqs = sorted(requested)
    lines: list[Line] = []
    while len(lines) < n:
        rows = _entries_after(session, ids, place, n, request_seqs)
        if not rows:
            break
        place = Place.of(_at(rows[-1].at), CUSTODY, rows[-1].seq)
        told = [
            r for r in rows if r.action not in (PACKAGE_ARRIVAL if r.item_id in packages else ARRIVAL_STEPS)
        ]
        recipients = _recipients(session, packages, told)
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in told:
            grouped.setdefault(row.item_id or requested.get(row.seq, ""), []).append(_entry(row))
        # Withheld entry by entry, in the order given (``readable_trails`` keeps each item's order).
        readable = {k: iter(v) for k, v in readable_trails(session, viewer, dict(grouped.items())).items()}
        for row in told:
            item_id = row.item_id or requested.get(row.seq, "")
            entry = next(readable[item_id])
            action = entry.get("action") or ""
            if action in OWN_EVENTS and (entry.get("details") or {}).get("incident_id") == incident.id:
                continue  # the incident's own "linked"/"unlinked" line says it already, with the reason
            details = entry.get("details") or {}
            if (item_id in packages or kinds.get(item_id) == "export") and not entry.get("withheld"):
                details = _package_items_seen(session, viewer, details)
            actor = entry.get("actor")
            lines.append(
                (
                    Place.of(_at(row.at), CUSTODY, row.seq),
                    {
                        "at": _at(row.at),
                        "kind": f"custody:{action}" if action else "custody:withheld",
                        "actor": actor,
                        "details": details,
                        "item_id": item_id,
                        "item_kind": kinds.get(item_id),
                        "root_id": root_of[item_id],
                        "withheld": entry.get("withheld"),
                        "entry_hash": row.entry_hash,
                        "recipient": recipients.get(str(actor or "").removeprefix("link:"))
                        if item_id in packages and str(actor or "").startswith("link:")
                        else None,
                    },
                )
            )
        if len(rows) < n:
            break
    return lines[:n]


@dataclass(frozen=True)
class HistoryPage:
    """Lines in order, and where the next page starts (None: this was the last)."""

    rows: list[dict[str, Any]]
    next_after: str | None


def _page(lines: list[Line], limit: int) -> HistoryPage:
    lines.sort(key=lambda line: line[0])
    more = len(lines) > limit
    return HistoryPage([row for _, row in lines[:limit]], lines[limit - 1][0].text if more else None)


def history_page(
    session: Session, viewer: Viewer | None, incident: Incident, after: str, limit: int, *, key: ServiceKey
) -> HistoryPage:
    """The incident's own lines and the custody of its evidence and its export packages, oldest
    first, as ``viewer`` may read them: the ``limit`` lines after ``after`` (a :attr:`Place.text`;
    empty: from the start). ``key`` checks each package's seal (``grants.export_job_seal_holds``).

    Each line: ``at``, ``kind`` (the incident event, or ``custody:<action>``), ``actor``, ``details``,
    and for custody lines ``item_id``, ``root_id`` (the linked item it belongs to, or the package
    itself), ``withheld``, and for a package's download the ``recipient`` of the link it came through.
    ``viewer`` None is the service itself (everything)."""
    place = Place.parse(after)
    lines = _own_lines(session, incident, place, limit + 1)
    lines += _custody_lines(session, viewer, key, incident, place, limit + 1)
    return _page(lines, limit)
