"""The one error family of refusals: a request the service will not do, for a reason the caller can act on.

Every domain's refusal subclasses :class:`Refused` (``DeviceRefused``, ``IncidentRefused``,
``RetentionRefused``, ``VoiceMemoRefused``, ``TusRefusal``...), and the application turns any of
them into the one JSON error envelope (``ingest.errors``)::

    {"error": "<a sentence for people>", "reason": "<a stable machine code>", "detail": ...}

``status`` is the HTTP answer and ``retry_after`` (seconds) is sent as ``Retry-After`` when set.
``detail`` keeps the form version 1 clients read: the sentence, or (``structured = True``) the
object ``{"error", "reason"}``; a refusal that has more to say for its route (``detail=``, such as
who already has an alarm) gives the object with those fields added.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A refusal: ``reason`` (a stable code), ``str()`` (a sentence), ``status``, ``retry_after``."""

    status: int = 400
    structured = False  # ``detail`` is {"error", "reason"} rather than the sentence

    def __init__(
        self,
        reason: str,
        message: str,
        status: int | None = None,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = dict(detail or {})
        self.reason = reason
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    @property
    def message(self) -> str:
        return str(self)

    def envelope(self) -> dict[str, Any]:
        """The JSON body of this refusal."""
        detail: Any = self.message
        if self.structured or self.detail:
            detail = {"error": self.message, "reason": self.reason, **self.detail}
        return {"error": self.message, "reason": self.reason, "detail": detail}

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers
