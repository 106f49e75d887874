"""Seals on alarm rows over what decides who reads an alarm and streams its voice memo.

An alarm is read by the control room of its site: a security manager lists it, opens it, follows it
on the live stream and plays its voice memo. So its site decides reach, and its voice memo item is
streamed to whoever reads it without asking whether they may see that item otherwise; its wearer
becomes the memo item's wearer and its device is what the alarm came from. The custody ledger
records the site and the memo (``registry_replay.alarm_replay``), but only ``evidence verify``
compared: an alarm moved to another site by SQL, or pointed at another site's clip as its memo,
was shown and streamed to that site's readers until someone ran it. So the service seals the row
as it records it, an HMAC-SHA256 under the reach secret (``reach_seals.reach_secret``) over the
alarm's id, site, wearer, device and voice memo item (``alarms.seal``), and where alarms are read
a row whose seal does not hold reaches no site's readers, and its memo nobody, with a warning.
Once the service opens or joins an incident for the alarm, the seal covers that incident too: a
later voice memo or cancel is linked into the incident the row names, so a row pointed at another
incident by SQL links nothing anywhere (``alarms.incident_links``).

Alarms raised before seals have none: ``evidence upgrade-seals`` (its ``seal-reach`` step) seals
those whose every sealed column (site, device, wearer, memo, incident) is what the ledger last
recorded of it. Tables are read as plain tables: this sits below ``alarms``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import column, select, table, update
from sqlalchemy.orm import Session

from .entries import ChainReport, Problem, SignedEntry, report_unsealed
from .keys import ServiceKey
from .reach_seals import reach_secret
from .registry_replay import alarm_replay
from .row_seals import _holds, row_seal, seal_verdict

log = logging.getLogger(__name__)

_ALARMS = table(
    "alarms",
    column("id"),
    column("site"),
    column("wearer"),
    column("device_id"),
    column("voice_memo_item_id"),
    column("incident_id"),
    column("seal"),
)


def alarm_seal(
    secret: bytes,
    alarm_id: str,
    site: str | None,
    wearer: str | None,
    device: str | None,
    memo: str | None,
    incident: str | None = None,
) -> str:
    """The seal of an alarm row over what decides who reads it, what its memo streams and where its
    later evidence is linked: its id, site, wearer, device, voice memo item and, once it has one,
    its incident (an alarm without one is sealed as before incidents were covered), hex."""
    values = ("alarm", alarm_id, site, wearer, device, memo)
    return row_seal(secret, values if incident is None else (*values, incident))


def alarm_holds(
    secret: bytes,
    alarm_id: str,
    site: str | None,
    wearer: str | None,
    device: str | None,
    memo: str | None,
    seal: str | None,
    incident: str | None = None,
) -> bool:
    """Whether an alarm row's seal holds; a warning naming the alarm when it does not."""
    expected = alarm_seal(secret, alarm_id, site, wearer, device, memo, incident)
    return seal_verdict(expected, seal, log, "alarm", {"alarm": alarm_id})


# -- evidence verify ------------------------------------------------------------------------------


def check_alarm_seals(session: Session, report: ChainReport, key: ServiceKey) -> None:
    """A finding for each alarm whose seal is wrong (it reaches no site's readers); a note counting
    the alarms not sealed yet."""
    secret = reach_secret(key)
    a = _ALARMS.c
    unsealed = 0
    q = select(a.id, a.site, a.wearer, a.device_id, a.voice_memo_item_id, a.incident_id, a.seal)
    for alarm_id, site, wearer, device, memo, incident, seal in session.execute(q.order_by(a.id)):
        if not seal:
            unsealed += 1
        elif not _holds(alarm_seal(secret, str(alarm_id), site, wearer, device, memo, incident), seal):
            report.problems.append(
                Problem(
                    "alarm_seal_broken",
                    f"alarm {alarm_id}",
                    "its row's seal does not hold: its site, wearer, device, voice memo or incident was "
                    "written by someone other than the service (it reaches no site's readers, its memo "
                    "nobody, and nothing more is linked to its incident)",
                )
            )
    report_unsealed(
        report,
        unsealed,
        "alarm(s) have no seal yet (raised before seals), so they reach no site's "
        "readers by their row: `evidence upgrade-seals` seals those the custody record bears out",
    )


