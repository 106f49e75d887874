"""Seals on incident rows over what decides who reads an incident and what its footage window links.

A security manager reads the incidents of their site and everything linked to them, and an
incident's footage window (a wearer, a start and an end) has the service link that wearer's clips
to it as they arrive. The custody ledger records the site and window (``incident_changed``,
``incidents.identity.record_site``), but only ``evidence verify`` compared: an incident moved to
another site by SQL was listed, streamed and exported to that site's managers, and a window or
wearer set by SQL had the service link clips itself, until someone ran it. So the service seals
the row as it records it, an HMAC-SHA256 under the reach secret (``reach_seals.reach_secret``) over
the incident's id, site, wearer, window start and window end (``incidents.seal``): a manager's
request reads the sealed incidents of their site when it first needs them (``SiteReach.incidents``,
``site_incidents``), and the window of an
incident whose seal does not hold links nothing.

Since version 2 the seal also covers the seq of the latest ``incident_changed`` entry on the
incident's keyed subject (:func:`incident_subject`), under a secret of its own
(``INCIDENT_SEALS_BOUND``): every such entry is written on that subject, so a copy of the row
taken before a later change (an incident moved from NORTH to SOUTH, put back at NORTH with the seal
that fitted then) is bound to an older entry than the latest and holds for nobody.

Incidents opened before seals have none, and incidents sealed before seals were bound to custody
hold a version 1 seal: ``evidence upgrade-seals`` (its ``seal-incidents`` step) seals those whose
site and window are what the ledger last recorded, each bound to a new entry. Tables are read as
plain tables: this sits below ``incidents``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ScalarSelect, bindparam, column, func, select, table, update
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .entries import ChainReport, CustodyAction, Problem, SignedEntry, entry_number, report_unsealed
from .keys import ServiceKey
from .ledger import Ledger
from .reach_seals import reach_secret
from .row_replay import incident_site_replay
from .row_seals import _ENTRIES, _holds, row_seal, seal_verdict
from .window_replay import window_record, window_replay

log = logging.getLogger(__name__)

_INCIDENTS = table(
    "incidents",
    column("id"),
    column("site"),
    column("wearer"),
    column("window_start", UTCDateTime),
    column("window_end", UTCDateTime),
    column("seal"),
)

# The label of the secret (derived from the reach secret) version 2 seals are made with: they cover
# the seq of the latest entry on the incident's subject too, so no version 1 seal holds as one.
INCIDENT_SEALS_BOUND = "incident seals v2: bound to the latest custody entry"
INCIDENT_PREFIX = "incident:"  # the subject of an incident's entries: this and 27 hex digits (36 characters)


@functools.lru_cache(maxsize=8)
def _bound_secret(secret: bytes) -> bytes:
    return hmac.new(secret, INCIDENT_SEALS_BOUND.encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=65536)
def incident_subject(secret: bytes, incident_id: str) -> str:
    """The ``item_id`` of every ``incident_changed`` entry about an incident (in order by
    ``item_seq``): keyed with the reach secret, 36 characters. The row's seal is bound to the
    latest, so only the row the service wrote with it fits, whatever an older copy says."""
    mac = hmac.new(secret, f"incident\x00{incident_id}".encode(), hashlib.sha256).hexdigest()
    return INCIDENT_PREFIX + mac[:27]


def incident_seal_v1(
    secret: bytes,
    incident_id: str,
    site: str | None,
    wearer: str | None,
    start: datetime | None,
    end: datetime | None,
) -> str:
    """The seal an incident row had before seals were bound to its latest custody entry: only an
    upgrade's adoption, the count of rows awaiting it and ``evidence verify`` read it."""
    return row_seal(secret, _values(incident_id, site, wearer, start, end))


def _values(
    incident_id: str, site: str | None, wearer: str | None, start: datetime | None, end: datetime | None
) -> tuple[str | None, ...]:
    window = window_record(wearer, start, end)
    return ("incident", incident_id, site, window["wearer"], window["start"], window["end"])


def incident_seal(
    secret: bytes,
    incident_id: str,
    site: str | None,
    wearer: str | None,
    start: datetime | None,
    end: datetime | None,
    bound: int | None,
) -> str:
    """The seal of an incident row over what decides who reads it and what its window links: its
    id, site, wearer and window (as ``window_record`` writes it on custody), and the seq of the
    latest entry on its subject (``bound``; None: none), hex."""
    values = _values(incident_id, site, wearer, start, end)
    return row_seal(_bound_secret(secret), (*values, None if bound is None else str(bound)))


def incident_holds(
    secret: bytes,
    incident_id: str,
    site: str | None,
    wearer: str | None,
    start: datetime | None,
    end: datetime | None,
    seal: str | None,
    bound: int | None,
) -> bool:
    """Whether an incident row's seal holds for its values and ``bound``, the seq of the latest
    entry on its subject; a warning naming the incident when it does not."""
    expected = incident_seal(secret, incident_id, site, wearer, start, end, bound)
    return seal_verdict(expected, seal, log, "incident", {"incident": incident_id})


