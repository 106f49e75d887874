"""Seals on incident rows over what decides who reads an incident and what its footage window links.

A security manager reads the incidents of their site and everything linked to them, and an
incident's footage window (a wearer, a start and an end) has the service link that wearer's clips
to it as they arrive. The custody ledger records the site and window (``incident_changed``,
``incidents.identity.record_site``), but only ``evidence verify`` compared: an incident moved to
another site by SQL was listed, streamed and exported to that site's managers, and a window or
wearer set by SQL had the service link clips itself, until someone ran it. So the service seals
the row as it records it, an HMAC-SHA256 under the reach secret (``reach_seals.reach_secret``) over
the incident's id, site, wearer, window start and window end (``incidents.seal``): a manager's
sign-in reads the sealed incidents of their site (``SiteReach.incidents``), and the window of an
incident whose seal does not hold links nothing.

Incidents opened before seals have none: ``evidence upgrade-seals`` (its ``seal-incidents`` step)
seals those whose site and window are what the ledger last recorded. Tables are read as plain
tables: this sits below ``incidents``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import column, select, table, update
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .entries import ChainReport, Problem, SignedEntry
from .keys import ServiceKey
from .reach_seals import reach_secret
from .row_replay import incident_site_replay
from .row_seals import _holds, row_seal, seal_verdict
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


def incident_seal(
    secret: bytes,
    incident_id: str,
    site: str | None,
    wearer: str | None,
    start: datetime | None,
    end: datetime | None,
) -> str:
    """The seal of an incident row over what decides who reads it and what its window links: its
    id, site, wearer and window (as ``window_record`` writes it on custody), hex."""
    window = window_record(wearer, start, end)
    return row_seal(secret, ("incident", incident_id, site, window["wearer"], window["start"], window["end"]))


def incident_holds(
    secret: bytes,
    incident_id: str,
    site: str | None,
    wearer: str | None,
    start: datetime | None,
    end: datetime | None,
    seal: str | None,
) -> bool:
    """Whether an incident row's seal holds; a warning naming the incident when it does not."""
    expected = incident_seal(secret, incident_id, site, wearer, start, end)
    return seal_verdict(expected, seal, log, "incident", {"incident": incident_id})


def sealed_incidents(session: Session, secret: bytes, site: str) -> frozenset[str]:
    """The ids of ``site``'s incidents whose seal holds (a warning for each other one): what a
    security manager of that site reads (``SiteReach.incidents``, ``accounts.seals.reach_of``)."""
    c = _INCIDENTS.c
    q = select(c.id, c.site, c.wearer, c.window_start, c.window_end, c.seal).where(c.site == site)
    return frozenset(
        str(row[0]) for row in session.execute(q) if incident_holds(secret, str(row[0]), *row[1:])
    )


# -- evidence verify ------------------------------------------------------------------------------


def check_incident_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each incident whose seal is wrong (no site's managers read it, its window links
    nothing); a note counting the incidents not sealed yet."""
    secret = reach_secret(key)
    c = _INCIDENTS.c
    unsealed = 0
    q = select(c.id, c.site, c.wearer, c.window_start, c.window_end, c.seal).order_by(c.id)
    for incident_id, site, wearer, start, end, seal in session.execute(q):
        if not seal:
            unsealed += 1
        elif not _holds(incident_seal(secret, str(incident_id), site, wearer, start, end), seal):
            report.problems.append(
                Problem(
                    "incident_seal_broken",
                    f"incident {incident_id}",
                    "its row's seal does not hold: its site, wearer or footage window was written by "
                    "someone other than the service (no site's managers read it, its window links nothing)",
                )
            )
    if unsealed:
        report.notes.append(
            f"{unsealed} incident(s) have no seal yet (opened before seals), so no site's managers read "
            "them and their windows link nothing: `evidence upgrade-seals` seals those the custody "
            "record bears out"
        )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedIncident:
    """An incident without a seal, as ``evidence upgrade-seals`` lists it, with why it is not sealed
    (``refused``), if it is not."""

    incident_id: str
    site: str | None
    window: tuple[str | None, datetime | None, datetime | None]  # wearer, start, end
    refused: str | None

    def line(self) -> str:
        wearer, start, end = self.window
        span = f"{start.isoformat()} to {end.isoformat()}" if start and end else "-"
        what = f"site {self.site or '-'}, wearer {wearer or '-'}, window {span}"
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"incident {self.incident_id}: {what}; {verdict}"


def unsealed_incidents(session: Session, entries: Iterable[SignedEntry]) -> list[UnsealedIncident]:
    """Every incident without a seal, each against the site and footage window its latest
    ``incident_changed`` entries record."""
    c = _INCIDENTS.c
    q = select(c.id, c.site, c.wearer, c.window_start, c.window_end).where(c.seal.is_(None))
    rows = session.execute(q.order_by(c.id)).all()
    if not rows:
        return []
    entries = list(entries)
    sites, windows = incident_site_replay(entries), window_replay(entries)
    out = []
    for incident_id, site, wearer, start, end in rows:
        key, refused = str(incident_id), None
        window = window_record(wearer, start, end)
        if key not in sites:
            refused = "no custody entry records its site (run `evidence backfill-custody` first)"
        elif sites[key][1] != site:
            refused = f"its site is {site!r} but custody entry #{sites[key][0]} says {sites[key][1]!r}"
        elif key not in windows and any(v is not None for v in window.values()):
            refused = "no custody entry records its footage window (run `evidence backfill-custody` first)"
        elif key in windows and windows[key][1] != window:
            refused = (
                f"its footage window is {window} but custody entry #{windows[key][0]} says {windows[key][1]}"
            )
        out.append(UnsealedIncident(key, site, (wearer, start, end), refused))
    return out


def seal_incidents(
    session: Session, key: ServiceKey, entries: Iterable[SignedEntry]
) -> list[UnsealedIncident]:
    """Seal the incidents :func:`unsealed_incidents` lists that the ledger bears out, as they stand
    (a row changed since it was read keeps no seal); all it listed."""
    secret = reach_secret(key)
    listed = unsealed_incidents(session, entries)
    c = _INCIDENTS.c
    for found in listed:
        if found.refused:
            continue
        wearer, start, end = found.window
        same = [
            col.is_(None) if v is None else col == v
            for col, v in (
                (c.site, found.site),
                (c.wearer, wearer),
                (c.window_start, start),
                (c.window_end, end),
            )
        ]
        seal = incident_seal(secret, found.incident_id, found.site, wearer, start, end)
        session.execute(
            update(_INCIDENTS).where(c.id == found.incident_id, c.seal.is_(None), *same).values(seal=seal)
        )
    return listed
