"""An evidence item's bytes handed out over HTTP: the read's custody entry first, then the stream.

Every route that hands out evidence bytes (the evidence content, an alarm's voice memo) answers
through :func:`item_response`, so none can skip the custody entry or the ``Range`` rules (RFC 9110:
one ``bytes=`` range, 416 when it cannot be met). Who may read which item is the caller's to decide
before calling, and whether a quarantined item may be read at all (``review_reason``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter
from sqlalchemy.orm import Session
from starlette.concurrency import iterate_in_threadpool
from starlette.types import Receive, Scope, Send

from storage.db import on_own_account
from storage.errors import Refused
from storage.slots import NoSlot

from .core import CoreServices
from .evidence import (
    BlockListAltered,
    ByteRange,
    RecordUntrusted,
    listed_blocks,
    parse_range,
    quarantine,
    quarantine_hook,
    read_item,
    record_read,
    trusted_record,
)
from .fixity import FixityCheck, ObjectAltered
from .later_lists import keep_checked_list, no_list
from .models import EvidenceItem
from .read_checks import (
    BLOCK,
    VERIFIED,
    WHOLE_CHECKS,
    WholeCheck,
    checked_blocks,
    object_key,
    verify_whole,
)
from .read_timing import ReadTiming, timed
from .viewing import ViewingKey, ViewingPolicy
from .viewings import record_range

log = logging.getLogger(__name__)


class ReadRefused(Refused):
    """Evidence that may not be served (quarantined, or its record no longer checks)."""

    status = 409
    structured = True


class ReadBusy(Refused):
    """No slot to check a whole object for a ranged read: 429 when the caller's own share is taken,
    503 when the process's is, with Retry-After either way."""

    status = 503


class ClientGone(Refused):
    """The client went away while its read waited for a whole check (nobody reads this answer)."""

    status = 499


EVIDENCE_READS = Counter("evidence_reads_total", "Evidence reads (each is a custody entry)")


