"""Seals on the rows that decide a security manager's reach, checked where reach is decided.

A security manager sees the footage worn by their site's staff and recorded by their site's
devices (``incidents.access``), and an item derived from another (a redacted copy, its record) is
seen by whoever sees that one. So a member of staff's site, a device's site, and an evidence item's
wearer, recording device and original decide who sees what. The custody ledger records each
(``registry_replay``, ``row_replay.item_scope_mac``), but only ``evidence verify`` compares: a row
moved by SQL (a nurse's site, a clip's wearer) would widen a manager's list, stream and export until
someone ran it. So the rows are sealed too, an HMAC-SHA256 under a secret derived from the service
key (``ServiceKey.derived_secret(REACH_SEALS)``), and a row whose seal does not hold widens nobody's
reach, with a warning naming it:

- members of staff (``staff``: staff number and site) and devices (their own seal,
  ``devices.seals``, covers the site): the sealed ones of a manager's site are read once a request,
  when they sign in (:func:`site_reach`, ``Principal.reach``), and the SQL scope uses those ids only;
- evidence items (``evidence_items.reach_seal``: id, wearer, device, original): SQL cannot check an
  HMAC, so the rows a scope returns are checked in Python (``incidents.access.reach_checked``), and
  one whose seal (or whose original's) does not hold is kept only if a link on custody reaches it.

Rows made before seals have none: ``evidence upgrade-seals`` (its ``seal-reach`` step) seals the
staff the ledger's latest ``staff_changed`` entry bears out, and the items whose ``stored`` entry
bears out their wearer, device and original (an item stored before the entry recorded a wearer and
device is sealed as it stands, its original still checked). Tables are read as plain tables: this
sits below ``devices``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import column, select, table, update
from sqlalchemy.orm import Session

from .entries import ChainReport, CustodyAction, Problem, SignedEntry, details_object, report_unsealed
from .keys import ServiceKey
from .models import EvidenceItem
from .registry_replay import staff_replay
from .row_replay import ITEM_SCOPE, item_scope_mac
from .row_seals import (
    _DEVICES,
    DEVICE_SEALS,
    _holds,
    device_seal,
    latest_device_entries,
    row_seal,
    seal_verdict,
)

REACH_SEALS = "reach seals v1"  # the label of the service key's secret for staff and evidence item seals

_STAFF = table("staff", column("id"), column("site"), column("seal"))
_ITEMS = table(
    "evidence_items",
    column("id"),
    column("wearer"),
    column("source_device_id"),
    column("derived_from_id"),
    column("reach_seal"),
    column("site"),
)


def staff_seal(secret: bytes, staff_id: str, site: str | None) -> str:
    """The seal of a member of staff's row: their staff number and the site whose managers see their
    footage, hex."""
    return row_seal(secret, ("staff", staff_id, site))


def staff_holds(secret: bytes, staff_id: str, site: str | None, seal: str | None) -> bool:
    """Whether a member of staff's row's seal holds (their site is the service's); a warning naming
    them when it does not."""
    return seal_verdict(staff_seal(secret, staff_id, site), seal, log, "member of staff", {"staff": staff_id})


def item_seal(
    secret: bytes,
    item_id: str,
    wearer: str | None,
    device: str | None,
    original: str | None,
    site: str | None = None,
) -> str:
    """The seal of an evidence item's row over what decides who sees it: its id, wearer, recording
    device and the item it was derived from, and its capture site when it has one (an item recorded
    before sites were kept has none, and its seal is as it was made), hex."""
    values: tuple[str | None, ...] = ("evidence item", item_id, wearer, device, original)
    return row_seal(secret, values if site is None else (*values, site))


def _no_incidents() -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True)
class SiteReach:
    """What a viewer's reach by site rests on, read when they sign in: their site, the members of
    staff and the devices of their site whose seal holds, the secret an item's seal is checked with (an empty one
    holds no seal: nothing reaches by a row), and how to read the incidents of their site whose
    seal holds (``site_incidents``: read when the request first asks, not at sign-in)."""

    staff: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    secret: bytes = field(default=b"", repr=False)
    site: str | None = None  # whose reach this is: an item captured there is theirs (``EvidenceItem.site``)
    sealed_incidents: Callable[[], frozenset[str]] = field(default=_no_incidents, compare=False, repr=False)

    @property
    def incidents(self) -> frozenset[str]:
        """The incidents of their site whose seal holds (``incident_seals``), read on first use."""
        return self.sealed_incidents()

    def item_holds(
        self,
        item_id: str,
        wearer: str | None,
        device: str | None,
        original: str | None,
        seal: str | None,
        site: str | None = None,
    ) -> bool:
        """Whether an item row's seal holds; a warning naming the item when it does not."""
        expected = item_seal(self.secret, item_id, wearer, device, original, site) if self.secret else ""
        return seal_verdict(expected, seal if expected else None, log, "evidence item", {"item": item_id})

    def holds(self, item: EvidenceItem) -> bool:
        """:meth:`item_holds` of an item's row."""
        return self.item_holds(
            item.id, item.wearer, item.source_device_id, item.derived_from_id, item.reach_seal, item.site
        )


