"""Choosing what goes into an incident's package: which items, with media or withheld, and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from chain_of_custody import manifest as mf
from chain_of_custody.entries import CustodyAction, details_name, viewings_whole, withhold
from chain_of_custody.models import EvidenceItem

from ..access import Viewer, link_holds, visible_incident
from ..custody_links import ever_linked_on_custody
from ..models import Incident, IncidentLink

ORIGINAL_VIDEO_KINDS = frozenset({"clip"})
REDACTED_VIDEO_KIND = "redacted_clip"
REDACTION_RECORD_KIND = "redaction_record"
PACKAGE_KIND = "export"


class ExportError(Exception):
    """The package could not be made; nothing was recorded as exported."""


@dataclass(frozen=True)
class OriginalsPermission:
    """An authorised decision to include original (unredacted) footage, and why."""

    actor: str
    role: str
    reason: str


@dataclass(frozen=True)
class ExportRequest:
    export_id: str
    incident: dict[str, Any]
    actor: str
    retain_until: datetime
    originals: OriginalsPermission | None = None
    # Items gathered with the scope (an original of a linked redacted copy) that the requester may
    # not see: listed by hash so that derivations still check, never with their bytes or their story.
    outside: frozenset[str] = frozenset()
    # Item -> its exhibit reference in the incident (given by ``build_package`` before it reads custody).
    exhibits: Mapping[str, str] = field(default_factory=dict)
    # Actor -> "Name (role)" for the report's words (``continuity_record.people_names``).
    people: Mapping[str, str] = field(default_factory=dict)
    # Original clip -> the one redaction the package holds, fixed when it was asked for
    # (``pin_redactions``); None: each clip's latest (a package built outside a request).
    pins: Mapping[str, Pin] | None = None


@dataclass(frozen=True)
class PlannedItem:
    item: EvidenceItem
    include_media: bool
    withheld_reason: str | None = None
    # For a redacted copy (or its redaction record) that goes in: why this version of the clip
    # and no other (``pin_redactions``); the manifest states it.
    chosen: str | None = None


@dataclass(frozen=True)
class Pin:
    """The one redaction of an original clip a package holds (None: none), fixed when it is asked for."""

    item: str | None
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "why": self.why}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Pin:
        item = raw.get("item")
        return cls(item if isinstance(item, str) else None, str(raw.get("why") or ""))


CHOSEN = "chosen by the exporter when the export was asked for"


def pin_redactions(
    items: Sequence[EvidenceItem], chosen: Iterable[str], at: datetime | None
) -> dict[str, Pin]:
    """Original clip -> the redacted copy its package holds, fixed at request time ``at``: the copy the
    exporter named, else the latest made by then (``at`` None: the latest there is); never one made later, which the package lists as
    withheld rather than silently putting it in the chosen one's place. ``chosen`` names at most one
    redacted copy of each original (``ExportError`` otherwise)."""
    picked = set(chosen)
    by_original: dict[str, list[EvidenceItem]] = {}
    for it in sorted(items, key=lambda i: (i.created_at, i.id)):
        if it.kind == REDACTED_VIDEO_KIND and it.derived_from_id and it.status != "deleted":
            by_original.setdefault(it.derived_from_id, []).append(it)
    pins: dict[str, Pin] = {}
    for it in items:
        if it.kind not in ORIGINAL_VIDEO_KINDS:
            continue
        copies = by_original.get(it.id, [])
        named = [c for c in copies if c.id in picked]
        if len(named) > 1:
            raise ExportError(f"choose one redacted copy of {it.id}, not {', '.join(c.id for c in named)}")
        if named:
            pins[it.id] = Pin(named[0].id, CHOSEN)
            continue
        made = [c for c in copies if at is None or c.created_at <= at]
        when = "" if at is None else f" when the export was asked for ({at.isoformat()})"
        pins[it.id] = (
            Pin(made[-1].id, f"the latest redaction of the clip{when}")
            if made
            else Pin(None, f"no redacted copy of the clip{when}")
        )
    return pins


# -- choosing what goes in (pure) ---------------------------------------------------------------


def redaction_records(chains: Mapping[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Redaction record item -> the redacted video it describes, as its custody says."""
    out: dict[str, str] = {}
    for item_id, chain in chains.items():
        for e in chain:
            describes = (e.get("details") or {}).get("describes")
            if e.get("action") == CustodyAction.VERIFIED and isinstance(describes, str):
                out[item_id] = describes
    return out


