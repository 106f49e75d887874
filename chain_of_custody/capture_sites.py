"""Capture sites for the evidence items recorded before items kept one (migration 0047): ``evidence
upgrade-seals`` (its ``seal-capture-sites`` step).

Since 0047 an item keeps the site it was captured under (``evidence_items.site``, covered by its
reach seal), and a security manager's reach by device reads that (``incidents.access.of_reach``).
An item recorded before has none, and its reach by device follows its device's site now: an
administrator who re-enrols a camera or a lone-worker device at another site gives that site's
managers every such item of the device. The migration had no key to seal a site with.

The step takes each item without a site whose recording device is known and whose reach seal
holds as it stands (over no site: sealed before 0047), and gives it the site the custody ledger
bears out, read from entries that hold (hash and service signature):

- an item: its device's site when the item's ``stored`` entry was written, the ledger's device
  entries replayed in seq order up to it (``registry_replay.device_replay``'s reading: an
  enrolment sets the site, or leaves it unknown when it records none; a change that records one
  sets it), as the service reads its camera's site when it records a clip now;
- an alarm's payload or voice memo: the site its alarm's entries record (an entry naming it as the
  alarm's payload or memo ties it to the alarm), as the service takes the alarm's sealed site now;
  its device's, as above, when no alarm entry names it (a cancel's payload) or records a site;
- a derived item (a redacted copy, its record): its original's, as a new one takes it
  (``redaction.worker``): the site this step finds for the original, or the original's own when
  its seal holds.

It writes the site, and seals the row again over it (``reach_seals.item_seal``), only where the row
is still as judged (no site, and the wearer, device, original and seal that were read). It refuses,
with the reason on the item's line, an item whose reach seal does not hold, whose ``stored`` entry
is missing, unreadable or not as the service signed it, or whose device's site then the ledger does
not record (no enrolment before it, or one from before sites were recorded). An item whose device
was at no site then, by the ledger, is not listed: a new one is kept so too, and follows its device.

Its first run with ``--yes`` appends a ``capture_sites_recorded`` entry. Until then the items
without a site are counted among the seals awaiting upgrade (``awaiting_upgrade``: one ``COUNT``),
and from then on none are: the refused ones, some of which no record will ever settle, are listed
by the step each time it runs instead of holding the banner up for good. Tables are read as plain
tables: this sits below ``devices``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session

from .entries import CustodyAction, SignedEntry, details_object
from .keys import ServiceKey
from .lifecycle_seals import ENTRY_COLUMNS, entry_holds
from .models import CustodyEntry
from .reach_seals import item_seal, reach_secret
from .row_seals import _holds

if TYPE_CHECKING:
    from .ledger import Ledger

_ITEMS = table(
    "evidence_items",
    column("id"),
    column("kind"),
    column("wearer"),
    column("source_device_id"),
    column("derived_from_id"),
    column("reach_seal"),
    column("site"),
)
_DEVICE_ACTIONS = (CustodyAction.DEVICE_ENROLLED, CustodyAction.DEVICE_CHANGED)
_ALARM_ACTIONS = (CustodyAction.ALARM_RAISED, CustodyAction.ALARM_CHANGED)
_ALARM_KINDS = ("alarm", "voice_memo")  # an alarm's payload, its voice memo


@dataclass(frozen=True)
class UnsitedItem:
    """An item without a capture site, as ``evidence upgrade-seals`` lists it: the site the ledger
    bears out and what says so, unless ``refused``."""

    item_id: str
    kind: str
    device: str
    site: str | None
    source: str
    refused: str | None
    values: tuple[str | None, ...] = ()  # as judged: its wearer, device, original and reach seal

    def line(self) -> str:
        said = f"evidence item {self.item_id} ({self.kind}, device {self.device})"
        if self.refused:
            return f"{said}: REFUSED: {self.refused}"
        return f"{said}: captured at {self.site} ({self.source})"


@dataclass(frozen=True)
class _Found:
    site: str | None = None  # None and not refused: captured at no site, left as it is
    source: str = ""
    refused: str | None = None


@dataclass(frozen=True)
class _Said:
    """A device entry that holds and sets the device's site: ``known`` False for an enrolment that
    records none (made before sites were recorded)."""

    seq: int
    site: str | None
    known: bool


def _site_of(d: dict[str, Any]) -> tuple[str | None, bool]:
    site = d.get("site")
    return (site, True) if "site" in d and (site is None or isinstance(site, str)) else (None, False)


class _Ledger:
    """What the entries that hold say of the items judged: each one's ``stored`` entries, their
    devices' sites in seq order, and the alarm that names each alarm item, with its site."""

    def __init__(self, entries: Iterable[SignedEntry], public: bytes, rows: dict[str, Any]) -> None:
        self.public = public
        devices = {str(r.source_device_id) for r in rows.values()}
        alarm_items = {i for i, r in rows.items() if r.kind in _ALARM_KINDS}
        self.stored: dict[str, list[SignedEntry]] = {}
        self.devices: dict[str, list[_Said]] = {}
        self.named: dict[str, str] = {}  # an alarm item -> its alarm
        alarms: dict[str, list[tuple[SignedEntry, dict[str, Any]]]] = {}
        for e in entries:
            action = e.body.action
            if action == CustodyAction.STORED and e.body.item_id in rows:
                self.stored.setdefault(e.body.item_id, []).append(e)
            elif action in _DEVICE_ACTIONS:
                self._device(e, devices)
            elif action in _ALARM_ACTIONS and alarm_items:
                d = details_object(e.body.details) or {}
                alarm = d.get("alarm_id")
                if not isinstance(alarm, str):
                    continue
                alarms.setdefault(alarm, []).append((e, d))
                for item in (e.body.item_id, d.get("voice_memo"), d.get("payload")):
                    if isinstance(item, str) and item in alarm_items and item not in self.named:
                        if entry_holds(public, e):
                            self.named[item] = alarm
        self.alarm_sites: dict[str, _Said] = {}
        for alarm in set(self.named.values()):
            for e, d in reversed(alarms[alarm]):
                site, known = _site_of(d)
                if known and entry_holds(public, e):
                    self.alarm_sites[alarm] = _Said(e.body.seq, site, True)
                    break

    def _device(self, e: SignedEntry, wanted: set[str]) -> None:
        d = details_object(e.body.details) or {}
        device = d.get("device")
        if not isinstance(device, str) or device not in wanted or not entry_holds(self.public, e):
            return
        said = self.devices.get(device)
        site, known = _site_of(d)
        if e.body.action == CustodyAction.DEVICE_ENROLLED:
            self.devices.setdefault(device, []).append(_Said(e.body.seq, site, known))
        elif said is not None and known:  # a change of a device the ledger enrolled
            said.append(_Said(e.body.seq, site, True))

    def stored_seq(self, item_id: str) -> int | str:
        """The seq of the item's ``stored`` entry, or why there is none to go by."""
        found = self.stored.get(item_id, [])
        if not found:
            return "no 'stored' custody entry records it"
        if all(details_object(e.body.details) is None for e in found):
            return "its 'stored' custody entry cannot be read (its details are not a JSON object)"
        for e in found:
            if entry_holds(self.public, e):
                return e.body.seq
        return f"its 'stored' custody entry #{found[0].body.seq} is not as the service signed it"

    def device_site(self, device: str, seq: int) -> _Found:
        """The device's site as the ledger last set it before entry ``seq``."""
        said = self.devices.get(device, [])
        before = bisect_left([s.seq for s in said], seq)
        if not before:
            return _Found(refused=f"no custody entry enrols device {device} before it was stored (#{seq})")
        last = said[before - 1]
        if not last.known:
            return _Found(
                refused=f"device {device}'s enrolment (custody entry #{last.seq}) records no site: "
                "enrolled before sites were recorded"
            )
        return _Found(last.site, f"its device's site by custody entry #{last.seq}")