def latest_incident_entry(session: Session, secret: bytes, incident_id: str) -> int | None:
    """The seq of the latest entry on the incident's subject (one probe of the index on
    ``(item_id, item_seq)``), or None."""
    found = session.scalar(
        select(_ENTRIES.c.seq)
        .where(_ENTRIES.c.item_id == incident_subject(secret, incident_id))
        .order_by(_ENTRIES.c.item_seq.desc())
        .limit(1)
    )
    return None if found is None else entry_number(found)  # (one SQL renumbered binds nothing)


def latest_incident_entries(session: Session, secret: bytes, incident_ids: Sequence[str]) -> dict[str, int]:
    """The seq of each incident's latest entry on its subject, by incident id, for rows read in
    bulk: one query per 500 incidents. An incident with none is left out."""
    subjects = {incident_subject(secret, i): i for i in incident_ids}
    found: dict[str, int] = {}
    e, listed = _ENTRIES.c, list(subjects)
    for start in range(0, len(listed), 500):
        q = select(e.item_id, func.max(e.seq)).where(e.item_id.in_(listed[start : start + 500]))
        for subject, seq in session.execute(q.group_by(e.item_id)):
            if entry_number(seq) is not None:  # (one SQL renumbered binds nothing: verify names it)
                found[subjects[str(subject)]] = seq
    return found


# The columns an incident's seal covers, in :func:`incident_holds`'s order, then the seal.
SEALED_COLUMNS = (
    _INCIDENTS.c.id,
    _INCIDENTS.c.site,
    _INCIDENTS.c.wearer,
    _INCIDENTS.c.window_start,
    _INCIDENTS.c.window_end,
    _INCIDENTS.c.seal,
)
# The seq of the latest entry on the subject named by the ``incident_subject`` parameter.
LATEST_ENTRY: ScalarSelect[Any] = (
    select(_ENTRIES.c.seq)
    .where(_ENTRIES.c.item_id == bindparam("incident_subject"))
    .order_by(_ENTRIES.c.item_seq.desc())
    .limit(1)
    .scalar_subquery()
)


def holding(session: Session, secret: bytes, rows: Iterable[Sequence[Any]]) -> set[str]:
    """Of ``rows`` (:data:`SEALED_COLUMNS` each), the ids of those whose seal holds for the latest
    entry on their subject, read in bulk (a warning for each other one)."""
    rows = list(rows)
    latest = latest_incident_entries(session, secret, [str(r[0]) for r in rows])
    out = set()
    for found, site, wearer, start, end, seal in rows:
        if incident_holds(secret, str(found), site, wearer, start, end, seal, latest.get(str(found))):
            out.add(str(found))
    return out


def sealed_incidents(session: Session, secret: bytes, site: str) -> frozenset[str]:
    """The ids of ``site``'s incidents whose seal holds (a warning for each other one): what a
    security manager of that site reads (``SiteReach.incidents``, ``site_incidents.SiteIncidents``)."""
    rows = session.execute(select(*SEALED_COLUMNS).where(_INCIDENTS.c.site == site))
    return frozenset(holding(session, secret, rows))


# -- evidence verify ------------------------------------------------------------------------------


def _every_latest(session: Session) -> dict[str, int]:
    """The seq of the latest entry on every incident subject, by subject (one query)."""
    e = _ENTRIES.c
    q = select(e.item_id, func.max(e.seq)).where(e.item_id.like(f"{INCIDENT_PREFIX}%")).group_by(e.item_id)
    # An entry SQL renumbered (SQLite keeps '5a') binds nothing: verify names it.
    return {str(subject): seq for subject, seq in session.execute(q) if entry_number(seq) is not None}


