"""Who may see which incidents and which evidence: the rules as SQL clauses and yes/no checks.

Roles are checked first (a role that may never do something gets 403). Within a role, scope
decides: an incident or evidence item outside the caller's scope is reported as missing (404),
so that nobody learns that it exists.

- admin: everything.
- security_manager: incidents of their site; evidence linked to those, and footage of their site
  (worn by their site's staff or captured by their site's devices) so they can find and link it.
- investigator: incidents assigned to them, and the evidence linked to those.
- auditor: every evidence item's metadata and custody trail, never media, never incident records.
- operator: alarms only (the control room); no incidents, no evidence.

Items derived from an item (a redacted copy, a redaction record) are visible to whoever sees the
original.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    cast,
    column,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    true,
)
from sqlalchemy.orm import Session, aliased

from accounts.access import sees_site, site_scope, sites_seen
from chain_of_custody.alarm_seals import alarm_holds
from chain_of_custody.entries import CustodyAction, details_name, viewings_whole, withhold
from chain_of_custody.keys import ServiceKey
from chain_of_custody.models import CustodyEntry, EvidenceItem, named_alarm
from chain_of_custody.reach_seals import SiteReach, reach_secret, site_reach, staff_holds
from devices.models import Device, StaffMember

from .custody_links import ever_linked_on_custody
from .models import ExhibitReference, Incident, IncidentAssignment, IncidentLink

INCIDENT_READERS = ("admin", "security_manager", "investigator")
INCIDENT_WRITERS = ("admin", "security_manager", "investigator")
INCIDENT_MANAGERS = ("admin", "security_manager")  # assign investigators, legal holds
# Who may release a face unhidden: export original footage, or leave a person visible in a redacted
# copy (an exclusion), each with a stated reason recorded in custody.
ORIGINALS_RELEASERS = INCIDENT_MANAGERS
EVIDENCE_METADATA = ("admin", "security_manager", "investigator", "auditor")
EVIDENCE_MEDIA = ("admin", "security_manager", "investigator")
EVIDENCE_HOLDERS = ("admin", "security_manager")
EVIDENCE_DELETERS = ("admin",)
STATISTICS_READERS = ("admin", "security_manager", "auditor")
# The control room's view of alarms (``alarms.api``); investigators reach an alarm through an incident.
ALARM_READERS = ("admin", "security_manager", "operator", "auditor")
USER_ADMINS = ("admin",)
VERIFIERS = ("admin", "auditor")  # run the whole service's verification (``POST /api/v1/custody/verify``)
DERIVATION_DEPTH = 3  # original -> redacted copy -> redaction record, and one more


class Viewer(Protocol):
    """The caller as the rules need it (an ``accounts`` principal satisfies this)."""

    @property
    def user_id(self) -> int: ...

    @property
    def role(self) -> str: ...

    @property
    def site(self) -> str | None: ...

    @property
    def actor(self) -> str: ...

    @property
    def assignments(self) -> frozenset[int]: ...

    @property
    def reach(self) -> SiteReach: ...


def incident_scope(viewer: Viewer) -> ColumnElement[bool]:
    """A WHERE clause on ``Incident`` selecting the incidents the viewer may see.

    A security manager's incidents are those of their site whose row's seal holds, read the first
    time this request asks (``viewer.reach.incidents``, ``chain_of_custody.site_incidents``): the
    service seals an incident's site, wearer and window as it records them on custody, so an
    incident moved to their site in the database (or one whose window was set there) is not
    theirs. ``evidence verify`` names a broken seal (``incident_seal_broken``) and an incident whose
    site differs from its latest entry (``incident_site_altered``).

    An investigator's incidents are those of their active assignments whose seal held when they
    signed in for this request (``viewer.assignments``, ``accounts.seals.assignments_of``): a row
    planted or changed in the database opens nothing, and one ended since is read as it is now (in
    a write transaction acting for them, ``viewer.assignments`` is read again there and held:
    ``accounts.held_reach``)."""
    if viewer.role == "admin":
        return true()
    if viewer.role == "security_manager":
        return and_(site_scope(viewer, Incident.site), Incident.id.in_(sorted(viewer.reach.incidents)))
    if viewer.role == "investigator":
        return Incident.id.in_(
            select(IncidentAssignment.incident_id).where(
                IncidentAssignment.user_id == viewer.user_id,
                IncidentAssignment.unassigned_at.is_(None),
                IncidentAssignment.id.in_(sorted(viewer.assignments)),
            )
        )
    return false()


def visible_incident(
    session: Session, viewer: Viewer, key: str, *, for_update: bool = False
) -> Incident | None:
    """The incident by id or reference if the viewer may see it; None both when missing and when hidden."""
    if key.upper().startswith("INC-"):
        q = select(Incident).where(Incident.reference == key.upper())
    else:
        q = select(Incident).where(Incident.id == key)
    q = q.where(incident_scope(viewer))
    if for_update:
        q = q.with_for_update()
    return session.scalar(q)


# ``LINK_STEPS`` as literals, so the partial index on an item's link steps serves the look-up.
_STEP_ACTIONS: list[ColumnElement[Any]] = [literal_column("'linked'"), literal_column("'unlinked'")]


@cache
def link_on_custody() -> ColumnElement[bool]:
    """A WHERE clause on ``IncidentLink``: the ledger's latest ``linked``/``unlinked`` entry for the
    link's incident and item is the ``linked`` entry naming this row. A link row put in the database
    by hand (or a row un-unlinked, or moved to another incident) has none, and grants nothing.

    One look-up a link, in the item's link steps (``ix_custody_entries_link_steps``). It reads the
    entries' details as stored, without checking signatures: a forged entry to match a planted row
    breaks the signed chain, which ``evidence verify`` names."""
    return _latest_step_is_this_link(lambda step: step.item_id == IncidentLink.target_id)


@cache
def alarm_link_on_custody() -> ColumnElement[bool]:
    """:func:`link_on_custody` for a link of an alarm: an alarm is no evidence item, so its link
    steps are the ledger's own entries (of no item) naming the alarm and the incident
    (``service.link_target``). An alarm's link row moved to another incident by SQL (or planted
    there) has none: the alarm, its kind, status and wearer are not shown on that incident. The
    look-up reads that alarm's link steps, by the alarm their details name at the top, as the
    ledger's replay reads them (``ix_custody_entries_alarm_link_steps``): one search a link, not a
    scan of every alarm's link steps."""
    alarm_named = literal('"alarm":"') + IncidentLink.target_id + literal('"')
    return _latest_step_is_this_link(
        lambda step: and_(
            named_alarm(step.details) == IncidentLink.target_id,
            step.item_id.is_(None),
            step.details.contains(alarm_named),
        )
    )


