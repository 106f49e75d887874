"""The time an item's retention runs from: when the device recorded it, bounded by when we received it.

Retention is counted from capture ("deleted 31 days after capture"), not from upload: a clip that sat in
a camera for a week before docking has a week less to go. The capture time is the device's word, so it
is bounded before it can set a COMPLIANCE lock that nobody can shorten or lift:

- a capture time after receipt is impossible (and would lock storage for as long as the device liked);
- a capture time older than the unlinked retention period would have the item expire as it arrives
  (and would let a device have its own footage deleted at once by claiming an old date);
- a capture time the device's signature does not vouch for is not the device's word at all.

In each case the receipt time is used instead, and the custody record says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class RetentionBasis:
    """When retention starts, whether that is the capture or the receipt time, and why receipt was used."""

    at: datetime
    source: str  # capture | receipt
    note: str | None = None

    def retain_until(self, keep: timedelta) -> datetime:
        return self.at + keep

    def as_details(self) -> dict[str, Any]:
        """What the ``stored`` custody entry records about it."""
        out: dict[str, Any] = {"from": self.source, "at": self.at.astimezone(UTC).isoformat()}
        if self.note:
            out["note"] = self.note
        return out


def retention_basis(
    captured: datetime | None, received: datetime, keep: timedelta, *, vouched: bool = True
) -> RetentionBasis:
    """The capture time when it is known, vouched for and plausible; else the receipt time, with the reason."""
    if captured is None:
        return RetentionBasis(received, "receipt", "no capture time known")
    if not vouched:
        return RetentionBasis(received, "receipt", "capture time not vouched for by the device's signature")
    if captured > received:
        return RetentionBasis(received, "receipt", f"capture time {_iso(captured)} is later than receipt")
    if captured < received - keep:
        return RetentionBasis(
            received, "receipt", f"capture time {_iso(captured)} is older than the retention period"
        )
    return RetentionBasis(captured, "capture")


def inherited_basis(
    recorded: dict[str, Any] | None,
    captured: datetime | None,
    received: datetime,
    keep: timedelta,
    original_id: str,
) -> RetentionBasis:
    """A derived item's basis: its original's, as the original's ``stored`` entry recorded it (else
    worked out again from the original's row), so a redacted copy never outlives or precedes it."""
    if recorded and recorded.get("at") and recorded.get("from") in ("capture", "receipt"):
        at = datetime.fromisoformat(str(recorded["at"]))
        return RetentionBasis(at, str(recorded["from"]), f"the original's ({original_id})")
    basis = retention_basis(captured, received, keep)
    return RetentionBasis(basis.at, basis.source, f"the original's ({original_id})")


def bounded_base(captured: datetime | None, received: datetime, keep: timedelta) -> datetime:
    """The same bound, for an item already recorded (its capture and arrival times from its row)."""
    return retention_basis(captured, received, keep).at


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()
