"""One way to hand out a long list a page at a time: ``limit`` and ``after``, and a next link.

A list that grows without bound (an item's custody trail, an incident's history) is never answered
whole: a request names ``limit`` (at most a route's maximum) and ``after`` (where the previous page
ended, as the previous answer said), and while more follow the answer carries
``Link: <path?after=...&limit=...>; rel="next"`` (RFC 8288) and the route's ``X-...-Next-After``.
Every paged route sets that header through :func:`link_next`, and documents it with
:func:`next_headers`, so a client follows one convention everywhere.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Response

NEXT_AFTER_HEADER = "X-Next-After"


def next_url(path: str, after: str | int, limit: int, **params: str) -> str:
    """The address of the page after ``after``: ``path?after=...&limit=...`` (other ``params`` first)."""
    query = {**{k: v for k, v in params.items() if v}, "after": str(after), "limit": str(limit)}
    return f"{path}?{urlencode(query)}"


def link_next(
    response: Response,
    path: str,
    after: str | int | None,
    limit: int,
    header: str = NEXT_AFTER_HEADER,
    **params: str,
) -> None:
    """Say on ``response`` where the next page starts, when there is one (``after`` not None)."""
    if after is None:
        return
    response.headers[header] = str(after)
    response.headers["Link"] = f'<{next_url(path, after, limit, **params)}>; rel="next"'


def next_headers(header: str = NEXT_AFTER_HEADER) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry documenting a paged answer's headers."""
    return {
        200: {
            "headers": {
                "Link": {
                    "description": 'the next page (rel="next"), when there is one',
                    "schema": {"type": "string"},
                },
                header: {
                    "description": "the after= of the next page, when there is one",
                    "schema": {"type": "string"},
                },
            }
        }
    }