log = logging.getLogger(__name__)


def reach_secret(key: ServiceKey) -> bytes:
    """The secret reach seals are made with, derived from the service key for this purpose alone."""
    return key.derived_secret(REACH_SEALS)


def site_reach(session: Session, key: ServiceKey, site: str | None) -> SiteReach:
    """The reach a security manager of ``site`` has by rows (``site`` None: the rows of no site, what
    any incident's footage window may take in): the members of staff and devices of that site whose
    seal holds, each other one refused with a warning."""
    return site_reach_by(session, reach_secret(key), key.derived_secret(DEVICE_SEALS), site)


def site_reach_by(session: Session, secret: bytes, devices_secret: bytes, site: str | None) -> SiteReach:
    """:func:`site_reach` with the secrets already derived (a sign-in's, ``accounts.seals``)."""
    s, d = _STAFF.c, _DEVICES.c
    staff = frozenset(
        str(staff_id)
        for staff_id, seal in session.execute(
            select(s.id, s.seal).where(s.site.is_(None) if site is None else s.site == site)
        )
        if staff_holds(secret, str(staff_id), site, seal)
    )
    q = select(
        d.id,
        d.kind,
        d.status,
        d.public_key,
        d.token_hash,
        d.broker_password_hash,
        d.site,
        d.assigned_staff_id,
        d.seal,
    ).where(d.site.is_(None) if site is None else d.site == site)
    rows = session.execute(q).all()
    bound = latest_device_entries(session, devices_secret, [str(r[0]) for r in rows]) if rows else {}
    devices = frozenset(
        str(row[0])
        for *row, seal in rows
        if seal_verdict(
            device_seal(
                devices_secret, (str(row[0]), str(row[1]), str(row[2]), *row[3:]), bound.get(str(row[0]))
            ),
            seal,
            log,
            "device",
            {"device": row[0]},
        )
    )
    return SiteReach(staff, devices, secret, site)


# -- evidence verify ------------------------------------------------------------------------------