@cache
def link_holds() -> ColumnElement[bool]:
    """A WHERE clause on ``IncidentLink``: the link, of evidence or of an alarm, is as the ledger
    recorded it (:func:`link_on_custody`, :func:`alarm_link_on_custody`). What an incident's view,
    timeline and export summary list of its links: a row moved or planted by SQL is listed nowhere."""
    return or_(
        and_(IncidentLink.target_kind == "evidence", link_on_custody()),
        and_(IncidentLink.target_kind == "alarm", alarm_link_on_custody()),
    )


def link_recorded(session: Session, link_id: int) -> bool:
    """Whether the link row is as the ledger recorded it (:func:`link_holds`): linking again over a
    row planted or revived by SQL would otherwise report it linked while custody says it is not."""
    return session.scalar(select(IncidentLink.id).where(IncidentLink.id == link_id, link_holds())) is not None


def _latest_step_is_this_link(names_target: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
    """Whether the latest link step (``linked``/``unlinked``) for the link's incident, among the
    entries ``names_target`` selects (given an alias of ``CustodyEntry``), is the ``linked`` entry
    naming this link row.

    The clause names no value of its own (it correlates with the link row of the query it is in),
    so each rule that uses it is built once per process and shared (``functools.cache``): a clause
    is immutable, and building its aliases and nested selects anew cost more than running it on an
    incident's links. Sharing one in several places of a statement (a scope nested by derivation)
    is as sound as several copies: each place correlates with its own enclosing link row."""
    step, last = aliased(CustodyEntry), aliased(CustodyEntry)
    incident_named = literal('"incident_id":"') + IncidentLink.incident_id + literal('"')
    link_named = literal('"link":') + cast(IncidentLink.id, String) + literal(",")
    latest = (
        select(func.max(step.seq))
        .where(names_target(step), step.action.in_(_STEP_ACTIONS), step.details.contains(incident_named))
        .correlate(IncidentLink)  # the link row of the query this clause is in, two levels out
        .scalar_subquery()
    )
    return exists(
        select(last.seq)
        .where(last.seq == latest, last.action == CustodyAction.LINKED, last.details.contains(link_named))
        .correlate(IncidentLink)
    )


def _own_evidence_scope(
    viewer: Viewer, item: type[EvidenceItem], distrusted: frozenset[str] = frozenset()
) -> ColumnElement[bool]:
    """Linked to an incident the viewer sees (the link as custody holds it), or, for a security
    manager, worn or recorded at their site: by a member of staff or a device of that site whose row's
    seal held when they signed in (``viewer.reach``, ``chain_of_custody.reach_seals``), and an item
    not in ``distrusted`` (items whose own seal does not hold: their wearer and device are not the
    service's). SQL cannot check an item's seal: :func:`reach_checked` does, on the rows returned.
    ``evidence verify`` also names a row that differs from its custody entry (``item_scope_altered``,
    ``staff_site_altered``, ``device_site_altered``) and a broken seal (``item_seal_broken``,
    ``staff_seal_broken``, ``device_seal_broken``)."""
    linked = select(IncidentLink.target_id).where(
        IncidentLink.target_kind == "evidence",
        IncidentLink.unlinked_at.is_(None),
        IncidentLink.incident_id.in_(select(Incident.id).where(incident_scope(viewer))),
        link_on_custody(),
    )
    clause: ColumnElement[bool] = item.id.in_(linked)
    if viewer.role == "security_manager" and viewer.site:
        by_site = of_reach(item, viewer.reach)
        if distrusted:
            by_site = and_(by_site, item.id.not_in(sorted(distrusted)))
        clause = or_(clause, by_site)
    return clause


def of_reach(item: type[EvidenceItem], reach: SiteReach) -> ColumnElement[bool]:
    """Worn by one of the reach's members of staff, or captured at its site (the wearer-and-camera
    rule; the item's own seal, which covers its site, is checked on the rows returned).

    Where it was captured is the site the item recorded then (``EvidenceItem.site``: its device's
    site at capture), not its device's site now: a device re-enrolled at another site takes none of
    its past items there. An item recorded before sites were kept has none, and is of the site of
    one of the reach's devices that recorded it, as before, until ``evidence upgrade-seals`` records
    its site (``chain_of_custody.capture_sites``)."""
    by_device: ColumnElement[bool] = and_(
        item.site.is_(None), item.source_device_id.in_(sorted(reach.devices))
    )
    clauses = [item.wearer.in_(sorted(reach.staff)), by_device]
    if reach.site is not None:
        clauses.append(item.site == reach.site)
    return or_(*clauses)


def _scope_with_ancestors(
    viewer: Viewer, item: type[EvidenceItem], depth: int, distrusted: frozenset[str] = frozenset()
) -> ColumnElement[bool]:
    clause = _own_evidence_scope(viewer, item, distrusted)
    if depth == 0:
        return clause
    parent = aliased(EvidenceItem)
    from_parent: ColumnElement[bool] = item.derived_from_id.in_(
        select(parent.id).where(_scope_with_ancestors(viewer, parent, depth - 1, distrusted))
    )
    if distrusted:  # an item whose seal does not hold has no original the service vouches for
        from_parent = and_(from_parent, item.id.not_in(sorted(distrusted)))
    return or_(clause, from_parent)


def _role_scope(viewer: Viewer) -> bool | None:
    """Whether the viewer may see every item (True) or none (False) by their role alone; None when
    the items' links and sites decide."""
    if viewer.role in ("admin", "auditor"):
        return True
    if viewer.role not in ("security_manager", "investigator"):
        return False
    return None


def evidence_scope(viewer: Viewer) -> ColumnElement[bool]:
    """A WHERE clause on ``EvidenceItem`` selecting the items the viewer may see (metadata), if every
    returned item's seal holds: the rows it returns go through :func:`reach_checked` before use."""
    by_role = _role_scope(viewer)
    if by_role is not None:
        return true() if by_role else false()
    return _scope_with_ancestors(viewer, EvidenceItem, DERIVATION_DEPTH)


def _distrusted(session: Session, reach: SiteReach, items: Sequence[EvidenceItem]) -> frozenset[str]:
    """The ids, among the items and the originals they derive from (``DERIVATION_DEPTH`` up), of
    those whose reach seal does not hold (a warning each)."""
    seen: dict[str, EvidenceItem] = {i.id: i for i in items}
    frontier = [i for i in items if i.derived_from_id]
    for _ in range(DERIVATION_DEPTH):
        wanted = {i.derived_from_id for i in frontier if i.derived_from_id and i.derived_from_id not in seen}
        if not wanted:
            break
        parents = list(session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(sorted(wanted)))))
        seen.update((p.id, p) for p in parents)
        frontier = [p for p in parents if p.derived_from_id]
    return frozenset(i.id for i in seen.values() if not reach.holds(i))


