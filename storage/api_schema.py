"""Wire shapes every domain's routes share, so the OpenAPI document says what the service answers.

- :class:`ErrorEnvelope` is the one error body (``storage.errors.Refused`` and ``ingest.errors``);
  :func:`error_responses` declares it for a route's refusals (``responses=`` on the route).
- :data:`Timestamp` is a date and time given as RFC 3339 text with its offset. Pydantic would also
  take a bare number as seconds since 1970, so ``?until=0.5`` meant 1970: a number is refused.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field

# What each status means when a route refuses, for the document's descriptions.
MEANINGS = {
    400: "The request is malformed or breaks a rule of the service",
    401: "No valid bearer token",
    403: "The caller may not do this",
    404: "No such resource (or not one the caller may see)",
    405: "Method not allowed",
    408: "The request body stopped arriving",
    409: "The resource's state does not allow this now",
    410: "Gone",
    411: "A Content-Length is required",
    412: "A precondition header is missing or wrong",
    413: "Too large",
    415: "Unsupported content type",
    416: "Range not satisfiable",
    422: "The request does not match this operation's schema",
    429: "Too many requests: try again after Retry-After",
    431: "Request headers too large",
    460: "Checksum mismatch",
    503: "Busy, or storage unreachable: try again after Retry-After",
    507: "Evidence storage is full",
}


class ErrorEnvelope(BaseModel):
    """The one error body: a sentence for people, a stable code for programs, and details."""

    error: str = Field(description="What went wrong, in a sentence.")
    reason: str = Field(description="A stable machine code for the refusal.")
    detail: Any = Field(
        description="The sentence again, or {error, reason}, or (422) the list of validation errors."
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may refuse with these statuses, each with the envelope."""
    return {code: {"model": ErrorEnvelope, "description": MEANINGS.get(code, "Refused")} for code in codes}


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _text_only(value: Any) -> Any:
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("a date and time is RFC 3339 text with an offset, such as 2026-11-22T10:00:00Z")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]


def _date_text_only(value: Any) -> Any:
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("a date is ISO 8601 text, such as 2026-11-22")
    return value


# A calendar date as text only (a number would be read as seconds since 1970).
CalendarDate = Annotated[date, BeforeValidator(_date_text_only)]
