"""What the custody page says of an item held in quarantine, and whether the reader may release it.

An item quarantined for review (a clip signed by a retired key of its camera, recorded or docked
while its camera was disabled) waits for someone who answers for the site's evidence to look at it
and release it with a written reason (``POST /api/v1/evidence/{id}/quarantine-release``). The page
shows why it is held, from its custody record (never from the row's column alone), and offers the
release only to those the API would let release it (``incidents.access.may_release``); an item
quarantined for integrity is shown as never to be released.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from accounts.service import Principal
from chain_of_custody.core import CoreServices
from chain_of_custody.models import EvidenceItem
from chain_of_custody.quarantines import INTEGRITY, REASON_MAX, REASON_MIN, quarantine_standing
from incidents.access import may_release


@dataclass(frozen=True)
class HeldItem:
    """An item's standing quarantines as custody records them: each ``(entry seq, when, reason)``,
    whether any is for integrity (then nothing releases it), and whether the reader may release."""

    quarantines: tuple[tuple[int, str, str], ...]
    integrity: bool
    can_release: bool
    reason_min: int = REASON_MIN
    reason_max: int = REASON_MAX


def held_for(session: Session, s: CoreServices, reader: Principal, item: EvidenceItem) -> HeldItem | None:
    """The item's standing quarantines (None when nothing holds it), for the custody page."""
    standing = quarantine_standing(session, s.ledger.verifier, item.id)
    if not standing.open:
        return None
    integrity = any(q.kind == INTEGRITY for q in standing.open)
    return HeldItem(
        tuple((q.seq, q.at, q.reason) for q in standing.open),
        integrity,
        not integrity and may_release(reader, item, s.key),
    )