OUTSIDE_REASON = "outside the requester's access; listed by its hash only"


def plan_package(
    items: Sequence[EvidenceItem],
    originals: OriginalsPermission | None,
    describes: Mapping[str, str] | None = None,
    outside: Iterable[str] = (),
    pins: Mapping[str, Pin] | None = None,
) -> list[PlannedItem]:
    """Which items' bytes go in and which are withheld (with the reason the manifest will state).

    A video goes in as the one redacted copy ``pins`` names for it (fixed when the export was asked
    for; see ``pin_redactions``), with the redaction record that describes that copy; without
    ``pins``, as its latest redacted copy. Every other redaction of the clip is withheld, saying
    which one the package holds. An original clip goes in only with ``originals``. Every other kind
    (alarm records, voice memos) goes in as stored. Withheld items keep their custody record in
    the package, so each redacted copy's original is still accounted for by hash.
    """
    describes = describes or {}
    outside = frozenset(outside)
    pins = dict(pins) if pins is not None else pin_redactions(items, (), None)
    held: dict[str, str | None] = {orig: pin.item for orig, pin in pins.items()}
    present = {i.id for i in items if i.status != "deleted" and i.id not in outside}
    plan: list[PlannedItem] = []
    for it in items:
        reason: str | None = None
        chosen: str | None = None
        if it.id in outside:
            reason = OUTSIDE_REASON
        elif it.status == "deleted":
            reason = "deleted under its retention class; its custody record remains"
        elif it.kind == PACKAGE_KIND:
            reason = "an earlier export package"
        elif it.kind in ORIGINAL_VIDEO_KINDS and originals is None:
            redacted = held.get(it.id)
            if redacted is None:
                reason = "original footage with no redacted copy chosen for this package"
            elif redacted in present:
                reason = f"original footage; its redacted copy {redacted} is included"
            else:  # the chosen copy is gone (deleted): no other takes its place
                reason = f"original footage; its chosen redacted copy {redacted} is no longer held"
        elif it.kind == REDACTED_VIDEO_KIND and it.derived_from_id:
            pin = pins.get(it.derived_from_id)
            if pin is None or pin.item != it.id:
                reason = (
                    f"not the redaction this package holds ({pin.item} is: {pin.why})"
                    if pin is not None and pin.item
                    else "no redaction of this clip was chosen when the export was asked for"
                )
            else:
                chosen = pin.why
        elif it.kind == REDACTION_RECORD_KIND and it.derived_from_id and it.id in describes:
            pin = pins.get(it.derived_from_id)
            if pin is None or pin.item != describes[it.id]:
                reason = f"describes the redaction {describes[it.id]}, not the one this package holds"
            else:
                chosen = pin.why
        plan.append(PlannedItem(it, reason is None, reason, chosen))
    return plan


# -- what of each custody chain belongs to this package (pure) ------------------------------------

FOREIGN = "belongs to another incident or package; its hash keeps the chain checkable"
VIEWING_PAIR = "the other step of a viewing withheld here; its hash keeps the chain checkable"
OUTSIDE_ENTRY = "the item is outside the requester's access; its hash keeps the chain checkable"


def own_chain(
    item_id: str,
    chain: Sequence[dict[str, Any]],
    export_id: str,
    foreign: Iterable[str],
    outside: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The item's custody chain as this package carries it: an entry that names another incident (its
    id or reference, e.g. a link and its free-text reason, a retention change caused by it, a legal
    hold on it) or another package is withheld (``entries.withhold``: hash and place kept, content
    not); so is every entry but ``stored`` of an item outside the requester's access."""
    other_exports = {
        str((e.get("details") or {}).get("export_id"))
        for e in chain
        if e.get("action") == CustodyAction.EXPORTED
        and (e.get("details") or {}).get("export_id") not in (None, export_id)
    }
    markers = [m for m in (*foreign, *other_exports) if m]
    hidden = item_id in frozenset(outside)
    out: list[dict[str, Any]] = []
    for e in chain:
        other_export = e.get("action") == CustodyAction.EXPORTED and (e.get("details") or {}).get(
            "export_id"
        ) not in (
            None,
            export_id,
        )
        if hidden and e.get("action") != CustodyAction.STORED:
            out.append(withhold(e, OUTSIDE_ENTRY))
        elif other_export or details_name(e, markers):
            out.append(withhold(e, FOREIGN))
        else:
            out.append(dict(e))
    return viewings_whole(chain, out, VIEWING_PAIR)