def reach_checked(session: Session, viewer: Viewer, items: Sequence[EvidenceItem]) -> list[EvidenceItem]:
    """The items, in order, that the viewer sees once each item's seal is checked: what an
    :func:`evidence_scope` query returned, before it is used. SQL cannot check an HMAC, so the scope
    trusts every row's wearer, device and original; here the seal of each item and of each original
    it derives from is checked, and when one does not hold (a warning names it) the items are asked
    again with the reach that row decides taken away, so only a link (on custody) still reaches it.
    Admins and auditors see every item whatever its row says; no other role by rows."""
    if _role_scope(viewer) is not None or not items:
        return list(items)
    distrusted = _distrusted(session, viewer.reach, items)
    if not distrusted:
        return list(items)
    ids = [i.id for i in items]
    kept = set(
        session.scalars(
            select(EvidenceItem.id).where(
                EvidenceItem.id.in_(ids),
                _scope_with_ancestors(viewer, EvidenceItem, DERIVATION_DEPTH, distrusted),
            )
        )
    )
    return [i for i in items if i.id in kept]


def can_see_evidence(session: Session, viewer: Viewer, item_id: str) -> bool:
    return visible_evidence(session, viewer, item_id) is not None


def visible_evidence(session: Session, viewer: Viewer, item_id: str) -> EvidenceItem | None:
    """The item if the viewer may see it; None both when missing and when hidden.

    The same rule as :func:`evidence_scope`, asked of one item the cheap way (every range a player
    asks for asks it): the item and the items it derives from (at most ``DERIVATION_DEPTH`` of them)
    by primary key, their seals checked, then whether any of them is within the viewer's own scope,
    one query with a list of at most four ids, where the scope's clause nests a query for each level
    of derivation. An item whose seal does not hold is within it by a link only, and an original
    is followed only from an item whose seal holds."""
    item = session.get(EvidenceItem, item_id)
    if item is None:
        return None
    by_role = _role_scope(viewer)
    if by_role is not None:
        return item if by_role else None
    chain, distrusted = [item], set[str]()
    while True:
        last = chain[-1]
        if not viewer.reach.holds(last):
            distrusted.add(last.id)
            break  # its original is not the service's to follow
        if last.derived_from_id is None or len(chain) > DERIVATION_DEPTH:
            break
        parent = session.get(EvidenceItem, last.derived_from_id)
        if parent is None:
            break
        chain.append(parent)
    own = _own_evidence_scope(viewer, EvidenceItem, frozenset(distrusted))
    within = session.scalar(
        select(EvidenceItem.id).where(EvidenceItem.id.in_([i.id for i in chain]), own).limit(1)
    )
    return item if within is not None else None