def check_reach_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each member of staff and each evidence item whose seal is wrong (it widens no
    one's reach); a note counting the rows not sealed yet."""
    secret = reach_secret(key)
    unsealed = 0
    s = _STAFF.c
    for staff_id, site, seal in session.execute(select(s.id, s.site, s.seal).order_by(s.id)):
        if not seal:
            unsealed += 1
        elif not _holds(staff_seal(secret, str(staff_id), site), seal):
            report.problems.append(
                Problem(
                    "staff_seal_broken",
                    f"member of staff {staff_id}",
                    "their row's seal does not hold: their staff number or site was written by someone "
                    "other than the service (their footage reaches no site's managers by it)",
                )
            )
    i = _ITEMS.c
    q = select(i.id, i.wearer, i.source_device_id, i.derived_from_id, i.reach_seal, i.site).order_by(i.id)
    for item_id, wearer, device, original, seal, site in session.execute(q):
        if not seal:
            unsealed += 1
        elif not _holds(item_seal(secret, str(item_id), wearer, device, original, site), seal):
            report.problems.append(
                Problem(
                    "item_seal_broken",
                    f"evidence item {item_id}",
                    "its row's seal does not hold: its wearer, recording device, original or site was written by "
                    "someone other than the service (it reaches nobody by them, only through a link)",
                )
            )
    report_unsealed(
        report,
        unsealed,
        "member(s) of staff or evidence item(s) have no reach seal yet (made before seals), "
        "so they reach no site's managers by their row: `evidence upgrade-seals` seals those the "
        "custody record bears out",
    )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedReach:
    """A member of staff or an evidence item without a reach seal, as ``evidence upgrade-seals``
    lists it, with why it is not sealed (``refused``), if it is not."""

    kind: str  # "member of staff" | "evidence item"
    row_id: str
    what: str
    refused: str | None
    values: tuple[str | None, ...] = ()  # what was judged: the site; or the wearer, device and original

    def line(self) -> str:
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"{self.kind} {self.row_id}: {self.what}; {verdict}"


def _stored_details(session: Session, item_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """The 'stored' entry's details of each item (None: they are not a JSON object, edited by SQL)."""
    entries = table("custody_entries", column("item_id"), column("action"), column("details"))
    out: dict[str, dict[str, Any] | None] = {}
    for start in range(0, len(item_ids), 500):
        chunk = item_ids[start : start + 500]
        for item_id, details in session.execute(
            select(entries.c.item_id, entries.c.details).where(
                entries.c.action == CustodyAction.STORED, entries.c.item_id.in_(chunk)
            )
        ):
            out[str(item_id)] = details_object(details)
    return out


def _unsealed_staff(session: Session, entries: Iterable[SignedEntry]) -> Iterator[UnsealedReach]:
    s = _STAFF.c
    rows = session.execute(select(s.id, s.site).where(s.seal.is_(None)).order_by(s.id)).all()
    if not rows:
        return
    replay = staff_replay(entries)
    for staff_id, site in rows:
        known = replay.get(str(staff_id))
        refused = None
        if known is None:
            refused = "no custody entry adds them (run `evidence backfill-custody` first)"
        elif "site" in known and known["site"][1] != site:
            seq, recorded = known["site"]
            refused = f"their site is {site!r} but custody entry #{seq} says {recorded!r}"
        yield UnsealedReach("member of staff", str(staff_id), f"site {site or '-'}", refused, (site,))


def _unsealed_items(session: Session, scope_secret: bytes) -> Iterator[UnsealedReach]:
    i = _ITEMS.c
    q = select(i.id, i.wearer, i.source_device_id, i.derived_from_id).where(i.reach_seal.is_(None))
    rows = session.execute(q.order_by(i.id)).all()
    stored = _stored_details(session, [str(r[0]) for r in rows])
    for item_id, wearer, device, original in rows:
        rec = stored.get(str(item_id))
        what = f"wearer {wearer or '-'}, device {device or '-'}, original {original or '-'}"
        refused = None
        if str(item_id) not in stored:
            refused = "no 'stored' custody entry records it"
        elif rec is None:
            refused = "its 'stored' custody entry cannot be read (its details are not a JSON object)"
        elif rec.get("derived_from") != original:
            refused = f"its original is {original!r} but its 'stored' entry says {rec.get('derived_from')!r}"
        elif "scope_mac" in rec and rec["scope_mac"] != item_scope_mac(scope_secret, wearer, device):
            refused = "its wearer or recording device is not what its 'stored' custody entry records"
        elif "scope_mac" not in rec:
            what += " (stored before its wearer and device were recorded: sealed as it stands)"
        yield UnsealedReach("evidence item", str(item_id), what, refused, (wearer, device, original))


def unsealed_reach(session: Session, key: ServiceKey, entries: Iterable[SignedEntry]) -> list[UnsealedReach]:
    """Every member of staff and evidence item without a reach seal, each against the custody ledger."""
    return [*_unsealed_staff(session, entries), *_unsealed_items(session, key.derived_secret(ITEM_SCOPE))]


def seal_reach(session: Session, key: ServiceKey, entries: Iterable[SignedEntry]) -> list[UnsealedReach]:
    """Seal the rows :func:`unsealed_reach` lists that the ledger bears out, as they stand; all it
    listed, those not sealed with the reason (``refused``)."""
    secret = reach_secret(key)
    listed = unsealed_reach(session, key, entries)
    s, i = _STAFF.c, _ITEMS.c
    for found in listed:
        if found.refused:
            continue
        # Sealed only as judged: a row changed since it was read keeps no seal.
        if found.kind == "member of staff":
            (site,) = found.values
            same = s.site.is_(None) if site is None else s.site == site
            seal = staff_seal(secret, found.row_id, site)
            session.execute(update(_STAFF).where(s.id == found.row_id, same).values(seal=seal))
        else:
            wearer, device, original = found.values
            same_item = [
                c.is_(None) if v is None else c == v
                for c, v in ((i.wearer, wearer), (i.source_device_id, device), (i.derived_from_id, original))
            ]
            seal = item_seal(secret, found.row_id, wearer, device, original)
            session.execute(update(_ITEMS).where(i.id == found.row_id, *same_item).values(reach_seal=seal))
    return listed
