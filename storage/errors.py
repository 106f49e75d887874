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


# The machine code of each status where nothing more particular is said (a route's own refusal, or
# one Starlette raises itself, such as 404 and 405 for a path or method no route answers).
REASONS = {
    303: "sign_in_first",
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


class _ByStatus(Refused):
    """A refusal whose reason is the usual code of its status (:data:`REASONS`): what a route says
    when the status tells the caller all there is to act on."""

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(REASONS[self.status], message, headers=headers, retry_after=retry_after)


class Unauthenticated(_ByStatus):
    """No credentials, or credentials that no longer hold (401)."""

    status = 401


class NotPermitted(_ByStatus):
    """The caller is known but may not do this (403)."""

    status = 403


class NotFound(_ByStatus):
    """Missing, or hidden from this caller: the two answer alike (404)."""

    status = 404


class InConflict(_ByStatus):
    """The thing is not in a state that allows this now (409)."""

    status = 409


class Gone(_ByStatus):
    """It existed and was deleted as the rules say (410)."""

    status = 410


class Invalid(_ByStatus):
    """The request is well formed but asks for something that cannot be (422)."""

    status = 422


class Busy(_ByStatus):
    """Too many of the caller's own requests at once (429); ``retry_after`` says when to try again."""

    status = 429


class Unavailable(_ByStatus):
    """A part the answer needs is not available now (503)."""

    status = 503


class SignInFirst(_ByStatus):
    """A console page asked for without a session: the browser is sent to sign in (303 with
    ``Location``)."""

    status = 303