class RangeRefused(Refused):
    """A ``Range`` the stored bytes cannot meet: 416 with ``Content-Range: bytes */<size>``, in the
    one error envelope like every other refusal."""

    status = 416

    def __init__(self, size: int) -> None:
        super().__init__(
            "range_not_satisfiable",
            f"the range asked for is not within the {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )


def _whole_check_starter(
    s: CoreServices, item: EvidenceItem, actor: str, where: str
) -> Callable[[WholeCheck], None]:
    """What starts a whole check of the item's object for ``VERIFIED.join``: it takes a slot of
    ``WHOLE_CHECKS`` (``ReadBusy`` when none is free: 429 when the caller's own share is taken, 503
    otherwise) and reads the object on a thread of its own, keeping its block digests when it
    matches its record and quarantining the item (once) when it does not. Once the reads waiting on
    it have their answer, a check that matched keeps the item's block list in the database, with a
    signed entry committing to it (``later_lists``), so no process checks it whole again."""
    key = object_key(item)
    on_altered = quarantine_hook(s.db, s.ledger, item.id, where)

    def start(check: WholeCheck) -> None:
        try:
            WHOLE_CHECKS.take(actor)
        except NoSlot as full:
            retry = s.settings.retry_after_seconds
            if full.mine:
                raise ReadBusy(
                    "checks_busy",
                    "reads of yours are checking whole objects; try again",
                    429,
                    retry_after=retry,
                ) from None
            raise ReadBusy(
                "checks_busy", "whole objects are being checked for others; try again", retry_after=retry
            ) from None

        def run() -> None:
            try:
                fixity, digests = verify_whole(s.store, item, check.stop)
                if fixity.ok:
                    VERIFIED.keep(key, digests)
                else:
                    on_altered(fixity)
            except BaseException as exc:  # noqa: BLE001 - handed to every reader waiting on it
                WHOLE_CHECKS.give_back(actor)
                check.result.set_exception(exc)
                return
            WHOLE_CHECKS.give_back(actor)
            check.result.set_result((fixity, digests))
            if fixity.ok:
                _keep_list(s, item, digests)

        threading.Thread(target=run, name="evidence-whole-check", daemon=True).start()

    return start


def _keep_list(
    s: CoreServices, item: EvidenceItem, digests: list[bytes], by: str = "a ranged read's whole check"
) -> None:
    """Keep the block list a whole check took (``later_lists.keep_checked_list``); a failure to keep
    it costs only the next process's whole check, so it is logged, not raised."""
    try:
        kept = keep_checked_list(s.db, s.ledger, item, digests, by)
    except Exception:  # noqa: BLE001 - on the check's own thread: nobody else would see it
        log.exception("block list not kept after a whole check", extra={"item": item.id})
        return
    if kept:
        log.info("block list kept after a whole check", extra={"item": item.id, "blocks": len(digests)})


AHEAD_FROM_BYTES = 8 * BLOCK  # smaller objects are checked whole by their first range at little cost


def _check_ahead(s: CoreServices, item: EvidenceItem, actor: str, where: str) -> None:
    """A player's first read (a ``Range`` that spans every byte: it reads the index, then seeks)
    starts the whole check its first seek would otherwise wait for, unless one is kept or running or
    no slot is free. It runs to its end with no reader waiting on it (taking a slot as any whole
    check does), so a seek seconds later finds the object's block digests kept."""
    key = object_key(item)
    if item.size < AHEAD_FROM_BYTES or VERIFIED.digests(key) is not None:
        return
    try:
        check = VERIFIED.join(key, _whole_check_starter(s, item, actor, where))
    except ReadBusy:
        return  # the first seek starts it, or is told to try again, as before
    check.result.add_done_callback(lambda _f: VERIFIED.leave(check))


def _lists_as_it_streams(session: Session, item: EvidenceItem) -> bool:
    """Whether a whole read of the item (a download, no ``Range``) takes its block digests as it
    streams: only for an object big enough to be worth a list (``AHEAD_FROM_BYTES``) that has none
    in memory or in the database, i.e. one stored before lists were kept (``later_lists``)."""
    if item.size < AHEAD_FROM_BYTES or VERIFIED.digests(object_key(item)) is not None:
        return False
    return no_list(session, item.id)


def _list_keeper(s: CoreServices, item: EvidenceItem) -> Callable[[list[bytes]], None]:
    """What a whole read that matched its record does with the block digests it took: keeps them
    in memory at once, and in the database with their ``blocks_listed`` entry on a thread of its
    own (the download's last bytes do not wait for that transaction)."""

    def keep(digests: list[bytes]) -> None:
        VERIFIED.keep(object_key(item), digests)
        threading.Thread(
            target=_keep_list, args=(s, item, digests, "a whole read"), name="evidence-keep-list", daemon=True
        ).start()

    return keep


def _no_longer_matches(item: EvidenceItem) -> ReadRefused:
    """The refusal of a read whose bytes were found not to match the item's record (it is quarantined)."""
    return ReadRefused(
        "quarantined", f"evidence item {item.id} no longer matches its record; it is quarantined"
    )


def _listed_blocks(s: CoreServices, session: Session, item: EvidenceItem) -> tuple[bytes, ...] | None:
    """The item's block list, checked against its signed record and kept as its block digests
    (``VERIFIED``), or None when it has none. An altered list is refused as an altered record is
    (409 ``record_altered``); it says nothing of the stored bytes, so the item is not quarantined."""
    try:
        listed = listed_blocks(session, s.ledger, item)
    except BlockListAltered as exc:
        log.error("evidence read refused: block list altered", extra={"item": item.id, "problem": str(exc)})
        raise
    if listed is not None:
        VERIFIED.keep(object_key(item), list(listed))
    return listed


def _listed_blocks_read(s: CoreServices, item: EvidenceItem) -> tuple[bytes, ...] | None:
    with s.db.reading() as session:
        return _listed_blocks(s, session, item)


async def _block_digests(
    s: CoreServices,
    item: EvidenceItem,
    request: Request,
    actor: str,
    where: str,
    timing: ReadTiming | None = None,
) -> tuple[bytes, ...]:
    """The object's block digests, from its block list or a whole check of it lately, or from one
    this read starts or joins (``read_checks``): refused at once when a new one finds no slot; a check whose every
    reader went away stops. A check that finds the object altered quarantines the item (once)."""
    key = object_key(item)
    kept = VERIFIED.digests(key)
    if kept is not None:
        return kept
    with timed(timing, "list"):
        listed = await asyncio.to_thread(_listed_blocks_read, s, item)
    if listed is not None:
        return listed
    kept = VERIFIED.digests(key)  # again: a whole check may have ended meanwhile
    if kept is not None:
        return kept
    check = VERIFIED.join(key, _whole_check_starter(s, item, actor, where))
    waiting = asyncio.wrap_future(check.result)
    waited = time.perf_counter()
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=0.25)
            if not waiting.done() and await request.is_disconnected():
                raise ClientGone("client_gone", "the client went away")
    finally:
        VERIFIED.leave(check)
        if timing is not None:
            timing.add("whole", time.perf_counter() - waited)
    fixity, digests = waiting.result()
    if not isinstance(fixity, FixityCheck) or not fixity.ok:
        raise _no_longer_matches(item)
    return tuple(digests)