def visible_evidence_ids(session: Session, viewer: Viewer, item_ids: Iterable[str]) -> set[str]:
    """Which of ``item_ids`` the viewer may see: what a write may touch on the caller's behalf."""
    wanted = list(dict.fromkeys(item_ids))
    if not wanted:
        return set()
    rows = list(
        session.scalars(select(EvidenceItem).where(EvidenceItem.id.in_(wanted), evidence_scope(viewer)))
    )
    return {i.id for i in reach_checked(session, viewer, rows)}


def may_follow_wearer(session: Session, viewer: Viewer, wearer: str) -> bool:
    """Whether every clip of ``wearer`` (stored now or arriving later) is within the viewer's scope.

    An incident's footage window (``wearer`` with ``window_start``/``window_end``) links that wearer's
    clips as they arrive, with no one asking again: only a caller who may see all of that wearer's
    footage may set it (an admin, or a security manager of the wearer's site, the same wearer rule as
    ``_own_evidence_scope``: a member of staff of their site whose row's seal holds). Anyone else
    would be reaching footage through the incident.
    """
    if viewer.role == "admin":
        return True
    if viewer.role != "security_manager" or not viewer.site:
        return False
    return wearer in viewer.reach.staff


def sealed_staff_site(key: ServiceKey, member: StaffMember | None) -> str | None:
    """A member of staff's site while their row's seal holds (``chain_of_custody.reach_seals``),
    else None: what an incident of their footage is opened at when nothing else gives a site, so a
    site moved by SQL opens nothing for that site's managers to read."""
    if member is None or not member.site:
        return None
    return member.site if staff_holds(reach_secret(key), member.id, member.site, member.seal) else None


