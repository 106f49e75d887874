"""The resumable clip upload engine behind the tus routes.

A clip streams into one S3 multipart upload in fixed-size parts, so a 2 GB clip never sits in
memory: at most one part being filled and a few being sent. Bytes that arrive after the last full
part are kept as small tail segments in the unlocked staging bucket, so an interrupted upload
resumes from the byte where it stopped, even after the service restarts or on another replica.
The digests (SHA-256 and BLAKE3, ``storage.digests``) are computed over the parts in order as they
are stored; if the process that held them is gone, the finished object is read back and hashed
instead.

One request writes an upload at a time: the one holding the upload's lease (``WRITER``). Every write
it makes is fenced by that lease: each S3 part takes a part number handed out under the lease and
never used before (so a late part of a writer that lost its lease cannot replace a part the newer
writer sent), tail segments are named after their writer, and recording progress is an update that
only matches while the writer still holds the lease. A writer that lost it is refused (409) and what
it sent is dropped; a request whose body stops arriving is ended (408) and frees the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from chain_of_custody.canonical import canonical_json
from chain_of_custody.core import CoreServices
from chain_of_custody.evidence import Provenance, record_evidence
from chain_of_custody.keys import load_public_key_b64, verify_signature
from chain_of_custody.models import EvidenceItem
from chain_of_custody.quarantines import review_only
from chain_of_custody.retention_basis import retention_basis
from devices.models import Device
from devices.seals import device_seal_key
from devices.service import ClipClaim, camera_for_clip
from storage.digests import Digests
from storage.embedded import EmbeddedSeaweed
from storage.leases import Lease
from storage.objects import StorageError, StoredObject

from .clip_facts import (
    already_recorded,
    camera_key,
    check_clip,
    clip_manifest,
    clip_standing,
    end_lease,
    received_details,
    settle_lock,
)
from .dock_share import room_for_one_more
from .metrics import UPLOAD_BYTES, UPLOADS_FINISHED
from .models import Upload
from .part_numbers import LeaseLost, issue_numbers, parts_for
from .running_hashes import RunningHashes
from .stall_watch import StallWatch
from .tus_protocol import ClipMetadata, TusRefusal, UploadState, parse_checksum
from .upload_refusals import ClientGone, Stalled, StorageFullError, UploadBusy, UploadGone, _Disconnected
from .upload_tails import drop_tails, tail_key

log = logging.getLogger(__name__)

# Runs inside the transaction that records a new clip (``ingest.services.clip_hooks``).
ClipHook = Callable[[Session, EvidenceItem], None]


class UploadParts(CoreServices, Protocol):
    """What the upload engine needs: the core, the embedded store (if any) and what runs on a clip."""

    embedded: EmbeddedSeaweed | None
    clip_hooks: list[ClipHook]


# One writer per upload, across every replica: the request holding the upload's lease.
WRITER = Lease(until=Upload.lease_until, holder=Upload.lease_id)


def _state(u: Upload) -> UploadState:
    return UploadState(u.id, u.offset, u.length, u.expires_at, u.evidence_item_id, u.evidence_status)


class UploadEngine:
    def __init__(self, services: UploadParts) -> None:
        self.s = services
        settings = services.settings
        self.hashes = RunningHashes()
        self.active = asyncio.Semaphore(settings.max_concurrent_patches)
        # Each dock's share of those slots (one event loop: no lock needed).
        self.per_dock_limit = settings.max_patches_per_dock
        self.per_dock: dict[str, int] = {}
        self.parts_in_flight = max(1, settings.upload_parts_in_flight)
        # One thread hashes every upload's parts, so each upload's parts are hashed in order.
        self.hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-hash")
        # Part uploads have threads of their own: a database call never queues behind seconds of S3
        # sends, and however many docks upload, the store sees at most this many part uploads at once.
        self.part_pool = ThreadPoolExecutor(
            max_workers=max(1, settings.upload_part_senders), thread_name_prefix="clip-part"
        )
        self.lease = timedelta(seconds=settings.upload_lease_seconds)

    # -- storage capacity --------------------------------------------------------------------
    def storage_full(self) -> bool:
        """For the embedded store the disk under data_dir is ours to watch; a remote S3 answers for itself."""
        if self.s.embedded is None:
            return False
        return shutil.disk_usage(Path(self.s.settings.data_dir)).free < self.s.settings.min_free_bytes

    # -- creation ------------------------------------------------------------------------------
    def create(self, dock: Device, meta: ClipMetadata, length: int) -> tuple[UploadState, bool]:
        """Open an upload (or return the finished one for a replayed identical clip: ``(state, True)``)."""
        settings = self.s.settings
        with self.s.db.reading() as session:  # the checks before the store only read: no write lock
            # The wearer the camera had when it recorded the clip, as its custody record says.
            claim = ClipClaim(
                meta.recorded_start,
                datetime.now(UTC),
                canonical_json(meta.manifest(length)),
                meta.signature,
                self.s.key.public_raw,
            )
            camera = camera_for_clip(
                session, meta.camera_serial, meta.wearer, device_seal_key(self.s.key), claim
            )
            vouched = camera.public_key is not None and verify_signature(
                load_public_key_b64(camera.public_key), meta.signature, canonical_json(meta.manifest(length))
            )
            # A replay is this dock's own clip, already stored: another dock's upload is never named
            # to it, and a quarantined clip may be sent again (a new upload, a new item).
            replay = session.scalar(
                select(Upload).where(
                    Upload.dock_id == dock.id,
                    Upload.camera_sha256 == meta.sha256,
                    Upload.camera_serial == meta.camera_serial,
                    Upload.signature == meta.signature,
                    Upload.length == length,
                    Upload.status == "complete",
                    Upload.evidence_status == "stored",
                )
            )
            if replay is not None:
                log.info("replayed clip upload absorbed", extra={"upload": replay.id, "dock": dock.id})
                return _state(replay), True
        if self.storage_full():
            raise StorageFullError()
        now = datetime.now(UTC)
        with self.s.db.reading() as session:
            room_for_one_more(session, dock.id, now, self.s.settings)
        upload_id = secrets.token_hex(16)
        key = f"clips/{now:%Y/%m/%d}/{upload_id}.bin"
        # The lock runs from the recording time the camera signed (bounded by now); it can only be lengthened.
        basis = retention_basis(
            meta.recorded_start, now, timedelta(days=settings.retention_days), vouched=vouched
        )
        retain_until = basis.retain_until(timedelta(days=settings.retention_days))
        s3_upload_id = self.s.store.start_multipart(key, retain_until, meta.content_type)
        upload = Upload(
            id=upload_id,
            dock_id=dock.id,
            camera_serial=meta.camera_serial,
            wearer=meta.wearer,
            filename=meta.filename,
            content_type=meta.content_type,
            recorded_start=meta.recorded_start_text,
            recorded_stop=meta.recorded_stop_text,
            camera_sha256=meta.sha256,
            signature=meta.signature,
            length=length,
            part_size=settings.upload_part_bytes,
            object_key=key,
            s3_upload_id=s3_upload_id,
            expires_at=now + timedelta(hours=settings.upload_expiry_hours),
            created_at=now,
        )
        try:
            with self.s.db.session() as session:
                # Counted again under the dock's row lock: two creations at once cannot both take the last place.
                session.get(Device, dock.id, with_for_update=True)
                room_for_one_more(session, dock.id, now, self.s.settings)
                session.add(upload)
        except TusRefusal:
            try:
                self.s.store.abort_multipart(key, s3_upload_id)
            except StorageError as exc:  # the refusal stands; the store forgets the empty upload itself
                log.warning("abort of multipart upload failed", extra={"key": key, "error": str(exc)})
            raise
        log.info("upload created", extra={"upload": upload_id, "dock": dock.id, "length": length})
        return _state(upload), False

    # -- lookup --------------------------------------------------------------------------------
    def head(self, dock: Device, upload_id: str) -> UploadState:
        with self.s.db.session() as session:
            return _state(self._get(session, dock, upload_id))

    def _get(self, session: Session, dock: Device, upload_id: str) -> Upload:
        upload = session.get(Upload, upload_id)
        if upload is None or upload.dock_id != dock.id or upload.status == "terminated":
            raise UploadGone(404, "no such upload for this dock")
        if upload.status == "expired" or (upload.status == "open" and upload.expires_at <= datetime.now(UTC)):
            raise UploadGone(410, "upload expired")
        return upload

    # -- termination -----------------------------------------------------------------------------
    def terminate(self, dock: Device, upload_id: str) -> None:
        """Discard an unfinished upload, under its writer lease as a PATCH is (never beside a request
        completing it: the clip recorded and the upload marked terminated), status read again."""
        with self.s.db.session() as session:
            upload = self._get(session, dock, upload_id)
            mine = and_(Upload.id == upload_id, Upload.dock_id == dock.id)
            if not WRITER.take(session, mine, secrets.token_hex(8), self.lease, datetime.now(UTC)):
                raise UploadBusy("another request is writing this upload")
            session.refresh(upload)
            if upload.status == "complete":
                raise TusRefusal(
                    403, "evidence_immutable", "a finished clip is evidence and cannot be deleted"
                )
            self._discard(upload)
            upload.status = "terminated"
        log.info("upload terminated", extra={"upload": upload_id, "dock": dock.id})

    def _discard(self, upload: Upload) -> None:
        try:
            self.s.store.abort_multipart(upload.object_key, upload.s3_upload_id)
        except StorageError as exc:
            log.warning("abort of multipart upload failed", extra={"upload": upload.id, "error": str(exc)})
        drop_tails(self.s.store, upload.id, json.loads(upload.staged))

    def expire(self, now: datetime | None = None) -> int:
        """Abort uploads past their expiry and not being written (a later pass takes those); returns
        how many. The store's aborts come first with no transaction open, then one short transaction
        marks them (stopped between, the next pass aborts them again, a no-op, and marks them)."""
        now = now or datetime.now(UTC)
        past_expiry = and_(Upload.status == "open", Upload.expires_at <= now, WRITER.free(now))
        with self.s.db.reading() as session:
            uploads = list(session.scalars(select(Upload).where(past_expiry)))
            session.expunge_all()  # kept as read (the read's rollback would expire them)
        if not uploads:
            return 0
        for upload in uploads:
            self._discard(upload)
        marking = update(Upload).where(Upload.id.in_([u.id for u in uploads]), past_expiry)
        with self.s.db.session() as session:
            result: Any = session.execute(marking.values(status="expired"))
        return int(result.rowcount)

    # -- leases: one writer per upload across all replicas -----------------------------------
    def _acquire(
        self, dock: Device, upload_id: str, offset: int, body_length: int | None
    ) -> tuple[str, Upload, list[int]]:
        """Take the upload's lease, only ever of this dock's own upload (another dock's is a 404), and
        in the same transaction read the upload and take the part numbers a body of ``body_length``
        bytes at ``offset`` fills (at most ``PART_NUMBER_BLOCK``; none if the body is not the next)."""
        lease = secrets.token_hex(8)
        with self.s.db.session() as session:
            upload = self._get(session, dock, upload_id)
            mine = and_(Upload.id == upload_id, Upload.dock_id == dock.id)
            if not WRITER.take(session, mine, lease, self.lease, datetime.now(UTC)):
                raise UploadBusy("another request is writing this upload")
            session.refresh(upload)
            session.expunge(upload)
            numbers: list[int] = []
            if upload.status == "open" and offset == upload.offset and body_length is not None:
                end = min(upload.offset + body_length, upload.length)
                wanted = parts_for(upload.committed, end, upload.length, upload.part_size)
                if wanted:
                    numbers = issue_numbers(session, and_(mine, Upload.lease_id == lease), wanted, self.lease)
        return lease, upload, numbers

    def _release(self, upload_id: str, lease: str) -> None:
        with self.s.db.session() as session:
            WRITER.release(session, Upload.id == upload_id, lease)

    # -- data --------------------------------------------------------------------------------------
    async def patch(
        self,
        dock: Device,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        checksum_header: str | None,
        body_length: int | None = None,
    ) -> UploadState:
        checksum = parse_checksum(checksum_header)
        if self.active.locked():
            raise UploadBusy("too many uploads in progress")
        held = self.per_dock.get(dock.id, 0)
        if held >= self.per_dock_limit:
            raise UploadBusy("this dock has as many uploads in progress as one dock may")
        self.per_dock[dock.id] = held + 1
        try:
            async with self.active:
                lease, upload, numbers = await asyncio.to_thread(
                    self._acquire, dock, upload_id, offset, body_length
                )
                try:
                    return await self._patch(upload, offset, body, checksum, lease, numbers, body_length)
                finally:
                    if upload.lease_id == lease:  # not given up in the transaction recording the clip
                        await asyncio.to_thread(self._release, upload_id, lease)
        finally:
            left = self.per_dock.pop(dock.id, 1) - 1
            if left > 0:
                self.per_dock[dock.id] = left

    async def _patch(
        self,
        upload: Upload,
        offset: int,
        body: AsyncIterator[bytes],
        checksum: tuple[str, bytes] | None,
        lease: str,
        numbers: list[int],
        body_length: int | None,
    ) -> UploadState:
        if upload.status == "complete":
            if offset != upload.length:
                raise TusRefusal(409, "offset_mismatch", f"upload is complete at offset {upload.length}")
            return _state(upload)
        if offset != upload.offset:
            raise TusRefusal(
                409, "offset_mismatch", f"Upload-Offset {offset} != current offset {upload.offset}"
            )
        if self.storage_full():
            raise StorageFullError()
        end = None if body_length is None else min(offset + body_length, upload.length)
        writer = _PartWriter(self, upload, lease, checksum, numbers, end)
        try:
            return await self._write(writer, body)
        finally:
            writer.release()

    async def _write(self, writer: _PartWriter, body: AsyncIterator[bytes]) -> UploadState:
        await writer.load_tail()
        disconnected = stalled = False
        chunks = body.__aiter__()
        stall = self.s.settings.upload_stall_seconds
        watch = StallWatch(stall)
        try:
            while True:
                try:
                    chunk = await watch.next(chunks)
                except TimeoutError:
                    stalled = True
                    break
                if chunk is None:
                    break
                if chunk:
                    await writer.feed(chunk)
        except (ClientGone, OSError):
            disconnected = True
        except BaseException:
            # Refused mid-body (past the length, lease lost): settle the parts already on their way
            # before answering, so the offset HEAD reports is final once the refusal is sent.
            await writer.abandon()
            raise
        finally:
            watch.close()
        try:
            return await writer.finish(disconnected or stalled)
        except _Disconnected:
            if stalled:
                log.info("upload stalled", extra={"upload": writer.u.id, "offset": writer.offset})
                raise Stalled(stall) from None
            raise


@dataclass
class _Pending:
    """A part on its way to S3, with the hashing of its bytes."""

    number: int
    size: int
    consumed: bool  # this part absorbed the tail segments staged by earlier requests
    upload: asyncio.Future[str]
    hashed: asyncio.Future[None] | None
    stored: asyncio.Future[Any]  # the upload and the hashing both done
    commit: asyncio.Task[None] | None = None


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _PartWriter:
    """Fills parts from the request body, sends a few to S3 at once while the next fills, records progress."""

    def __init__(
        self,
        engine: UploadEngine,
        upload: Upload,
        lease: str,
        checksum: tuple[str, bytes] | None,
        numbers: list[int],
        end: int | None,
    ) -> None:
        self.e = engine
        self.u = upload
        self.lease = lease
        self.checksum = checksum
        self.numbers = numbers  # part numbers taken under the lease, not yet used
        self.end = end  # where the body ends if it all arrives (None: not said)
        self.body_hash = hashlib.new(checksum[0]) if checksum else None
        # The part being filled: preallocated and handed to S3 whole, so bytes are copied once on arrival.
        self.buffer = bytearray(upload.part_size)
        self.fill = 0
        self.spare: list[bytearray] = []  # part buffers whose bytes are stored and hashed
        self.released = False  # the request is over: its buffers are let go (``release``)
        self.staged: list[list[Any]] = json.loads(upload.staged)
        self.staged_len = sum(int(seg[1]) for seg in self.staged)
        self.parts: list[list[object]] = json.loads(upload.parts)
        self.committed = upload.committed
        self.running = engine.hashes.take(upload.id, upload.committed)
        # With a checksum the whole request is provisional: remember where we started to roll back.
        self.start_running = self.running.copy() if (checksum and self.running is not None) else None
        self.sent = upload.committed  # bytes handed to S3 (committed once their part is confirmed)
        self.received = 0
        self.pending: list[_Pending] = []
        self.consumed_staged = False
        self.completing = False  # the body is whole: its last part is recorded by the completion's fence
        self.renewed = time.monotonic()

    async def load_tail(self) -> None:
        def read() -> bytes:
            return b"".join(self.e.s.store.stage_get(tail_key(self.u.id, seg)) for seg in self.staged)

        if self.staged:
            tail = await asyncio.to_thread(read)
            self.buffer[: len(tail)] = tail
            self.fill = len(tail)
            if self.fill != self.staged_len:
                raise StorageError("staged tail of upload is incomplete")

    @property
    def offset(self) -> int:
        return self.sent + self.fill

    async def feed(self, chunk: bytes) -> None:
        if self.offset + len(chunk) > self.u.length:
            raise TusRefusal(400, "exceeds_length", "request body goes past Upload-Length")
        self.received += len(chunk)
        if self.body_hash is not None:
            self.body_hash.update(chunk)
        UPLOAD_BYTES.inc(len(chunk))
        if time.monotonic() - self.renewed > self.e.lease.total_seconds() / 3:
            self.renewed = time.monotonic()
            await asyncio.to_thread(self._renew)
        view = memoryview(chunk)
        size = self.u.part_size
        while view:
            n = min(len(view), size - self.fill)
            self.buffer[self.fill : self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == size:
                full, self.fill = self.buffer, 0
                await self._send_part(full)
                # Taken only once the part is on its way, so a waiting upload holds no extra buffer;
                # a buffer already sent is reused (a fresh one costs page faults on every part).
                self.buffer = self.spare.pop() if self.spare else bytearray(size)

    async def _send_part(self, data: bytes | bytearray | memoryview) -> None:
        """Hash (in order, on the hashing thread) and upload a full part; a few parts travel at once.

        Waits for a free place among the parts in flight first, so the body keeps flowing into the
        next part while the earlier ones are still on their way.
        """
        await self._make_room()
        if not self.numbers:
            self.numbers = await asyncio.to_thread(self._issue_numbers)
        number = self.numbers.pop(0)
        self.sent += len(data)
        consumed = self.staged_len > 0
        self.consumed_staged = self.consumed_staged or consumed
        self.staged_len = 0
        loop = asyncio.get_running_loop()
        hashed = None
        if self.running is not None:
            hashed = loop.run_in_executor(self.e.hash_pool, self.running.update, data)
        store = self.e.s.store
        upload = loop.run_in_executor(
            self.e.part_pool, store.upload_part, self.u.object_key, self.u.s3_upload_id, number, data
        )
        upload.add_done_callback(_ignore_result)  # failures are raised through the commit chain
        stored = asyncio.gather(upload, *([hashed] if hashed is not None else []))
        if isinstance(data, bytearray) and len(data) == self.u.part_size:
            stored.add_done_callback(partial(self._reuse, buffer=data))
        else:
            stored.add_done_callback(_ignore_result)
        part = _Pending(number, len(data), consumed, upload, hashed, stored)
        previous = self.pending[-1].commit if self.pending else None
        part.commit = asyncio.create_task(self._commit(previous, part))
        part.commit.add_done_callback(_ignore_result)
        self.pending.append(part)

    async def _make_room(self) -> None:
        """Wait until fewer than ``parts_in_flight`` parts are being sent, raising any failure seen.

        A part counts as sent once S3 has it and it is hashed; recording it in the database follows
        in order without holding back the next part.
        """
        while True:
            while self.pending and self.pending[0].commit is not None and self.pending[0].commit.done():
                await self._complete_oldest()
            sending = [p.stored for p in self.pending if not p.stored.done()]
            if len(sending) < self.e.parts_in_flight:
                return
            await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)

    def _reuse(self, stored: asyncio.Future[Any], buffer: bytearray) -> None:
        """A part buffer whose bytes S3 holds and the hash has read may take the next part's bytes."""
        if not stored.cancelled() and stored.exception() is None and not self.released:
            self.spare.append(buffer)

    def release(self) -> None:
        """The request is over: its part buffers go now, even if an exception's frames keep this
        writer in a reference cycle until Python's cycle collector runs (a part on its way keeps its own)."""
        self.released = True
        self.buffer = bytearray()
        self.spare.clear()

    async def _commit(self, previous: asyncio.Task[None] | None, part: _Pending) -> None:
        """Record a part as soon as it and every part before it are stored, so the offset never skips a gap."""
        if previous is not None:
            await previous
        etag = await part.upload
        if part.hashed is not None:
            await part.hashed
        self.parts = [*self.parts, [part.number, etag]]
        self.committed += part.size
        if self.checksum is None and not (self.completing and self.committed == self.u.length):
            await asyncio.to_thread(self._record, self.committed, part.consumed)

    async def _complete_oldest(self) -> None:
        part = self.pending.pop(0)
        try:
            assert part.commit is not None
            await part.commit
        except BaseException:
            self.running = None  # a part of unknown fate: the finished object will be re-read and hashed
            self.pending.clear()
            raise

    def _renew(self) -> None:
        with self.e.s.db.session() as session:
            if not WRITER.renew(session, Upload.id == self.u.id, self.lease, self.e.lease, datetime.now(UTC)):
                raise LeaseLost()

    def _mine(self) -> ColumnElement[bool]:
        """The upload's row while this request holds its lease: every write is fenced by it."""
        return and_(Upload.id == self.u.id, Upload.lease_id == self.lease)

    def _issue_numbers(self) -> list[int]:
        """Part numbers for the parts still to come in this body (one if its length is not known)."""
        size, length = self.u.part_size, self.u.length
        wanted = 1 if self.end is None else max(1, parts_for(self.sent, self.end, length, size))
        with self.e.s.db.session() as session:
            return issue_numbers(session, self._mine(), wanted, self.e.lease)

    def _record(self, committed: int, consumed_staged: bool) -> None:
        """Persist that ``committed`` bytes are in S3 parts (and drop tail segments those parts absorbed)."""
        old = self.staged if consumed_staged else []
        if consumed_staged:
            self.staged = []
        with self.e.s.db.session() as session:
            result: Any = session.execute(
                update(Upload)
                .where(self._mine())
                .values(
                    committed=committed,
                    offset=committed + self._unsent_staged(),
                    parts=json.dumps(self.parts),
                    staged=json.dumps(self.staged),
                    lease_until=datetime.now(UTC) + self.e.lease,
                )
            )
            if result.rowcount != 1:
                raise LeaseLost()
        drop_tails(self.e.s.store, self.u.id, old)

    def _unsent_staged(self) -> int:
        return sum(int(seg[1]) for seg in self.staged)

    async def _drain(self) -> None:
        while self.pending:
            await self._complete_oldest()

    async def abandon(self) -> None:
        """The request is refused: let the parts on their way finish recording (fenced by the lease),
        keep the running digests only if every one of them was recorded, and stage nothing more."""
        settled = True
        for part in self.pending:
            try:
                assert part.commit is not None
                await part.commit
            except BaseException:  # noqa: BLE001 - the refusal being raised is the answer
                settled = False
        self.pending.clear()
        if settled and self.checksum is None:
            self.e.hashes.put(self.u.id, self.committed, self.running)

    async def finish(self, disconnected: bool) -> UploadState:
        whole = self.completing = self.offset == self.u.length and not disconnected
        try:
            if whole and self.fill:
                # The last, short part travels beside the ones still in flight.
                await self._send_part(memoryview(self.buffer)[: self.fill])
                self.fill = 0
            await self._drain()
        except BaseException:
            self.e.hashes.put(self.u.id, -1, None)
            raise
        if self.checksum is not None:
            ok = (
                not disconnected
                and self.body_hash is not None
                and self.body_hash.digest() == self.checksum[1]
            )
            if not ok:
                # Discard the whole request: its parts are never listed, the retry sends under new numbers.
                self.e.hashes.put(self.u.id, self.u.committed, self.start_running)
                if disconnected:
                    raise _Disconnected()
                raise TusRefusal(460, "checksum_mismatch", "Upload-Checksum does not match the request body")
            if not whole:  # else recorded by the completion's fence
                await asyncio.to_thread(self._record, self.committed, self.consumed_staged)
        if whole:
            return await asyncio.to_thread(self.e_complete)
        # Keep what arrived after the last full part as a new tail segment (unless nothing new came).
        new = bytes(self.buffer[self.staged_len : self.fill]) if self.staged_len <= self.fill else b""
        if new:
            start = self.committed + self.staged_len

            def stage() -> None:
                segment = [start, len(new), self.lease]
                key = tail_key(self.u.id, segment)
                self.e.s.store.stage_put(key, new)
                with self.e.s.db.session() as session:
                    result: Any = session.execute(
                        update(Upload)
                        .where(self._mine())
                        .values(offset=self.committed + self.fill, staged=json.dumps([*self.staged, segment]))
                    )
                    kept = result.rowcount == 1
                if not kept:
                    self.e.s.store.stage_delete(key)
                    raise LeaseLost()
                self.staged.append(segment)

            await asyncio.to_thread(stage)
        self.e.hashes.put(self.u.id, self.committed, self.running)
        if disconnected:
            log.info(
                "upload interrupted",
                extra={"upload": self.u.id, "offset": self.offset, "received": self.received},
            )
            raise _Disconnected()
        return UploadState(self.u.id, self.offset, self.u.length, self.u.expires_at, None, None)

    def e_complete(self) -> UploadState:
        self._record(self.committed, self.consumed_staged)  # the last fence, recording the last parts
        return complete_upload(self.e, self.u, self.parts, self.running)


def complete_upload(
    engine: UploadEngine, upload: Upload, parts: list[list[object]], running: Digests | None
) -> UploadState:
    """Finish the multipart object, check the camera's hash and signature, and record the evidence item.

    No store round trip happens inside a database transaction: on SQLite a write transaction holds
    the one write lock from its first statement, and every other completion would wait behind this
    one's round trips. The camera's key is read without the write lock, the object's lock is settled
    with no transaction open, and the item is recorded in a short transaction that finds the same
    key still enrolled (else the checks and the lock are done again with the key it finds), and
    only if the clip is not evidence already (``already_recorded``: another request recorded the
    upload meanwhile, or the dock's other upload of the same clip did). Dying after the lock is
    settled leaves what dying before the record did: no item and the upload open, which the dock's
    retry completes (the store completes the same object again)."""
    s = engine.s
    version_id = s.store.complete_multipart(
        upload.object_key,
        upload.s3_upload_id,
        [(int(n), str(etag)) for n, etag in parts],  # type: ignore[call-overload]
    )
    hashed = running or s.store.digests_of(upload.object_key, version_id, block_list=True)
    stored = StoredObject.hashed(s.store.bucket, upload.object_key, version_id, upload.length, hashed)
    start = datetime.fromisoformat(upload.recorded_start.replace("Z", "+00:00"))
    stop = datetime.fromisoformat(upload.recorded_stop.replace("Z", "+00:00"))
    keep = timedelta(days=s.settings.retention_days)
    with s.db.reading() as session:
        key = camera_key(session, upload.camera_serial, s.key)
    item: EvidenceItem | None = None
    while True:
        checks = check_clip(upload, key, stored.sha256)
        basis = retention_basis(start, upload.created_at, keep, vouched=checks.signature_ok)
        retain_until = settle_lock(s.store, stored, basis.retain_until(keep))
        with s.db.session() as session:
            row, recorded = already_recorded(session, upload, stored.sha256)
            if recorded:  # by another request meanwhile, or the clip by another upload: one item, not two
                end_lease(row, upload)
                state = _state(row)
                break
            key = camera_key(session, upload.camera_serial, s.key)
            if key != checks.camera_key:
                continue  # enrolled or re-keyed since it was read: check and settle again
            # The site the camera was enrolled at when it recorded the clip: its site's managers keep
            # it wherever the camera went since, or goes next; and why it is held for review.
            standing = clip_standing(session, upload, s.key, checks)
            item = record_evidence(
                session,
                s.ledger,
                stored,
                Provenance(
                    kind="clip",
                    actor=f"dock:{upload.dock_id}",
                    source_device_id=upload.camera_serial,
                    wearer=upload.wearer,
                    captured_start=start,
                    captured_stop=stop,
                    filename=upload.filename,
                    content_type=upload.content_type,
                    retain_until=retain_until,
                    retention_basis=basis,
                    site=standing.site,
                ),
                captured={
                    "camera": upload.camera_serial,
                    "wearer": upload.wearer,
                    "recorded_start": upload.recorded_start,
                    "recorded_stop": upload.recorded_stop,
                    "manifest": clip_manifest(upload),
                    "camera_signature": upload.signature,
                    "camera_public_key": standing.signed_by,
                },
                received=received_details(session, upload),
                quarantine_reason="; ".join(standing.reasons) or None,
                for_review=review_only(standing.reasons, standing.review),
                verified={"camera_hash_matches": True, "camera_signature_valid": checks.signature_ok},
            )
            end_lease(row, upload)
            row.status = "complete"
            row.offset = upload.length
            row.committed = upload.length
            row.evidence_item_id = item.id
            row.evidence_status = item.status
            for hook in s.clip_hooks:
                hook(session, item)
            state = _state(row)
        break
    upload.lease_id = None  # committed: the request that held it has nothing more to release
    drop_tails(s.store, upload.id, json.loads(upload.staged))
    if item is not None:
        UPLOADS_FINISHED.labels(status=item.status).inc()
        if standing.review:
            log.warning("clip kept for review", extra={"item": item.id, "review": "; ".join(standing.review)})
        log.info(
            "clip stored as evidence",
            extra={"upload": upload.id, "item": item.id, "status": item.status, "sha256": stored.sha256},
        )
    return state
