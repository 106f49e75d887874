"""Why an item is read, as the caller states it: in a header (preferred), in the query (kept for
API clients), or through a read grant (``ingest.read_grants``: the console's player and download,
which cannot send headers, post the reason and read an address that holds a grant, never the reason).

A reason can name a patient or a member of staff. In a URL it would land in access logs (ours, a
reverse proxy's), in browser history and in download lists; in ``X-Evidence-Reason`` it does not.
The query form is kept for API clients that cannot send a header, and the log never writes it
(``logging_setup.scrub`` redacts ``reason`` and ``review_reason`` in any logged address). Stating
both, differently, is refused (422 ``reason_conflict``): a read's custody entry carries one reason.
A header is sent as UTF-8 bytes (as browsers and HTTP libraries send non-ASCII), and read as such.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Header, Query

from storage.errors import Refused

log = logging.getLogger(__name__)

REASON_HEADER = "X-Evidence-Reason"
REVIEW_REASON_HEADER = "X-Evidence-Review-Reason"
MIN_CHARS, MAX_CHARS = 10, 2000


class ReasonRefused(Refused):
    """A stated reason the read cannot carry: two different ones (header and query, 422
    ``reason_conflict``), or a header of the wrong length (422 ``invalid_reason``)."""

    status = 422
    structured = True


def _utf8(value: str) -> str:
    """A header value as the UTF-8 text it was sent as (the server hands headers over as latin-1)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def one_reason(in_header: str | None, in_query: str | None, name: str) -> str | None:
    """The reason stated, from the header or the query; refused when both say different things."""
    header = _utf8(in_header) if in_header is not None else None
    if header is not None and in_query is not None and header.strip() != in_query.strip():
        log.warning("read refused: two different reasons", extra={"field": name})
        raise ReasonRefused(
            "reason_conflict",
            f"two different {name}s were given (header and query): state it once, preferably in the header",
        )
    return header if header is not None else in_query


def stated(
    name: str, header: str, description: str, min_chars: int = MIN_CHARS
) -> Callable[..., Awaitable[str | None]]:
    """A dependency giving the ``name`` reason of a read (``header`` or ``?name=``)."""

    async def dependency(  # headers and query only: on the event loop, no worker thread
        in_query: str | None = Query(
            None,
            alias=name,
            min_length=min_chars,
            max_length=MAX_CHARS,
            description=f"{description}; only for clients that cannot send the {header} header "
            "(a <video> or a download link): the header is preferred, and the query is never logged",
        ),
        in_header: str | None = Header(
            None,
            alias=header,
            min_length=min_chars,
            max_length=MAX_CHARS * 4,
            description=f"{description} (UTF-8); preferred to the ``{name}`` query parameter, "
            "which lands in browser history and proxies' logs",
        ),
    ) -> str | None:
        found = one_reason(in_header, in_query, name)
        if found is not None and not min_chars <= len(found) <= MAX_CHARS:
            log.warning("request refused: reason of the wrong length", extra={"field": name})
            raise ReasonRefused("invalid_reason", f"a {name} is {min_chars} to {MAX_CHARS} characters")
        return found

    return dependency


read_reason = stated(
    "reason",
    REASON_HEADER,
    "why the item is read (recorded on the read's custody entry); required for an original "
    "(422 ``reason_required`` without one), not for a redacted copy",
)
deletion_reason = stated("reason", REASON_HEADER, "why this item is deleted by hand (required)", min_chars=3)
quarantine_review_reason = stated(
    "review_reason", REVIEW_REASON_HEADER, "why a quarantined item is read (administrators)"
)
