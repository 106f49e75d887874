"""Incidents' footage windows against the ledger's replay: pure comparison, no I/O.

An incident's footage window (a wearer, a start and an end) has the service link that wearer's
clips recorded in the span to the incident as they arrive, each by a signed ``linked`` entry, and
so shows them to the incident's investigators. A window set in the database would have the service
sign those links itself, so every window set by the service is recorded in an ``incident_changed``
entry (``incidents.identity.record_site``) and compared here with the incident's row. The entry has
no item id: it travels in no package's custody chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .entries import Problem, SignedEntry
from .row_replay import incident_field_replay


def window_record(wearer: str | None, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    """What an ``incident_changed`` entry records of an incident's footage window (UTC, ISO 8601)."""
    return {
        "wearer": wearer,
        "start": start.astimezone(UTC).isoformat() if start is not None else None,
        "end": end.astimezone(UTC).isoformat() if end is not None else None,
    }


def window_replay(entries: Iterable[SignedEntry]) -> dict[str, tuple[int, Any]]:
    """The footage window each incident's latest ``incident_changed`` entry that records one gives it."""
    return incident_field_replay(entries, "window")


def window_findings(
    replay: Mapping[str, tuple[int, Any]], windows: Mapping[str, dict[str, Any]]
) -> list[Problem]:
    """Each incident's window (``windows``: incident id -> ``window_record`` of its row) against the
    latest entry that recorded it; an incident whose window no entry recorded is not checked
    (``windows_unchecked``)."""
    problems: list[Problem] = []
    for incident, window in sorted(windows.items()):
        if incident not in replay:
            continue
        seq, recorded = replay[incident]
        if window != recorded:
            problems.append(
                Problem(
                    "incident_window_altered",
                    f"incident {incident}",
                    f"its footage window is {window} in the database but {recorded} in custody entry #{seq}",
                )
            )
    return problems


def windows_unchecked(
    replay: Mapping[str, tuple[int, Any]], windows: Mapping[str, dict[str, Any]]
) -> list[str]:
    """Incidents with a footage window that no entry recorded (set before windows were): not checked."""
    return sorted(i for i, w in windows.items() if i not in replay and any(v is not None for v in w.values()))
