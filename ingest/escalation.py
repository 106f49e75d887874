"""The escalation loop: what the clock decides about alarms, run safely by any number of instances.

Every deadline lives in the database (``alarms.next_deadline`` from ``alarm_rules.next_deadline``,
``lone_worker_visits.due_at``, ``lone_worker_states.offline_due_at``, outbox ``next_attempt_at``), so
nothing is lost when an instance stops, and each pass claims its rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises writers anyway), so two
instances never act on the same alarm. Rules fire each deadline at its own time, so how often the
loop runs changes only how soon it is noticed, never the outcome.

Effects of an escalation (from ``AlarmService``): a change on the control room's live stream, a
message on the MQTT control topic ``lw/v1/_control/escalations``, and, when
``EVIDENCE_ESCALATION_WEBHOOK_URL`` is set, a signed POST to it (retried with backoff until it
answers 2xx). The webhook body is the control-topic message; ``X-Evidence-Signature`` is the
service key's Ed25519 signature over it (public key at ``/api/v1/custody/public-key``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from prometheus_client import Counter

from storage.objects import StorageError

from .alarms import AlarmService, alarm_service
from .services import Services

log = logging.getLogger(__name__)

WEBHOOK_CALLS = Counter(
    "evidence_alarm_webhook_calls_total", "Escalation webhook calls, by result", ["result"]
)
PURGE_EVERY_S = 3600.0
MAX_BATCHES = 20  # per kind of work per pass, so one pass stays short
FOLLOWUP_GRACE = timedelta(seconds=5)  # a fast-path alarm left pending this long is finished by the loop


@dataclass
class PassReport:
    deadlines: int = 0
    missed_checkins: int = 0
    offline: int = 0
    webhooks: int = 0
    evidence: int = 0
    followups: int = 0
    trail_points: int = 0


def _drain(step: object, limit: int = 50) -> int:
    total = 0
    for _ in range(MAX_BATCHES):
        done = step(limit=limit)  # type: ignore[operator]
        total += done
        if done < limit:
            break
    return total


def send_webhooks(alarms: AlarmService, http: httpx.Client, now: datetime | None = None) -> int:
    """POST due escalation webhooks; a refusal or timeout is retried later with backoff."""
    rows = alarms.claim_outbox("webhook", now=now, limit=20, lease_s=60)
    key = alarms.services.key
    sent: list[int] = []
    for row in rows:
        signature = base64.b64encode(key.private.sign(row.payload)).decode()
        try:
            response = http.post(
                row.target,
                content=row.payload,
                headers={
                    "Content-Type": "application/json",
                    "X-Evidence-Signature": signature,
                    "X-Evidence-Key-Id": key.key_id,
                    "X-Evidence-Delivery": str(row.id),
                },
            )
            ok = 200 <= response.status_code < 300
            error = None if ok else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        WEBHOOK_CALLS.labels(result="ok" if ok else "failed").inc()
        if ok:
            sent.append(row.id)
        else:
            retry = timedelta(seconds=min(300, 2 ** min(row.attempts, 9)))
            log.warning(
                "escalation webhook failed", extra={"outbox": row.id, "error": error, "retry_in": str(retry)}
            )
            alarms.mark_failed(row.id, error or "failed", retry)
    alarms.mark_sent(sent, now)
    return len(sent)


def run_pass(alarms: AlarmService, http: httpx.Client, now: datetime | None = None) -> PassReport:
    """One pass over everything due now (also what tests call to move time along)."""
    report = PassReport()
    report.deadlines = _drain(lambda limit: alarms.fire_deadlines(now, limit))
    # Fast-path alarms that the instance which acknowledged them did not finish (it died, or its
    # follow-up worker is far behind): made whole here, after the deadlines (which never wait for
    # storage writes).
    report.followups = alarms.complete_followups(now, limit=50, older_than=FOLLOWUP_GRACE)
    report.missed_checkins = _drain(lambda limit: alarms.raise_missed_checkins(now, limit))
    report.offline = _drain(lambda limit: alarms.raise_offline(now, limit))
    report.webhooks = send_webhooks(alarms, http, now)
    report.trail_points = alarms.sample_trails()
    try:
        report.evidence = alarms.store_deferred_evidence(now)
    except StorageError as exc:
        log.warning("deferred alarm evidence still waiting for object storage", extra={"error": str(exc)})
    return report


async def escalation_loop(services: Services, interval_s: float | None = None) -> None:
    """Run :func:`run_pass` forever; every exception is logged and the loop carries on."""
    alarms = alarm_service(services)
    interval = interval_s if interval_s is not None else services.settings.escalation_poll_seconds
    last_purge = 0.0
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        while True:
            try:
                await asyncio.to_thread(run_pass, alarms, http)
                if time.monotonic() - last_purge > PURGE_EVERY_S:
                    await asyncio.to_thread(alarms.purge)
                    last_purge = time.monotonic()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("escalation pass failed")
            await asyncio.sleep(interval)
