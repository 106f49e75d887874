"""Rows read in pages in a total order, for reads that judge each row before it counts.

A read that takes "the first N" by a column SQL can set (a receipt time, a raise time) and only
then drops the rows no seal vouches for lets rows written in the database with early times fill
all N places: genuine rows are crowded out, for good. Such a read takes rows page by page
instead, ordered by that column and the row's id (a total order, so a page boundary skips nothing
and repeats nothing), and stops once it has N rows it kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from chain_of_custody.raise_seals import receipt_holds, recorded_device_keys, sealed_device_key, signed_by

PAGE = 500  # rows read at a time

T = TypeVar("T")


def in_pages(
    session: Session,
    q: Select[*tuple[Any, ...]],
    at: InstrumentedAttribute[Any],
    key: InstrumentedAttribute[Any],
    *,
    entities: bool = False,
    page: int = PAGE,
    newest_first: bool = False,
) -> Iterator[Any]:
    """The rows ``q`` selects, ordered by ``at`` then ``key`` (both among what each row holds, by
    name; ``entities``: ``q`` selects one mapped class, whose objects are yielded; ``newest_first``:
    both descending), read ``page`` at a time as the caller takes them."""
    current = q
    order = (at.desc(), key.desc()) if newest_first else (at, key)
    while True:
        result = session.execute(current.order_by(*order).limit(page))
        rows = list(result.scalars() if entities else result)
        yield from rows
        if len(rows) < page:
            return
        last_at, last_key = getattr(rows[-1], at.key), getattr(rows[-1], key.key)
        if newest_first:
            current = q.where(and_(at <= last_at, or_(at < last_at, key < last_key)))
        else:
            current = q.where(or_(at > last_at, and_(at == last_at, key > last_key)))


def first_kept(rows: Iterable[T], keep: Callable[[T], bool], limit: int, skip: int = 0) -> list[T]:
    """The first ``limit`` of ``rows`` that ``keep`` keeps, past the first ``skip`` it keeps: every
    row judged before it counts, and no more read than that takes (``rows`` from :func:`in_pages`)."""
    out: list[T] = []
    if limit <= 0:
        return out
    for row in rows:
        if not keep(row):
            continue
        if skip > 0:
            skip -= 1
            continue
        out.append(row)
        if len(out) == limit:
            break
    return out


class DevicesWord:
    """Whether a stored device message's row is its device's word, judged cheaply enough to judge
    every row such a read meets: the service's seal of its receipt holds, or its bytes are signed
    by its device's key (its sealed row's) or a key its enrolments record, read once per device
    (``chain_of_custody.raise_seals``). A row written in the database is neither, and is passed
    over before it counts. Only what comes first is decided here: what is shown or stored of a row
    is judged again by the reader (a key since retired, say)."""

    def __init__(self, session: Session, devices_secret: bytes, public: bytes) -> None:
        self.session, self.secret, self.public = session, devices_secret, public
        self.keys: dict[str, list[str]] = {}

    def __call__(self, row: Any) -> bool:
        if receipt_holds(self.secret, row):
            return True
        if row.raw is None:
            return False
        device_id, event_id = str(row.device_id), str(row.event_id)
        keys = self.keys.get(device_id)
        if keys is None:
            current = sealed_device_key(self.session, self.secret, device_id)
            enrolled = recorded_device_keys(self.session, self.secret, self.public, device_id)
            keys = self.keys[device_id] = [k for k in (current, *(e.key for e in enrolled)) if k]
        return any(signed_by(bytes(row.raw), key, device_id, event_id) for key in keys)
