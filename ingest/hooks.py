"""What happens after evidence arrives, and which background loops run, wired in one place.

``clip_hooks`` run inside the transaction that records a new clip (for example: queue its automatic
redaction, link it to an incident of the same wearer). ``loops`` are long-running coroutines started
with the HTTP application (for example: alarm escalation, the MQTT consumer, the retention sweeper).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

from chain_of_custody.models import EvidenceItem

from .services import Services

log = logging.getLogger(__name__)

ClipHook = Callable[[Session, EvidenceItem], None]
Loop = Callable[[Services], Awaitable[Any]]


def install(services: Services) -> None:
    """Register every capability's hooks and loops on ``services.extras``."""
    services.extras.setdefault("clip_hooks", [])
    services.extras.setdefault("startup", [])
    _install_incidents(services)
    _install_redaction(services)
    _install_alarms(services)


def _install_incidents(services: Services) -> None:
    """Clips join the incident of their wearer's alarm; the retention sweeper runs with the app."""
    from incidents.retention import RetentionRules, retention_loop
    from incidents.service import Retention, make_clip_hook

    rules = RetentionRules.from_settings(services.settings)
    hooks: list[ClipHook] = services.extras["clip_hooks"]  # type: ignore[assignment]
    hooks.append(make_clip_hook(services.ledger, Retention(services.store, rules)))
    loops: list[Loop] = services.extras["startup"]  # type: ignore[assignment]
    loops.append(lambda s: retention_loop(s.db, s.ledger, s.store, rules, s.settings.retention_sweep_seconds))


def _install_redaction(services: Services) -> None:
    """Every stored clip gets its automatic redaction queued, in the same transaction that records it."""
    if not services.settings.redaction_enabled:
        return
    from redaction.jobs import enqueue

    def queue_redaction(session: Session, item: EvidenceItem) -> None:
        if item.kind == "clip" and item.status == "stored":
            enqueue(session, item.id, "service", {}, max_attempts=services.settings.worker_max_attempts)

    hooks: list[ClipHook] = services.extras["clip_hooks"]  # type: ignore[assignment]
    hooks.append(queue_redaction)


def _install_alarms(services: Services) -> None:
    """Lone-worker alarms, when a broker is configured (host and the service's login): the MQTT
    consumer (unless ``EVIDENCE_MQTT_CONSUMER_ENABLED=false``) and the escalation loop."""
    from .escalation import escalation_loop
    from .mqtt_consumer import consumer_configured, run_consumer
    from .telemetry_process import run_telemetry_process, telemetry_process_wanted

    if not consumer_configured(services.settings):
        return
    loops: list[Loop] = services.extras["startup"]  # type: ignore[assignment]
    if services.settings.mqtt_consumer_enabled:
        loops.append(run_consumer)
    if telemetry_process_wanted(services.settings):
        loops.append(run_telemetry_process)
    elif services.settings.mqtt_telemetry_process:
        log.warning(
            "no telemetry process: it needs the consumer, a broker login, PostgreSQL, and both alarm "
            "and telemetry types in EVIDENCE_MQTT_MESSAGE_TYPES"
        )
    loops.append(escalation_loop)


def clip_hooks(services: Services) -> list[ClipHook]:
    return services.extras.get("clip_hooks", [])  # type: ignore[return-value]