def gather_items(session: Session, item_ids: Iterable[str]) -> list[EvidenceItem]:
    """The scope's items, their derived copies (redactions) and the originals of any derived item."""
    wanted = list(dict.fromkeys(item_ids))
    found = {i.id: i for i in session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(wanted)))}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ExportError(f"evidence items not found: {', '.join(missing)}")
    for derived in session.scalars(select(EvidenceItem).where(EvidenceItem.derived_from_id.in_(list(found)))):
        found.setdefault(derived.id, derived)
    origins = {i.derived_from_id for i in found.values() if i.derived_from_id} - found.keys()
    while origins:
        for origin in session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(list(origins)))):
            found[origin.id] = origin
        origins = {i.derived_from_id for i in found.values() if i.derived_from_id} - found.keys()
    return sorted(found.values(), key=lambda i: (i.created_at, i.id))


def package_filename(incident: dict[str, Any], export_id: str) -> str:
    ref = str(incident.get("reference") or incident.get("id") or "incident")
    return mf.safe_filename(f"evidence-export-{ref}-{export_id[:8]}.zip", export_id, "application/zip")


# -- the one integration point with incidents ----------------------------------------------------


def incident_export_scope(
    session: Session, principal: Viewer, incident_id: str
) -> tuple[dict[str, Any], list[str]]:
    """The incident's summary for the manifest and the evidence items linked to it now.

    Raises LookupError when the incident does not exist or is outside the caller's scope (the two
    are not told apart). Alarms linked by their alarm id are listed in the summary; an alarm whose
    record is an evidence item under the same id is packaged as that item. Only links the custody
    record holds count (``access.link_holds``): a link row moved to this incident by SQL, or
    planted, neither names its alarm nor brings its item (not even by hash).
    """
    incident = visible_incident(session, principal, incident_id)
    if incident is None:
        raise LookupError("no such incident")
    links = session.execute(
        select(IncidentLink.target_kind, IncidentLink.target_id)
        .where(IncidentLink.incident_id == incident.id, IncidentLink.unlinked_at.is_(None), link_holds())
        .order_by(IncidentLink.linked_at, IncidentLink.id)
    ).all()
    evidence = [t for k, t in links if k == "evidence"]
    alarms = [t for k, t in links if k == "alarm"]
    alarm_items = (
        set(session.scalars(select(EvidenceItem.id).where(EvidenceItem.id.in_(alarms)))) if alarms else set()
    )
    summary = {
        "id": incident.id,
        "reference": incident.reference,
        "category": incident.category,
        "status": incident.status,
        "title": incident.title,
        "occurred_at": incident.occurred_at.isoformat(),
        "site": incident.site,
        "ward": incident.ward,
        "linked_alarms": alarms,
    }
    return summary, list(dict.fromkeys(evidence + [a for a in alarms if a in alarm_items]))


def foreign_markers(session: Session, item_ids: Iterable[str], incident_id: str | None) -> set[str]:
    """Ids and references of every incident the items were ever linked to, other than ``incident_id``,
    and of every other package that holds them: what marks a custody entry as not this package's."""
    ids = list(item_ids)
    by_row = select(IncidentLink.incident_id).where(
        IncidentLink.target_kind.in_(("evidence", "alarm")), IncidentLink.target_id.in_(ids)
    )
    on_custody = sorted(ever_linked_on_custody(session, ids))  # a link row deleted by SQL still marks
    rows = session.execute(
        select(Incident.id, Incident.reference).where(
            or_(Incident.id.in_(by_row), Incident.id.in_(on_custody))
        )
    ).all()
    return {m for row in rows if row[0] != incident_id for m in row}
