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

from fastapi import Query, Response

NEXT_AFTER_HEADER = "X-Next-After"


def after_key(key: str, entry: str = "entry") -> Any:
    """The ``after`` parameter of a list paged by a text key (a username, an id): where the previous
    page ended, as its ``X-Next-After`` said."""
    return Query(
        "",
        max_length=64,
        description=f"the {key} of the previous page's last {entry} (its X-Next-After): the page starts "
        "after it; empty for the first page",
    )


def page_limit(default: int, most: int, entries: str = "entries") -> Any:
    """The ``limit`` parameter of a paged list: ``default`` entries unless the caller asks for fewer,
    never more than ``most``."""
    return Query(default, ge=1, le=most, description=f"most {entries} in the page")


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