# -- rows made before seals -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnsealedAlarm:
    """An alarm without a seal, as ``evidence upgrade-seals`` lists it, with why it is not sealed
    (``refused``), if it is not."""

    alarm_id: str
    values: tuple[
        str | None, str | None, str | None, str | None, str | None
    ]  # site, wearer, device, memo, incident
    refused: str | None

    def line(self) -> str:
        site, wearer, device, memo, incident = self.values
        what = f"site {site or '-'}, wearer {wearer or '-'}, device {device or '-'}, voice memo {memo or '-'}"
        what += f", incident {incident or '-'}"
        verdict = f"REFUSED: {self.refused}" if self.refused else "matches its custody record"
        return f"alarm {self.alarm_id}: {what}; {verdict}"


def unsealed_alarms(session: Session, entries: Iterable[SignedEntry]) -> list[UnsealedAlarm]:
    """Every alarm without a seal, each against what the ledger last recorded of every column its
    seal covers: its site, device and wearer (each when recorded), memo and the incident the
    service linked it to."""
    a = _ALARMS.c
    q = select(a.id, a.site, a.wearer, a.device_id, a.voice_memo_item_id, a.incident_id)
    rows = session.execute(q.where(a.seal.is_(None)).order_by(a.id)).all()
    if not rows:
        return []
    replay = alarm_replay(entries)
    out = []
    for alarm_id, site, wearer, device, memo, incident in rows:
        known = replay.get(str(alarm_id), {})
        refused = None
        if "site" not in known:
            refused = "no custody entry records its site (run `evidence backfill-custody` first)"
        elif known["site"][1] != site:
            refused = f"its site is {site!r} but custody entry #{known['site'][0]} says {known['site'][1]!r}"
        elif "device" in known and known["device"][1] != device:
            refused = f"its device is {device!r} but custody entry #{known['device'][0]} says {known['device'][1]!r}"
        elif "wearer" in known and known["wearer"][1] != wearer:
            refused = f"its wearer is {wearer!r} but custody entry #{known['wearer'][0]} says {known['wearer'][1]!r}"
        elif known.get("memo", (None, None))[1] != memo:
            refused = f"its voice memo is {memo!r}, not the item its custody record attaches"
        elif known.get("incident", (None, None))[1] != incident:
            refused = f"its incident is {incident!r}, not the one its custody record links it to"
        out.append(UnsealedAlarm(str(alarm_id), (site, wearer, device, memo, incident), refused))
    return out


def seal_alarms(session: Session, key: ServiceKey, entries: Iterable[SignedEntry]) -> list[UnsealedAlarm]:
    """Seal the alarms :func:`unsealed_alarms` lists that the ledger bears out, as they stand (a row
    changed since it was read keeps no seal); all it listed."""
    secret = reach_secret(key)
    listed = unsealed_alarms(session, entries)
    a = _ALARMS.c
    for found in listed:
        if found.refused:
            continue
        site, wearer, device, memo, incident = found.values
        same = [
            c.is_(None) if v is None else c == v
            for c, v in (
                (a.site, site),
                (a.wearer, wearer),
                (a.device_id, device),
                (a.voice_memo_item_id, memo),
                (a.incident_id, incident),
            )
        ]
        seal = alarm_seal(secret, found.alarm_id, site, wearer, device, memo, incident)
        session.execute(
            update(_ALARMS).where(a.id == found.alarm_id, a.seal.is_(None), *same).values(seal=seal)
        )
    return listed