class _Judge:
    """Each item's capture site, an original's found before the items derived from it."""

    def __init__(self, session: Session, secret: bytes, ledger: _Ledger, rows: dict[str, Any]) -> None:
        self.session, self.secret, self.ledger, self.rows = session, secret, ledger, rows
        self.found: dict[str, _Found] = {}
        self.judging: set[str] = set()

    def __call__(self, item_id: str) -> _Found:
        if item_id not in self.found:
            if item_id in self.judging:
                return _Found(refused="its originals lead back to it")
            self.judging.add(item_id)
            self.found[item_id] = self._judge(self.rows[item_id])
            self.judging.discard(item_id)
        return self.found[item_id]

    def _judge(self, row: Any) -> _Found:
        item_id, device = str(row.id), str(row.source_device_id)
        seal = item_seal(self.secret, item_id, row.wearer, device, row.derived_from_id)
        if not _holds(seal, row.reach_seal):
            return _Found(
                refused="its reach seal does not hold: its wearer, device, original or site was "
                "written outside the service"
            )
        seq = self.ledger.stored_seq(item_id)
        if isinstance(seq, str):
            return _Found(refused=seq)
        if row.derived_from_id is not None:
            return self._original(str(row.derived_from_id))
        alarm = self.ledger.named.get(item_id)
        said = self.ledger.alarm_sites.get(alarm) if alarm is not None else None
        if said is not None:
            return _Found(said.site, f"its alarm {alarm}'s site by custody entry #{said.seq}")
        return self.ledger.device_site(device, seq)

    def _original(self, original: str) -> _Found:
        """A derived item's site: its original's, as found here or as its sealed row keeps it."""
        if original in self.rows:
            found = self(original)
            if found.refused:
                return _Found(refused=f"its original {original} is refused (see its line)")
            return _Found(found.site, f"its original {original}'s, {found.source}")
        i = _ITEMS.c
        q = select(i.wearer, i.source_device_id, i.derived_from_id, i.reach_seal, i.site).where(
            i.id == original
        )
        row = self.session.execute(q).first()
        if row is None:
            return _Found(refused=f"its original {original} is not in the database")
        seal = item_seal(
            self.secret, original, row.wearer, row.source_device_id, row.derived_from_id, row.site
        )
        if not _holds(seal, row.reach_seal):
            return _Found(refused=f"its original {original}'s reach seal does not hold")
        return _Found(row.site, f"its original {original}'s")


