"""Creation once: a retried POST answers with its first answer and records nothing new.

A client that lost the answer to a POST (a dropped connection, a browser that sent the form again)
cannot tell whether the thing was made. With an ``Idempotency-Key`` header (the IETF draft "The
Idempotency-Key HTTP Header Field", draft-ietf-httpapi-idempotency-key-header) it sends the same
request again under the same key and gets the first answer, status and body, while the service makes
nothing and records nothing new: no second download link to the same solicitor, no second
disclosure in the log. A key belongs to the person who sent it: (user, key) is unique, and another
person's same key is another key.

The key's row is written in the transaction that makes the thing, first of its writes, and the answer
is written into it before that transaction commits: the thing and the stored answer exist together
or not at all (a refused or failed request leaves no key behind, so a retry runs afresh). A second
request with the same key while the first is running waits for it (PostgreSQL's unique index holds
the second insert until the first commits; SQLite serialises writing transactions) and then answers
with the first's answer, so two things are never made. The same key with another request (another
route, path, query or body) is refused with 422 ``idempotency_key_reused``; a key row that somehow
holds no answer is refused with 409 ``idempotency_key_in_use``, as the draft says. Keys are forgotten
after ``idempotency_key_hours`` (the personal-data sweep deletes them; a key past its time is free).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Header, Request, Response
from pydantic import BaseModel
from sqlalchemy import Integer, String, Text, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import Base, UTCDateTime, dialect_insert
from .errors import Refused

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on an answer given again from a stored first answer
KEY_MAX = 255

KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="a key of the client's choosing (a UUID, for example; 1 to 255 printable ASCII characters, "
        "optionally quoted as a structured-field string): sending the same request again with the same "
        "key answers the first answer and makes nothing new; the same key with another request is "
        "refused (422 idempotency_key_reused)",
    ),
]


class IdempotencyKey(Base):
    """One person's ``Idempotency-Key`` and the first answer given under it (see the module)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(KEY_MAX))
    route: Mapped[str] = mapped_column(String(255))  # "POST /api/v1/exports/{export_id}/links"
    request_digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of method, path, query and body
    status: Mapped[int | None] = mapped_column(Integer, default=None)  # None until the answer is stored
    response: Mapped[str | None] = mapped_column(Text, default=None)  # the JSON body as sent
    headers: Mapped[str | None] = mapped_column(Text, default=None)  # JSON: headers to send again (Location)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class KeyRefused(Refused):
    """A request refused for its ``Idempotency-Key``."""

    structured = True


def parse_key(raw: str | None) -> str | None:
    """The key a header carries: the draft's structured-field string (``"..."``) or the bare text;
    None when no header was sent. A key that is empty, too long or not printable ASCII is refused."""
    if raw is None:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not text or len(text) > KEY_MAX or not all(" " <= c <= "~" for c in text):
        raise KeyRefused(
            "bad_idempotency_key",
            f"the {HEADER} header must hold 1 to {KEY_MAX} printable ASCII characters",
            400,
        )
    return text