def check_incident_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each incident whose seal is wrong (no site's managers read it, its window links
    nothing): altered, planted, or an older copy of the row put back (its seal is bound to an older
    entry than the latest on its subject); a note counting the incidents not sealed yet, or sealed before seals were bound."""
    secret = reach_secret(key)
    latest = _every_latest(session)
    unsealed = older = 0
    for incident_id, site, wearer, start, end, seal in session.execute(
        select(*SEALED_COLUMNS).order_by("id")
    ):
        key_id = str(incident_id)
        bound = latest.get(incident_subject(secret, key_id))
        if not seal:
            unsealed += 1
        elif _holds(incident_seal(secret, key_id, site, wearer, start, end, bound), seal):
            continue
        elif _holds(incident_seal_v1(secret, key_id, site, wearer, start, end), seal):
            older += 1
        else:
            report.problems.append(
                Problem(
                    "incident_seal_broken",
                    f"incident {incident_id}",
                    "its row's seal does not hold: its site, wearer or footage window was written by "
                    "someone other than the service, or an older copy of the row was put back (no "
                    "site's managers read it, its window links nothing)",
                )
            )
    report_unsealed(
        report,
        unsealed,
        "incident(s) have no seal yet (opened before seals), so no site's managers read "
        "them and their windows link nothing: `evidence upgrade-seals` seals those the custody "
        "record bears out",
    )
    report_unsealed(
        report,
        older,
        "incident(s) have a seal made before seals were bound to custody, so no site's "
        "managers read them and their windows link nothing: `evidence upgrade-seals` seals those "
        "the custody record bears out again",
    )


# -- rows made before seals, or sealed before seals were bound ------------------------------------

UNSEALED = "opened before seals"
UNBOUND = "sealed before seals were bound to the latest custody entry"


@dataclass(frozen=True)
class UnsealedIncident:
    """An incident without a seal, or under a version 1 seal that holds, as ``evidence
    upgrade-seals`` lists it, with why it is not sealed (``refused``), if it is not."""

    incident_id: str
    site: str | None
    window: tuple[str | None, datetime | None, datetime | None]  # wearer, start, end
    refused: str | None
    seal: str | None = None  # the version 1 seal it holds, if any

    def line(self) -> str:
        wearer, start, end = self.window
        span = f"{start.isoformat()} to {end.isoformat()}" if start and end else "-"
        what = f"site {self.site or '-'}, wearer {wearer or '-'}, window {span}"
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"incident {self.incident_id}: {what}; {UNBOUND if self.seal else UNSEALED}; {verdict}"


def older_incidents(session: Session, secret: bytes, *, lock: bool = False) -> list[Sequence[Any]]:
    """The rows (:data:`SEALED_COLUMNS`) without a seal or under a version 1 seal that holds (one
    HMAC a sealed row), by id; ``lock``: locked for the rest of the transaction."""
    q = select(*SEALED_COLUMNS).order_by(_INCIDENTS.c.id)
    return [
        row
        for row in session.execute(q.with_for_update() if lock else q)
        if row[5] is None or _holds(incident_seal_v1(secret, str(row[0]), *row[1:5]), row[5])
    ]


def _refusal(key: str, site: str | None, window: dict[str, Any], sites: Any, windows: Any) -> str | None:
    if key not in sites:
        return "no custody entry records its site (run `evidence backfill-custody` first)"
    if sites[key][1] != site:
        return f"its site is {site!r} but custody entry #{sites[key][0]} says {sites[key][1]!r}"
    if key not in windows and any(v is not None for v in window.values()):
        return "no custody entry records its footage window (run `evidence backfill-custody` first)"
    if key in windows and windows[key][1] != window:
        return f"its footage window is {window} but custody entry #{windows[key][0]} says {windows[key][1]}"
    return None


def unsealed_incidents(
    session: Session, key: ServiceKey, entries: Iterable[SignedEntry], *, lock: bool = False
) -> list[UnsealedIncident]:
    """Every incident without a seal or under a version 1 seal that holds, each against the site
    and footage window its latest ``incident_changed`` entries record: a copy of the row from
    before a later change put back (under its version 1 seal, or none) is refused, as custody
    records the change."""
    secret = reach_secret(key)
    rows = older_incidents(session, secret, lock=lock)
    if not rows:
        return []
    entries = list(entries)
    sites, windows = incident_site_replay(entries), window_replay(entries)
    out = []
    for incident_id, site, wearer, start, end, seal in rows:
        found = str(incident_id)
        window = window_record(wearer, start, end)
        refused = _refusal(found, site, window, sites, windows)
        out.append(UnsealedIncident(found, site, (wearer, start, end), refused, seal))
    return out


def seal_incidents(session: Session, ledger: Ledger) -> list[UnsealedIncident]:
    """Seal the incidents :func:`unsealed_incidents` lists that the ledger bears out, as they stand
    (read under lock), each bound to a new ``incident_changed`` entry on its subject that records
    its site and window as sealed; all it listed."""
    secret = reach_secret(ledger.key)
    listed = unsealed_incidents(session, ledger.key, ledger.all_entries(session), lock=True)
    for found in listed:
        if found.refused:
            continue
        wearer, start, end = found.window
        details = {
            "incident_id": found.incident_id,
            "site": found.site,
            "window": window_record(wearer, start, end),
            "sealed": UNBOUND if found.seal else UNSEALED,
        }
        subject = incident_subject(secret, found.incident_id)
        entry = ledger.append(
            session, CustodyAction.INCIDENT_CHANGED, "service", item_id=subject, details=details
        )
        seal = incident_seal(secret, found.incident_id, found.site, wearer, start, end, entry.seq)
        c = _INCIDENTS.c
        held = c.seal.is_(None) if found.seal is None else c.seal == found.seal
        session.execute(update(_INCIDENTS).where(c.id == found.incident_id, held).values(seal=seal))
    return listed