def window_reach(session: Session, key: ServiceKey, site: str | None) -> ColumnElement[bool]:
    """A WHERE clause on ``EvidenceItem``: the clips an incident of ``site`` may take in through its
    footage window (``wearer`` with ``window_start``/``window_end``), if the item's seal holds
    (:func:`window_items` checks it on the rows returned).

    The window names a wearer, and wearers move: a window set while the wearer worked at the
    incident's site must not keep following them to another one, where the footage belongs to that
    site. So a window takes in only what a security manager of the incident's site sees of the
    wearer by the same wearer-and-camera rule as :func:`_own_evidence_scope` (a member of staff of
    that site now, whose row's seal holds, or footage captured at that site: :func:`of_reach`), or
    footage of no site at all (captured at none, and neither the wearer nor the camera is a row with
    a site, or one whose seal holds without one: nobody's site is widened). Footage of another site is never linked by the window, whoever set it; it can still
    be linked by hand by someone who sees it.
    """
    reach = site_reach(session, key, site) if site else SiteReach()
    unsited = site_reach(session, key, None)
    no_site = and_(
        EvidenceItem.site.is_(None),  # an item captured at a site is that site's
        or_(
            EvidenceItem.wearer.is_(None),
            EvidenceItem.wearer.in_(sorted(unsited.staff)),
            ~EvidenceItem.wearer.in_(select(StaffMember.id)),
        ),
        or_(
            EvidenceItem.source_device_id.is_(None),
            EvidenceItem.source_device_id.in_(sorted(unsited.devices)),
            ~EvidenceItem.source_device_id.in_(select(Device.id)),
        ),
    )
    return or_(of_reach(EvidenceItem, reach), no_site)


def window_items(session: Session, key: ServiceKey, site: str | None, items: Iterable[str]) -> list[str]:
    """Which of the items (ids, in order) a window of an incident of ``site`` takes in: within
    :func:`window_reach`, and their row's seal holds (a wearer moved in the database is not followed)."""
    wanted = list(dict.fromkeys(items))
    if not wanted:
        return []
    reach = SiteReach(secret=reach_secret(key))
    rows = session.scalars(
        select(EvidenceItem).where(EvidenceItem.id.in_(wanted), window_reach(session, key, site))
    )
    kept = {i.id for i in rows if reach.holds(i)}
    return [i for i in wanted if i in kept]