def _rows(session: Session) -> dict[str, Any]:
    i = _ITEMS.c
    q = select(i.id, i.kind, i.wearer, i.source_device_id, i.derived_from_id, i.reach_seal).where(
        i.site.is_(None), i.source_device_id.is_not(None), i.reach_seal.is_not(None)
    )
    return {str(r.id): r for r in session.execute(q.order_by(i.id))}


def unsited_items(session: Session, key: ServiceKey, entries: Iterable[SignedEntry]) -> list[UnsitedItem]:
    """Every item without a capture site whose device is known and which has a reach seal (the
    others are ``seal-reach``'s first), with the site the ledger bears out or why not; those
    captured at no site, by the ledger, are left out."""
    rows = _rows(session)
    if not rows:
        return []
    judge = _Judge(session, reach_secret(key), _Ledger(entries, key.public_raw, rows), rows)
    listed = []
    for item_id, row in rows.items():
        found = judge(item_id)
        if found.site is None and found.refused is None:
            continue
        values = (row.wearer, row.source_device_id, row.derived_from_id, row.reach_seal)
        listed.append(
            UnsitedItem(
                item_id,
                str(row.kind),
                str(row.source_device_id),
                found.site,
                found.source,
                found.refused,
                values,
            )
        )
    return listed


def capture_sites_recorded(session: Session, public: bytes) -> int | None:
    """The ``capture_sites_recorded`` entry that holds (its seq), once the step has run; else None."""
    q = select(*ENTRY_COLUMNS).where(CustodyEntry.action == CustodyAction.CAPTURE_SITES_RECORDED.value)
    for entry in session.execute(q.order_by(CustodyEntry.seq)):
        if entry_holds(public, entry):
            return int(entry.seq)
    return None


def awaiting_capture_sites(session: Session, public: bytes) -> int:
    """How many items await the step: those without a site whose device is known and which have a
    reach seal, none once it has run."""
    if capture_sites_recorded(session, public) is not None:
        return 0
    i = _ITEMS.c
    q = select(func.count()).select_from(_ITEMS)
    q = q.where(i.site.is_(None), i.source_device_id.is_not(None), i.reach_seal.is_not(None))
    return int(session.scalar(q) or 0)


def record_capture_sites(
    session: Session, key: ServiceKey, ledger: Ledger, entries: Iterable[SignedEntry]
) -> list[UnsitedItem]:
    """Write the site :func:`unsited_items` finds, and seal each row again over it, where the row is
    still as judged (one changed since it was read is left as it is); all it listed. The first run
    appends a ``capture_sites_recorded`` entry: from then on no item awaits the step."""
    listed = unsited_items(session, key, entries)
    secret, i = reach_secret(key), _ITEMS.c
    for found in listed:
        if found.refused or found.site is None:
            continue
        wearer, device, original, seal = found.values
        same = [
            c.is_(None) if v is None else c == v
            for c, v in ((i.wearer, wearer), (i.source_device_id, device), (i.derived_from_id, original))
        ]
        sealed = item_seal(secret, found.item_id, wearer, device, original, found.site)
        session.execute(
            update(_ITEMS)
            .where(i.id == found.item_id, i.site.is_(None), i.reach_seal == seal, *same)
            .values(site=found.site, reach_seal=sealed)
        )
    if capture_sites_recorded(session, key.public_raw) is None:
        recorded = sum(1 for found in listed if not found.refused)
        details = {"recorded": recorded, "refused": len(listed) - recorded}
        ledger.append(session, CustodyAction.CAPTURE_SITES_RECORDED, "service", details=details)
    return listed