def request_digest(method: str, path: str, query: list[tuple[str, str]], body: Any) -> str:
    """SHA-256 of what makes two requests the same one: method, path, query and body (as parsed, in
    a canonical JSON form, so that key order and spacing do not make a retry another request)."""
    canonical = json.dumps(
        {"method": method, "path": path, "query": sorted(query), "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def json_body(model: type[BaseModel], data: Any) -> str:
    """The JSON text of an answer, as the route's response model gives it."""
    return model.model_validate(data).model_dump_json()


Restore = Callable[[dict[str, Any]], dict[str, str]]  # stored body -> {placeholder: secret}


@dataclass
class Once:
    """The key of one request, if it sent one: :meth:`claim` before the route's first write,
    :meth:`answer` with what it made, both in the route's one transaction."""

    key: str | None
    user_id: int
    route: str
    digest: str
    ttl: timedelta
    _row: int | None = field(default=None, init=False)

    @classmethod
    def of(cls, request: Request, raw_key: str | None, user_id: int, body: Any, hours: int) -> Once:
        """The request's key (from the header ``raw_key``) and its digest; ``body`` is the parsed body
        (a model, or None for a route without one); the key holds for ``hours`` (the setting
        ``idempotency_key_hours``)."""
        route = getattr(request.scope.get("route"), "path", request.url.path)
        parsed = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        digest = request_digest(
            request.method, request.url.path, list(request.query_params.multi_items()), parsed
        )
        return cls(parse_key(raw_key), user_id, f"{request.method} {route}", digest, timedelta(hours=hours))

    def claim(
        self, session: Session, now: datetime | None = None, restore: Restore | None = None
    ) -> Response | None:
        """Take the key for this request (None: go on and make the thing), or the first answer given
        under it (the route returns it as it is). A request with no key claims nothing. ``restore``
        gives back, from the stored body, the secrets :meth:`answer` withheld from the database."""
        if self.key is None:
            return None
        now = now or datetime.now(UTC)
        mine = (IdempotencyKey.user_id == self.user_id) & (IdempotencyKey.key == self.key)
        session.execute(delete(IdempotencyKey).where(mine, IdempotencyKey.expires_at <= now))
        taken = session.execute(
            dialect_insert(session, IdempotencyKey)
            .values(
                user_id=self.user_id,
                key=self.key,
                route=self.route,
                request_digest=self.digest,
                created_at=now,
                expires_at=now + self.ttl,
            )
            .on_conflict_do_nothing(index_elements=["user_id", "key"])
            .returning(IdempotencyKey.id)
        ).scalar()
        if taken is not None:
            self._row = int(taken)
            return None
        # Another request holds the key; on PostgreSQL the insert waited for its transaction to end.
        first = session.scalars(
            select(IdempotencyKey).where(mine).execution_options(populate_existing=True)
        ).first()
        if first is None or first.expires_at <= now:
            raise KeyRefused(
                "idempotency_key_in_use",
                f"a request with this {HEADER} was just ending: send it again",
                409,
                retry_after=1,
            )
        if first.route != self.route or first.request_digest != self.digest:
            log.warning(
                "request refused: an idempotency key used again for another request",
                extra={"user_id": self.user_id, "route": self.route, "first_route": first.route},
            )
            raise KeyRefused(
                "idempotency_key_reused",
                f"this {HEADER} was used for another request ({first.route}, or another body): "
                "send a new key for a new request",
                422,
            )
        if first.status is None or first.response is None:
            raise KeyRefused(
                "idempotency_key_in_use",
                f"a request with this {HEADER} is still being answered: wait for it",
                409,
                retry_after=1,
            )
        log.info(
            "request answered again under its idempotency key",
            extra={"user_id": self.user_id, "route": self.route, "status": first.status},
        )
        body = first.response
        for placeholder, secret in (restore(json.loads(body)) if restore else {}).items():
            body = body.replace(placeholder, secret)
        headers = {**json.loads(first.headers or "{}"), REPLAYED_HEADER: "true"}
        return Response(body, status_code=first.status, media_type="application/json", headers=headers)

    def answer(
        self,
        session: Session,
        status: int,
        body: str,
        headers: dict[str, str] | None = None,
        *,
        withheld: dict[str, str] | None = None,
    ) -> Response:
        """The route's answer, stored under the key (in the route's transaction) when one was sent.
        ``withheld`` maps a placeholder to a secret of the body (a download link's token) that the
        database must not hold: the placeholder is stored instead, and ``claim``'s ``restore`` puts
        the secret back when the answer is given again."""
        headers = dict(headers or {})
        if self._row is not None:
            stored = body
            for placeholder, secret in (withheld or {}).items():
                stored = stored.replace(secret, placeholder)
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == self._row)
                .values(status=status, response=stored, headers=json.dumps(headers))
            )
        return Response(body, status_code=status, media_type="application/json", headers=headers)


def forget_expired(session: Session, now: datetime) -> int:
    """Forget every key past its time, with the answer it kept (which may name a recipient)."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