def may_link_alarm(viewer: Viewer) -> bool:
    """Alarms are the control room's (``ALARM_READERS``); linking one into an incident puts its record
    (and through it the alarm's evidence) in front of the incident's readers, so only a caller who may
    read alarms links them."""
    return viewer.role in ALARM_READERS


# The alarm domain's table, by name and only the columns the rule needs (its site and what its seal
# covers): ``alarms`` sits above ``incidents`` in the layers, so this side reads the row rather than
# importing its model.
_ALARMS = table(
    "alarms",
    column("id", String),
    column("site", String),
    column("wearer", String),
    column("device_id", String),
    column("voice_memo_item_id", String),
    column("seal", String),
    column("incident_id", String),
)
# Export packages, by name: ``incidents.export`` builds on this module, so the rule reads its rows.
_EXPORTS = table("export_jobs", column("id", String), column("incident_id", String))


def sees_alarm(session: Session, viewer: Viewer, alarm_id: str) -> bool:
    """Whether the alarm exists and is the viewer's to read: a role that reads alarms, and the
    alarm's site among the viewer's (``accounts.access.sees_site``, the rule of the alarm routes),
    for a reader by site through a row whose seal holds (``alarms.reach``: a row moved to their site
    by SQL is not theirs). What a manual link of an alarm checks: another site's alarm is refused
    like a missing one."""
    if not may_link_alarm(viewer):
        return False
    a = _ALARMS.c
    q = select(a.id, a.site, a.wearer, a.device_id, a.voice_memo_item_id, a.seal, a.incident_id)
    q = q.where(a.id == alarm_id)
    row = session.execute(q).first()
    if row is None or not sees_site(viewer, row.site):
        return False
    return sites_seen(viewer) is None or alarm_holds(viewer.reach.secret, *row)


def reads_whole_trails(viewer: Viewer) -> bool:
    """Admins and auditors read every custody trail whole: the incidents an entry names (a link and
    its reason, a hold and its reason) are not withheld from them, though auditors open no incident."""
    return viewer.role in ("admin", "auditor")


def item_family(session: Session, item_ids: Iterable[str]) -> set[str]:
    """The items with their family: the originals they were derived from and everything derived from
    those (a redacted copy, its redaction record, another version), up to ``DERIVATION_DEPTH`` each way.

    A family shares its incidents: a copy inherits its original's links and holds, is packaged with
    it, and is given exhibit references in the original's incidents, so what one member's custody
    says of an incident may be said on any other member's."""
    family = set(item_ids)
    frontier = set(family)
    for _ in range(DERIVATION_DEPTH):  # up to the originals
        parents = set(
            session.scalars(
                select(EvidenceItem.derived_from_id).where(
                    EvidenceItem.id.in_(frontier), EvidenceItem.derived_from_id.is_not(None)
                )
            )
        )
        frontier = {p for p in parents if p is not None} - family
        if not frontier:
            break
        family |= frontier
    frontier = set(family)
    for _ in range(2 * DERIVATION_DEPTH):  # and down to everything made from them
        children = set(
            session.scalars(select(EvidenceItem.id).where(EvidenceItem.derived_from_id.in_(frontier)))
        )
        frontier = children - family
        if not frontier:
            break
        family |= frontier
    return family


