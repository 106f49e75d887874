"""The message an escalation sends to the control topic and the webhook.

Other systems on the broker and the trust's control room act on it, so it names the alarm's site
and wearer only while the alarm row's seal holds: a receiver routing by site would otherwise hand
a row moved by SQL to that site's people. It is sent all the same, of no site, to be answered."""

from __future__ import annotations

from prometheus_client import Counter

from chain_of_custody.canonical import canonical_json, rfc3339
from devices.broker_access import CONTROL_TOPIC_ROOT

from . import rules
from .models import AlarmRecord

ESCALATION_TOPIC = f"{CONTROL_TOPIC_ROOT}/escalations"

ALARM_ESCALATIONS = Counter("evidence_alarm_escalations_total", "Alarms escalated, by reason", ["reason"])


def escalation_message(row: AlarmRecord, effect: rules.CallWebhook, sealed: bool) -> bytes:
    """The canonical JSON of one escalation; ``sealed``: whether the row's seal holds."""
    wearer, site = (row.wearer, row.site) if sealed else (None, None)
    position = {"lat": row.lat, "lon": row.lon, "accuracy_m": row.accuracy_m} if row.lat is not None else None
    return canonical_json(
        {
            "v": 1,
            "type": "alarm_escalated",
            "alarm_id": row.id,
            "device_id": row.device_id,
            "wearer": wearer,
            "site": site,
            "kind": row.kind,
            "severity": row.severity,
            "reason": effect.reason.value,
            "at": rfc3339(effect.at),
            "raised_at": rfc3339(row.raised_at),
            "position": position,
            "incident_id": row.incident_id,
        }
    )