AFTER_RECORD_WAIT_S = 30.0


def _after(recorded: threading.Event, hook: Callable[[FixityCheck], None]) -> Callable[[FixityCheck], None]:
    """``hook`` (quarantining the item) run once ``recorded`` is set: when a range's first block is
    found altered while the range is being recorded, the quarantine waits for that transaction to
    end. Both lock the item's row and the ledger's head, in turns of their own: on PostgreSQL the
    two transactions would deadlock, and the range's record be lost to a 500."""

    def altered(check: FixityCheck) -> None:
        recorded.wait(AFTER_RECORD_WAIT_S)
        hook(check)

    return altered


def _first_of(blocks: Iterator[bytes]) -> bytes | None:
    return next(blocks, None)


async def _sent_from(first: bytes | None, blocks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The first block, already read and checked, handed to the answer on the event loop (no hop to
    a worker thread before the first byte); the rest one worker thread hop a block, as Starlette
    would hand any blocking iterator over. Closing ``blocks`` is ``ClosedWithTheClient``'s."""
    if first is not None:
        yield first
    async for block in iterate_in_threadpool(blocks):
        yield block


async def _range_after_record(
    blocks: Iterator[bytes], record: Callable[[], None], item: EvidenceItem, timing: ReadTiming | None = None
) -> AsyncIterator[bytes]:
    """A range of a viewing: its first block is read from the store and checked against its block
    digest while the range is recorded on custody (two worker threads), so the store's round trip
    overlaps the database's; nothing is handed back to be sent until the record is written. A first
    block that fails its check has quarantined the item (``checked_blocks``): refused, not served."""
    loop = asyncio.get_running_loop()
    ahead = loop.run_in_executor(None, _first_of, blocks)
    try:
        with timed(timing, "record"):
            await asyncio.to_thread(record)
    except BaseException:
        # Not served: the generator is closed once its reading thread is done with it.
        def close(done: asyncio.Future[bytes | None]) -> None:
            if not done.cancelled():
                done.exception()  # looked at: an altered block has been dealt with already
            blocks.close()  # type: ignore[attr-defined]

        ahead.add_done_callback(close)
        raise
    try:
        with timed(timing, "first"):
            first = await ahead
    except ObjectAltered:
        raise _no_longer_matches(item) from None
    return _sent_from(first, blocks)


class ClosedWithTheClient(StreamingResponse):
    """A streamed read whose blocks are closed the moment its answer ends, whether sent whole or cut
    short by the client going away (a player drops a range when it seeks elsewhere): the blocks stop
    being read and checked, and their store read and its connection are given back at once, not
    whenever the garbage collector comes by. No worker thread is inside the blocks then: the thread
    reading the next block is waited for when the answer is cancelled. Closing runs on a worker
    thread (a whole read's reader thread is joined), never on the event loop. ``blocks`` is what is
    closed; ``sent`` (by default ``blocks`` itself) is what the answer sends, an asynchronous
    iterator over ``blocks`` when the first of them is already in hand."""

    def __init__(
        self, blocks: Iterator[bytes], sent: AsyncIterator[bytes] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(blocks if sent is None else sent, **kwargs)
        self._blocks = blocks
        self._sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                if self._sent is not None:
                    await self._sent.aclose()  # type: ignore[attr-defined]
                await anyio.to_thread.run_sync(_close, self._blocks)


def _close(blocks: Iterator[bytes]) -> None:
    close = getattr(blocks, "close", None)
    if close is None:
        return
    try:
        close()
    except ValueError:  # still being read by another thread: it ends with that read
        log.warning("a dropped read's blocks were still being read", exc_info=True)


def _part(byte_range: ByteRange | None, size: int) -> bool:
    """A range short of the whole object (a whole read costs what it sends, checked as it streams)."""
    return byte_range is not None and byte_range.length < size


@dataclass(frozen=True)
class ReadOf:
    """One read's particulars as :func:`item_response` takes them: the item, who reads it and why."""

    item: EvidenceItem
    actor: str
    headers: dict[str, str]
    purpose: str = "view"
    review_reason: str | None = None
    reason: str | None = None
    sign_in: str = ""
    admit: Callable[[Session], None] | None = None
    timing: ReadTiming | None = None
    # What the look-up decided, asked again where the read is recorded when that is a transaction
    # after the look-up's (``looked_up_response``: a whole read, a viewing's first range): what the
    # caller may see is decided where the read is recorded. It raises to refuse, as ``admit``.
    again: Callable[[Session], None] | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        return f"serving it to {self.actor} ({self.purpose})"

    @property
    def details(self) -> dict[str, Any] | None:
        reviewing = self.review_reason is not None
        return {"reason": self.review_reason or self.reason} if (reviewing or self.reason) else None


def _refuse(s: CoreServices, read: ReadOf, exc: RecordUntrusted) -> None:
    """Quarantine an item whose record no longer checks (in a transaction of its own)."""
    item = read.item
    log.error("evidence read refused: record altered", extra={"item": item.id, "problem": str(exc)})
    with on_own_account(), s.db.session() as other:  # the service's own: refused to nobody (``act_for``)
        quarantine(other, s.ledger, item.id, f"{exc}; found while {read.where}", {})


def _record_range_of_viewing(
    s: CoreServices, read: ReadOf, byte_range: ByteRange, within: Session | None = None
) -> dict[str, str]:
    """Record a range as part of its viewing (``viewings.record_range``; in ``within``, the range's
    look-up transaction, when given), after checking the item's record and admitting the read; the
    answer's custody headers. A record that no longer checks quarantines the item."""
    item = read.item

    def admitted(session: Session) -> None:
        trusted_record(session, s.ledger, item, seen_row=True)
        if read.admit is not None:
            read.admit(session)

    try:
        viewed = record_range(
            s.db,
            s.ledger,
            ViewingKey(item.id, read.actor, read.sign_in, read.purpose, read.reason),
            item,
            byte_range,
            ViewingPolicy.from_settings(s.settings),
            check=admitted,
            details=read.details,
            within=within,
        )
    except RecordUntrusted as exc:
        if within is not None:
            within.rollback()  # nothing of it is kept, and no lock of it held while quarantining
        _refuse(s, read, exc)
        raise
    return {
        "X-Custody-Entry": str(viewed.opened_seq),
        "X-Custody-Viewing": viewed.viewing_id,
        "X-Custody-Viewing-State": "opened" if viewed.opened else "joined",
    }


def _answer(
    read: ReadOf,
    byte_range: ByteRange | None,
    blocks: Iterator[bytes],
    sent: AsyncIterator[bytes] | None,
    recorded: dict[str, str],
) -> Response:
    """The answer to a recorded read: its headers, then its blocks as they are checked."""
    item = read.item
    EVIDENCE_READS.inc()
    # Evidence bytes are never kept in a browser's cache: a shared workstation would hold footage
    # after its viewer signed out, read by no route and on no custody record.
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store", **read.headers, **recorded}
    if read.timing is not None:
        headers["Server-Timing"] = read.timing.header()
    if read.review_reason is not None:
        headers.pop("ETag", None)
        headers["X-Evidence-Status"] = "quarantined"
    else:
        headers["X-Evidence-SHA256"] = item.sha256
    if byte_range is None:
        headers["Content-Length"] = str(item.size)
        return ClosedWithTheClient(blocks, sent, media_type=item.content_type, headers=headers)
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{item.size}"
    return ClosedWithTheClient(blocks, sent, status_code=206, media_type=item.content_type, headers=headers)


async def item_response(
    s: CoreServices,
    item: EvidenceItem,
    request: Request,
    actor: str,
    headers: dict[str, str],
    purpose: str = "view",
    *,
    review_reason: str | None = None,
    reason: str | None = None,
    sign_in: str = "",
    admit: Callable[[Session], None] | None = None,
    timing: ReadTiming | None = None,
) -> Response:
    """An item's bytes (whole, or the one ``Range`` asked for), streamed after the read's custody
    entry is written, and checked against the recorded digest as they stream: bytes that no longer
    match are cut off short of the Content-Length and the item is quarantined. A range short of the
    whole is checked block by block against digests kept from a whole check of the object
    (``read_checks``), which the first such read starts or joins (429/503 when none may start).

    ``review_reason`` reads an item already quarantined (for review: the caller decided who may), as
    it is held, unchecked, without the recorded hash as its ETag; the reason goes on custody.
    ``reason`` is why an item in good order is read (an original played in the console), on custody too.

    A ranged read is one range of a viewing (``viewings``): the first of the person's ranges of the
    item, for this purpose and reason, from this sign-in (``sign_in``, ``Principal.sign_in``) opens it
    with the ``viewed`` entry; later ones are kept as rows and sealed by its ``viewing_closed`` entry.
    Either way nothing is served before the read is recorded and the opening entry is covered by a
    stored tree head. A read of the whole object (no ``Range``, or one that spans every byte) is its
    own ``viewed`` entry, never folded into a viewing.

    The answer names the custody entry that records the read (``X-Custody-Entry``: its own entry,
    or the opening entry of its viewing) and, for a range, the viewing (``X-Custody-Viewing``) and
    whether this read opened or joined it (``X-Custody-Viewing-State``).

    ``admit`` runs once the read is admitted (its range met, its checks done), in the transaction
    that records it, before the custody entry: what it raises refuses the read and records nothing
    (a download's read grant is used up there, so a read refused before that leaves it unused).
    ``timing`` (``read_timing``) is told where the wait for the first byte went (``Server-Timing``)."""
    read = ReadOf(item, actor, headers, purpose, review_reason, reason, sign_in, admit, timing)
    try:
        byte_range = parse_range(request.headers.get("range"), item.size)
    except ValueError:
        raise RangeRefused(item.size) from None
    reviewing = review_reason is not None
    where = read.where
    digests = None
    if not reviewing and _part(byte_range, item.size):
        digests = await _block_digests(s, item, request, actor, where, timing)
    elif not reviewing and byte_range is not None:
        _check_ahead(s, item, actor, where)

    details = read.details
    # A range (not a quarantine review) is part of a viewing: one custody step for the player's many
    # ranges (``viewings``). A whole read is its own ``viewed`` entry, as is every review read.
    in_viewing = _part(byte_range, item.size) and not reviewing
    recorded: dict[str, str] = {}

    def record_range_of_viewing() -> None:
        assert byte_range is not None
        recorded.update(_record_range_of_viewing(s, read, byte_range))

    def start() -> Iterator[bytes]:
        with s.db.session() as session:
            try:
                if not reviewing:
                    trusted_record(session, s.ledger, item)
                if admit is not None:
                    admit(session)
                entry = record_read(session, s.ledger, item, actor, byte_range, purpose, details)
                recorded["X-Custody-Entry"] = str(entry.seq)
                listing = byte_range is None and not reviewing and _lists_as_it_streams(session, item)
                return read_item(
                    session,
                    s.ledger,
                    s.store,
                    item,
                    actor,
                    byte_range,
                    purpose,
                    on_altered=quarantine_hook(s.db, s.ledger, item.id, where),
                    verify=not reviewing,
                    details=details,
                    recorded=True,
                    keep_blocks=_list_keeper(s, item) if listing else None,
                )
            except RecordUntrusted as exc:
                session.rollback()
                _refuse(s, read, exc)
                raise

    sent: AsyncIterator[bytes] | None = None
    try:
        if in_viewing:
            assert byte_range is not None and digests is not None
            recorded_or_not = threading.Event()
            blocks = checked_blocks(
                s.store,
                item,
                digests,
                byte_range.start,
                byte_range.length,
                _after(recorded_or_not, quarantine_hook(s.db, s.ledger, item.id, where)),
                timing,
            )
            try:
                sent = await _range_after_record(blocks, record_range_of_viewing, item, timing)
            finally:
                recorded_or_not.set()
        else:
            with timed(timing, "record"):
                blocks = await asyncio.to_thread(start)
    except RecordUntrusted as exc:
        raise ReadRefused("record_altered", f"the item cannot be served: {exc}") from None
    return _answer(read, byte_range, blocks, sent, recorded)


# The first block of a range whose look-up and record share a worker thread is read beside them
# on one of these (the event loop's own pool cannot be handed work from a worker thread).
_FIRST_BLOCKS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="evidence-first-block")


@dataclass(frozen=True)
class _Recorded:
    """A range looked up and recorded in one transaction, its first block being read."""

    byte_range: ByteRange
    blocks: Iterator[bytes]
    first: Future[bytes | None]
    headers: dict[str, str]


def _kept_range(
    s: CoreServices, session: Session, read: ReadOf, asked: str | None
) -> tuple[ByteRange, tuple[bytes, ...]] | None:
    """The range of a viewing asked for, and the object's block digests when they are kept or its
    block list has them (read in ``session`` and kept, for a player's first read, a range of every
    byte, as well: its seeks find them); None for every other read (a whole read, a review, a bad
    range, digests to wait for)."""
    if read.review_reason is not None:
        return None
    try:
        byte_range = parse_range(asked, read.item.size)
    except ValueError:
        return None
    if byte_range is None:
        return None
    digests = VERIFIED.digests(object_key(read.item)) or _listed_blocks(s, session, read.item)
    if digests is None or not _part(byte_range, read.item.size):
        return None
    return byte_range, digests


def _unserved(blocks: Iterator[bytes]) -> Callable[[Future[bytes | None]], None]:
    def close(done: Future[bytes | None]) -> None:
        if not done.cancelled():
            done.exception()  # looked at: an altered block has been dealt with already
        blocks.close()  # type: ignore[attr-defined]

    return close


Caller = TypeVar("Caller")
_Caller_co = TypeVar("_Caller_co", covariant=True)


class SignsIn(Protocol[_Caller_co]):
    """A read's sign-in made in its look-up's transaction (``accounts.access.SignInWithin``): first,
    before that transaction begins, a caller not known a moment ago signed in (or refused) in a
    transaction that only reads, so no made-up credential takes or waits for the writer; then the
    caller, read in the session given (it raises to refuse), and then, once that transaction has
    ended, what the read found due to be written of the sign-in, in a transaction of its own."""

    def before_writing(self) -> None: ...

    def principal(self, session: Session) -> _Caller_co: ...

    def write_due(self) -> None: ...


def _look_up_and_record(
    s: CoreServices,
    asked: str | None,
    sign_in: SignsIn[Caller],
    look_up: Callable[[Session, Caller], ReadOf],
    timing: ReadTiming,
) -> tuple[ReadOf, _Recorded | None]:
    """On one worker thread, in one transaction: the caller signed in (``sign_in``), the item looked
    up and admitted (``look_up``), and, for a range of a viewing whose block digests are kept, the
    range recorded, its first block read and checked meanwhile on another thread. Otherwise only the
    sign-in and the look-up (None). A caller whose credential has not signed in a moment ago is
    signed in before that transaction, in one that only reads (``sign_in.before_writing``): one that
    is refused never begins a write transaction. What the sign-in found due to be written (a
    session's touch or end) is written after that transaction, on this thread, whether the read was
    admitted or not."""
    recorded = threading.Event()
    try:
        with timing.span("sign_in"):
            sign_in.before_writing()  # a caller not yet known is refused before the writer is taken
        with s.db.session() as session:
            with timing.span("sign_in"):
                caller = sign_in.principal(session)
            with timing.span("look"):
                read = replace(look_up(session, caller), timing=timing)
            # Detached, as a look-up of its own would leave it: a rollback here expires nothing the
            # first block's thread or the answer reads of it.
            session.expunge(read.item)
            with timing.span("list"):
                kept = _kept_range(s, session, read, asked)
            if kept is None:
                return read, None
            byte_range, digests = kept
            item = read.item
            blocks = checked_blocks(
                s.store,
                item,
                digests,
                byte_range.start,
                byte_range.length,
                _after(recorded, quarantine_hook(s.db, s.ledger, item.id, read.where)),
                timing,
            )
            first = _FIRST_BLOCKS.submit(_first_of, blocks)
            try:
                with timing.span("record"):
                    headers = _record_range_of_viewing(s, read, byte_range, within=session)
            except BaseException:
                first.add_done_callback(_unserved(blocks))  # not served: closed once its read is done
                raise
            return read, _Recorded(byte_range, blocks, first, headers)
    finally:
        recorded.set()
        sign_in.write_due()


def _both(
    first: Callable[[Session], None] | None, then: Callable[[Session], None] | None
) -> Callable[[Session], None] | None:
    """``first`` then ``then`` on one session, either of them None."""
    if first is None or then is None:
        return first or then

    def both(session: Session) -> None:
        first(session)
        then(session)

    return both


async def looked_up_response(
    s: CoreServices,
    request: Request,
    sign_in: SignsIn[Caller],
    look_up: Callable[[Session, Caller], ReadOf],
    timing: ReadTiming | None = None,
) -> Response:
    """:func:`item_response` for an item found and admitted by ``look_up`` for the caller that
    ``sign_in`` finds (either raises to refuse: not signed in, no such item, not visible, no reason),
    both in the transaction that records the read when the read is a range of a viewing whose block
    digests are kept (a player's seeks, after the first): one hop to a worker thread and one
    transaction for the sign-in, the look-up and the record, not one each. Nothing is served before
    the record is written; every other read is ``item_response``'s. ``timing`` (started as the
    request was admitted) goes out as ``Server-Timing``."""
    if timing is None:
        timing = ReadTiming()
    else:
        timing.add("sign_in", time.perf_counter() - timing.started)  # the route's dependencies
    asked = request.headers.get("range")
    try:
        read, done = await asyncio.to_thread(_look_up_and_record, s, asked, sign_in, look_up, timing)
    except RecordUntrusted as exc:
        raise ReadRefused("record_altered", f"the item cannot be served: {exc}") from None
    if done is None:
        return await item_response(
            s,
            read.item,
            request,
            read.actor,
            read.headers,
            read.purpose,
            review_reason=read.review_reason,
            reason=read.reason,
            sign_in=read.sign_in,
            admit=_both(read.again, read.admit),
            timing=timing,
        )
    try:
        with timing.span("first"):
            first = await asyncio.wrap_future(done.first)
    except ObjectAltered:
        raise _no_longer_matches(read.item) from None
    return _answer(read, done.byte_range, done.blocks, _sent_from(first, done.blocks), done.headers)