def hidden_incident_markers(session: Session, viewer: Viewer, item_ids: Iterable[str]) -> set[str]:
    """What marks a custody entry as not the viewer's to read: the ids and references of the incidents
    the items' family (``item_family``) was ever tied to that the viewer may not see, and the ids of
    those incidents' export packages (an ``exported`` entry names its package only).

    An incident is tied to the family by a link (open or ended, by its row or by the member's
    custody: a row deleted in the database hides nothing less), an exhibit reference
    of any member, or a package of any member (a package is an item too). Admins and auditors see
    every trail whole."""
    if reads_whole_trails(viewer):
        return set()
    family = list(item_family(session, item_ids))
    if not family:
        return set()
    tied = (
        select(IncidentLink.incident_id)
        .where(IncidentLink.target_id.in_(family))
        .union(
            select(ExhibitReference.incident_id).where(ExhibitReference.item_id.in_(family)),
            select(_EXPORTS.c.incident_id).where(_EXPORTS.c.id.in_(family)),
        )
    )
    on_custody = sorted(ever_linked_on_custody(session, family))  # a link row deleted by SQL still ties
    rows = session.execute(
        select(Incident.id, Incident.reference).where(
            or_(Incident.id.in_(tied), Incident.id.in_(on_custody)), ~incident_scope(viewer)
        )
    ).all()
    markers = {m for row in rows for m in row}
    hidden_ids = [row.id for row in rows]
    if hidden_ids:
        markers |= set(session.scalars(select(_EXPORTS.c.id).where(_EXPORTS.c.incident_id.in_(hidden_ids))))
    return markers


def visible_incident_refs(session: Session, viewer: Viewer, refs: Iterable[str]) -> list[str]:
    """Which of the incident references the viewer may see, in the order given."""
    wanted = list(refs)
    if not wanted:
        return []
    seen = set(
        session.scalars(
            select(Incident.reference).where(Incident.reference.in_(wanted), incident_scope(viewer))
        )
    )
    return [r for r in wanted if r in seen]


def readable_retention(session: Session, viewer: Viewer, described: dict[str, Any]) -> dict[str, Any]:
    """An item's retention (``retention.describe``) as ``viewer`` may read it: only the incidents they
    may see are named (admins and auditors see every trail whole, so every incident)."""
    if reads_whole_trails(viewer):
        return described
    for key in ("open_incidents", "closed_incidents"):
        described[key] = visible_incident_refs(session, viewer, described[key])
    return described


HIDDEN_ENTRY = "concerns an incident you may not see"


def readable_trail(
    session: Session, viewer: Viewer | None, item_id: str, entries: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """An item's custody entries as ``viewer`` may read them: an entry that names an incident they
    may not see, or a package of one, keeps its place and hash but not its content
    (``entries.withhold``), as in an export package. The incidents are those of the item's whole
    family (``hidden_incident_markers``): a copy's trail names its original's incidents too.
    ``viewer`` None is the service itself (everything)."""
    markers = set() if viewer is None else hidden_incident_markers(session, viewer, [item_id])
    return _withhold_marked(entries, markers)


def readable_trails(
    session: Session, viewer: Viewer | None, trails: dict[str, Sequence[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Several items' trails at once (an incident's history): :func:`readable_trail` with the hidden
    incidents looked up once for all of them (an entry naming any of them is withheld)."""
    markers = set() if viewer is None else hidden_incident_markers(session, viewer, list(trails))
    return {item_id: _withhold_marked(entries, markers) for item_id, entries in trails.items()}


def _withhold_marked(entries: Sequence[dict[str, Any]], markers: set[str]) -> list[dict[str, Any]]:
    """Entries naming a marker withheld, and each viewing whole (``entries.viewings_whole``: within
    what is given, e.g. one page of a trail)."""
    out = [
        withhold(entry, HIDDEN_ENTRY) if details_name(entry, markers) else dict(entry) for entry in entries
    ]
    return viewings_whole(entries, out, HIDDEN_ENTRY)


QUARANTINE_RELEASERS = ("admin", "security_manager")


def may_release(viewer: Viewer, item: EvidenceItem, key: ServiceKey) -> bool:
    """Whether ``viewer`` may release the item's quarantine for review: an administrator, or a
    security manager of the site the item was captured at, as its row's seal vouches (a site
    written into the row by SQL lends it to no manager). ``chain_of_custody.quarantines`` says
    which quarantines may be released at all."""
    if viewer.role == "admin":
        return True
    return (
        viewer.role == "security_manager"
        and viewer.site is not None
        and item.site == viewer.site
        and SiteReach(secret=reach_secret(key)).holds(item)
    )
