"""An alarm's place in an incident: a red alarm opens one or joins its wearer's recent one, and the
alarm's evidence (its payload, a cancel, a voice memo) is linked to it.

Footage of the wearer from around the alarm is linked when the incident is opened or joined
(``incidents.service.open_or_join_incident_for_wearer``); footage arriving later is linked by the
clip hook the application installs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from chain_of_custody.ledger import Ledger
from chain_of_custody.models import EvidenceItem
from chain_of_custody.raise_seals import message_key
from chain_of_custody.reach_seals import reach_secret
from chain_of_custody.registry_replay import ALARM_SERVICE
from devices.seals import device_seal_key
from incidents.service import (
    IncidentDraft,
    create_incident,
    link_alarm,
    link_evidence,
    open_or_join_incident_for_wearer,
)

from .models import AlarmRecord, LoneWorkerEvent
from .payloads import raise_named
from .reach import device_items

log = logging.getLogger(__name__)

SERVICE_ACTOR = ALARM_SERVICE  # the ledger's replay knows the alarm's own incident by it
INCIDENT_CATEGORY = "lone_worker_alarm"


class IncidentLinks:
    def __init__(self, ledger: Ledger, join_window: timedelta) -> None:
        self.ledger = ledger
        self.join_window = join_window
        self.secret = reach_secret(ledger.key)  # evidence items' reach seals (``alarms.reach.device_items``)
        # What a device's stored message is checked with (``raise_seals.message_key``).
        self.message_keys = (device_seal_key(ledger.key), ledger.key.public_raw)

    def open_incident(
        self,
        session: Session,
        row: AlarmRecord,
        now: datetime,
        sealed: bool = True,
        reseal: Callable[[AlarmRecord], None] | None = None,
    ) -> None:
        """A red alarm opens an incident, or joins the wearer's recent one of the alarm's own site
        (never another site's: its readers would see this alarm and its evidence, and this alarm's
        readers that incident). An alarm of no site (its device's row lent none: its seal does not
        hold) joins none: it opens one of its own, at its wearer's site as a device of no site's
        alarm does. An alarm whose row the service did not seal as it stands (``sealed`` False:
        moved by SQL) opens one of its own at no site, with only its device's messages' items: its
        site, wearer and memo reach nobody. ``reseal`` seals the row over its incident as soon as it
        is set (one write of the row)."""
        if row.incident_id is not None:
            return
        at = min(row.occurred_at, row.raised_at)
        wearer, site = (row.wearer, row.site) if sealed else (None, None)
        if wearer:
            incident, _ = open_or_join_incident_for_wearer(
                session,
                self.ledger,
                wearer,
                at,
                INCIDENT_CATEGORY,
                site,
                SERVICE_ACTOR,
                self.join_window,
                now=now,
                join=site is not None,
            )
        else:  # a device nobody is assigned to: an incident of its own, nobody's footage to link
            incident = create_incident(
                session,
                IncidentDraft(
                    category=INCIDENT_CATEGORY,
                    occurred_at=at,
                    site=site or "unknown",
                    title=f"Lone-worker alarm from device {row.device_id}",
                ),
                SERVICE_ACTOR,
                now=now,
                ledger=self.ledger,
            )
        row.incident_id = incident.id
        if reseal is not None:
            reseal(row)
        reason = f"{row.kind} alarm from {row.device_id}"
        link_alarm(session, self.ledger, incident.id, row.id, SERVICE_ACTOR, reason, now=now)
        for item_id in _alarm_items(session, row, sealed, self.secret, self.message_keys):
            self.link(session, row, item_id, "alarm evidence", sealed)
        log.info("alarm linked to incident", extra={"alarm": row.id, "incident": incident.reference})

    def link(self, session: Session, row: AlarmRecord, item_id: str | None, what: str, sealed: bool) -> None:
        """Link one item of the alarm's evidence to its incident, if it has one, and only the incident
        a row the service sealed names (``sealed``: its seal, which covers the incident, holds): a
        row pointed at another incident by SQL links nothing anywhere."""
        if row.incident_id is None or item_id is None:
            return
        if not sealed:
            log.warning(
                "alarm evidence not linked: the alarm's row is not as the service sealed it",
                extra={"alarm": row.id, "item": item_id},
            )
            return
        link_evidence(
            session,
            self.ledger,
            row.incident_id,
            item_id,
            SERVICE_ACTOR,
            f"{what} of alarm {row.id} ({row.kind})",
        )


def _alarm_items(
    session: Session, row: AlarmRecord, sealed: bool, secret: bytes, keys: tuple[bytes, bytes]
) -> list[str]:
    """The alarm's evidence: its payload, its memo (from a sealed row) and its messages' items, those
    its device recorded only (``alarms.reach.device_items``). A message is the alarm's by what its
    device signed, not by its row's ``alarm_id`` (no seal's: written by SQL, it could name any
    alarm): a row of the alarm's device whose bytes, vouched for by the device's key
    (``raise_seals.message_key``, ``keys``: the device rows' seal secret and the custody key), raise
    or cancel the alarm's raise, and whose item is its device's record of those bytes."""
    items = [row.evidence_item_id, row.voice_memo_item_id if sealed else None]
    source = row.source_event_id
    if source is None:  # the service's own alarm: no device message raised it
        return device_items(session, secret, row.device_id, items)
    e = LoneWorkerEvent
    found = session.scalars(
        select(e).where(
            e.device_id == row.device_id,
            or_(e.alarm_id == row.id, e.event_id == source, e.ref_event_id == source),
            e.evidence_item_id.is_not(None),
        )
    )
    for event in found:
        if event.evidence_item_id in items or raise_named(bytes(event.raw), event.event_id) != source:
            continue
        own = device_items(session, secret, row.device_id, [event.evidence_item_id])
        item = session.get(EvidenceItem, own[0]) if own else None
        vouched = message_key(
            session,
            *keys,
            row.device_id,
            event.event_id,
            event.raw,
            (event.device_public_key, event.receipt_seal),
        )
        if item is None or vouched is None or item.sha256 != hashlib.sha256(bytes(event.raw)).hexdigest():
            log.warning(
                "a device message's row names an alarm its signed bytes are not about, or an item that is "
                "not its record of them: its item is not linked",
                extra={"alarm": row.id, "event_id": event.event_id, "item": event.evidence_item_id},
            )
            continue
        items.append(item.id)
    return device_items(session, secret, row.device_id, items)
