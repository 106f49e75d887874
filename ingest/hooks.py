"""What happens after evidence arrives, and which background loops run, wired in one place.

``clip_hooks`` run inside the transaction that records a new clip (for example: queue its automatic
redaction, link it to an incident of the same wearer). ``loops`` are long-running coroutines started
with the HTTP application (for example: alarm escalation, the MQTT consumer, the retention sweeper).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

from chain_of_custody.models import EvidenceItem

from .services import Services

ClipHook = Callable[[Session, EvidenceItem], None]
Loop = Callable[[Services], Awaitable[Any]]


def install(services: Services) -> None:
    """Register every capability's hooks and loops on ``services.extras``."""
    services.extras.setdefault("clip_hooks", [])
    services.extras.setdefault("startup", [])


def clip_hooks(services: Services) -> list[ClipHook]:
    return services.extras.get("clip_hooks", [])  # type: ignore[return-value]
