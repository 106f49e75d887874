"""One way to hand out a long list a page at a time: ``limit`` and ``after``, and a next link.

A list that grows without bound (an item's custody trail, an incident's history) is never answered
whole: a request names ``limit`` (at most a route's maximum) and ``after`` (where the previous page
ended, as the previous answer said), and while more follow the answer carries
``Link: <path?after=...&limit=...>; rel="next"`` (RFC 8288) and the route's ``X-...-Next-After``.
Every paged route sets that header through :func:`link_next`, and documents it with
:func:`next_headers`, so a client follows one convention everywhere.

Lists that grow while they are read, newest first (alarms, evidence items, incidents), page the same
way with an opaque ``after``: a signed cursor naming the last row's (time, key) (:class:`Cursors`).
The next page starts strictly after that row (:func:`after_position`), so rows added or removed
between two pages never move another across them, and a deep page reads no more than the first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Query, Request, Response
from sqlalchemy import ColumnElement, and_, or_, true

from .errors import Refused

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- lists ordered by time


CURSOR_MAX = 512
"""The longest cursor read (one names a time and a key of at most a few dozen characters)."""
CURSOR_VERSION = 1
_MAC_BYTES = 16


class BadCursor(Refused):
    """An ``after`` that is no cursor this service handed out for this list."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__("bad_cursor", message)


@dataclass(frozen=True)
class Position:
    """Where a page of a list ordered newest first ended: its last row's time and key (a unique
    tie-breaker), so the next page starts strictly after it whatever was added or removed meanwhile."""

    at: datetime
    key: str


class Cursors:
    """Hands out and reads the opaque ``after`` of lists ordered by (time, key), newest first.

    A cursor is base64url of a version byte, a MAC and ``[list, time, key]``. The MAC (under a
    secret every instance derives alike) makes any change a ``400 bad_cursor`` rather than a page
    from somewhere the service never pointed; it says nothing about who may see what: access is
    applied by each list's query, so a cursor passed to someone else shows them only their rows.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, b"list cursor\x00" + body, hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, list_name: str, at: datetime, key: str) -> str:
        """The cursor of the page after the row at (``at``, ``key``) of ``list_name``."""
        body = json.dumps([list_name, at.astimezone(UTC).isoformat(), key], separators=(",", ":")).encode()
        raw = bytes([CURSOR_VERSION]) + self._mac(body) + body
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, list_name: str, text: str) -> Position:
        """The position ``text`` names in ``list_name``; :class:`BadCursor` (logged) for anything else."""
        try:
            return self._read(list_name, text)
        except BadCursor as refusal:
            log.warning(
                "cursor refused", extra={"list": list_name, "why": refusal.message, "length": len(text)}
            )
            raise

    def _read(self, list_name: str, text: str) -> Position:
        if len(text) > CURSOR_MAX or len(text) % 4 == 1 or not _B64URL.fullmatch(text):
            raise BadCursor("after is not a cursor this list gave (take it from X-Next-After or the Link)")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # cannot fail after the checks above
        if (
            base64.urlsafe_b64encode(raw).decode().rstrip("=") != text
        ):  # a change in the last digit's spare bits
            raise BadCursor("after is not a cursor this service gave, or it was altered")
        version, mac, body = raw[:1], raw[1 : 1 + _MAC_BYTES], raw[1 + _MAC_BYTES :]
        if version != bytes([CURSOR_VERSION]) or not hmac.compare_digest(mac, self._mac(body)):
            raise BadCursor("after is not a cursor this service gave, or it was altered")
        try:
            name, at_text, key = json.loads(body)
            at = datetime.fromisoformat(at_text)
        except (ValueError, TypeError) as e:  # signed by us, so only a bug gets here
            raise BadCursor("after is not a cursor this list gave") from e
        if name != list_name or not isinstance(key, str) or at.tzinfo is None:
            raise BadCursor(f"after is a cursor of another list, not of {list_name}")
        return Position(at.astimezone(UTC), key)


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def after_position(at: Any, key: Any, position: Position | None) -> ColumnElement[bool]:
    """Rows after ``position`` in the order (``at`` descending, ``key`` descending). Written so that an
    index on (``at``, ``key``) bounds the scan (``at <= t``) on SQLite and PostgreSQL alike."""
    if position is None:
        return true()
    return and_(at <= position.at, or_(at < position.at, key < position.key))


def cursor_param(entries: str) -> Any:
    """The ``after`` parameter of a list paged by cursor: the previous answer's ``X-Next-After``."""
    return Query(
        "",
        description=f"where the page starts: the previous page's X-Next-After (an opaque cursor; its Link "
        f"rel=next carries it), empty for the newest {entries}; a cursor altered or of another list is "
        "a 400 bad_cursor",
    )


def link_next_keeping(
    response: Response, request: Request, after: str | None, limit: int, header: str = NEXT_AFTER_HEADER
) -> None:
    """:func:`link_next` for a list with filters: the next page's address keeps every parameter the
    request gave (repeated ones too) but its own ``after``, ``offset`` and ``limit``."""
    if after is None:
        return
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("after", "offset", "limit")]
    query = urlencode([*kept, ("after", after), ("limit", str(limit))])
    response.headers[header] = after
    response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
