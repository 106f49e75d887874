"""Write-once object storage over the ``minio`` client: object lock, streaming multipart, ranged reads.

Evidence objects go to a bucket created with object lock; every version is put under COMPLIANCE
retention so that nobody, not even an administrator, can delete it before its time. Unfinished
upload tails live in a separate staging bucket without lock, and are deleted once used.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, cast

import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE, ENABLED, GOVERNANCE
from minio.datatypes import Part
from minio.error import S3Error
from minio.objectlockconfig import DAYS, ObjectLockConfig
from minio.retention import Retention
from minio.time import from_iso8601utc

from .digests import Digests

STORAGE_FULL_CODES = {"XMinioStorageFull", "QuotaExceeded", "EntityTooLarge", "InsufficientStorage"}


class StorageError(Exception):
    """Base of object store failures the callers translate into HTTP answers."""


class StorageUnavailable(StorageError):
    """The store cannot be reached or answered 5xx: retry later, nothing is lost."""


class StorageFull(StorageError):
    """The store has no room: 507 to clients."""


class RangeNotInObject(StorageError):
    """The store holds no byte of the range asked for (S3 ``InvalidRange``): the object ends before it."""


class ObjectLocked(StorageError):
    """A delete or overwrite was refused by retention or legal hold (as it should be)."""


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    version_id: str | None
    size: int
    sha256: str
    blake3: str | None = None  # recorded since BLAKE3 fixity checks; see storage.digests
    # The BLAKE3 of every ``digests.BLOCK`` of it, taken in the pass that stored it (None: not kept).
    block_digests: tuple[bytes, ...] | None = None

    @classmethod
    def hashed(
        cls, bucket: str, key: str, version_id: str | None, size: int, digests: Digests
    ) -> StoredObject:
        """The object whose bytes ``digests`` took in (its block list too, when they kept one)."""
        sha256, blake3 = digests.hexdigests()
        return cls(bucket, key, version_id, size, sha256, blake3, digests.block_digests())


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version_id: str | None
    retention_mode: str | None
    retain_until: datetime | None
    legal_hold: bool


def _lock_date(value: str | None) -> datetime | None:
    """A HEAD's retain-until date (ISO 8601, UTC); None if absent or in a form not known here (the
    retention is then asked for on its own)."""
    try:
        return from_iso8601utc(value)
    except ValueError:
        return None


def _forget(exc: BaseException) -> None:
    """Let an expected, answered error go now, with the frames it saw.

    ``minio`` raises the error it holds in a local of the raising frame, so error, traceback and
    frame make a reference cycle, and the cycle holds every caller's frame by its ``f_back``: with
    them whatever their locals hold (a finished upload's part buffers, 32 MiB). Only Python's cycle
    collector would free them, whenever it next ran; without the traceback nothing of it is kept.
    """
    exc.__traceback__ = None


def _translate(exc: Exception) -> StorageError:
    if isinstance(exc, S3Error):
        if exc.code in STORAGE_FULL_CODES:
            return StorageFull(exc.code)
        if exc.code == "InvalidRange":
            return RangeNotInObject(f"{exc.code}: {exc.message}")
        if (
            exc.code in {"AccessDenied", "ObjectLocked", "InvalidRequest"}
            and "lock" in (exc.message or "").lower()
        ):
            return ObjectLocked(exc.message or exc.code)
        if exc.code == "AccessDenied":
            return ObjectLocked(exc.message or exc.code)
        return StorageError(f"{exc.code}: {exc.message}")
    return StorageUnavailable(f"object store unreachable: {type(exc).__name__}: {exc}")


_READ_STEPS = threading.local()
# A whole object is read this many bytes a GET (``ObjectStore.read``'s ``window``): a GET naming
# the rest of a 2 GB object held the store's answer to another GET of it up by 100-600 ms.
WHOLE_READ_WINDOW = 16 * 1024 * 1024


def _step(name: str) -> None:
    """Tell the read this thread is asking for (``ObjectStore.read``'s ``steps``) that ``name`` is done."""
    steps = getattr(_READ_STEPS, "steps", None)
    if steps is not None:
        steps(name)


class _BodyTimeout:
    """Connects within the connect timeout, then gives each block of a request body the read timeout.
    A read that asks for its steps is told when its request is sent and when its answer's headers are in.

    urllib3 sends the request body under the connect timeout, and Python's ``sendall`` counts that
    over the whole body: a 16 MiB part to a busy store failed after 5 s although bytes were moving.
    """

    body_timeout: float = 30.0
    block = 1024 * 1024
    sock: socket.socket | None

    def send(self, data):  # type: ignore[no-untyped-def]
        if self.sock is None:
            self.connect()  # type: ignore[attr-defined]
        assert self.sock is not None
        try:
            view = memoryview(data).cast("B")
        except TypeError:  # a file or an iterable: sent block by block by http.client itself
            view = None
        self.sock.settimeout(self.body_timeout)
        if view is None:
            return super().send(data)  # type: ignore[misc]
        for start in range(0, len(view), self.block):
            self.sock.sendall(view[start : start + self.block])
        return None

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super().request(*args, **kwargs)  # type: ignore[misc]
        _step("sent")
        return result

    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        _step("headers")
        return result


class _BodyTimeoutConnection(_BodyTimeout, urllib3.connection.HTTPConnection):
    pass


class _BodyTimeoutHTTPSConnection(_BodyTimeout, urllib3.connection.HTTPSConnection):
    pass


def _pool_manager(connect_s: float, read_s: float, max_connections: int) -> urllib3.PoolManager:
    """One pool of up to ``max_connections`` kept connections, with the body timeout above."""
    conn = type("Conn", (_BodyTimeoutConnection,), {"body_timeout": read_s})
    tls_conn = type("TlsConn", (_BodyTimeoutHTTPSConnection,), {"body_timeout": read_s})
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_s, read=read_s),
        maxsize=max_connections,
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
    )
    http.pool_classes_by_scheme = {
        "http": type("Pool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": conn}),
        "https": type("TlsPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": tls_conn}),
    }
    return http


def is_loopback(endpoint: str) -> bool:
    """Whether ``host:port`` names this machine's loopback interface."""
    host = endpoint.strip()
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
        host = host.split(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Client(Minio):
    """``minio``'s client, sending request bodies as ``UNSIGNED-PAYLOAD`` when asked.

    Over plain HTTP, ``minio`` puts the SHA-256 of every body in the signed headers, a second pass
    over every clip byte after the service's own hash. It guards the body in transit only where the
    store checks it (SeaweedFS does not: it stores a body whose signed hash is wrong), and on a
    loopback endpoint there is no wire to guard. Over TLS ``minio`` already sends bodies unsigned.
    What was stored is checked against the evidence hash by ``evidence verify``.
    """

    unsigned_payload = False

    def _build_headers(self, host, headers=None, body=None, creds=None):  # type: ignore[no-untyped-def]
        if not (self.unsigned_payload and body and creds):
            return super()._build_headers(host, headers, body, creds)
        headers, date = super()._build_headers(host, headers, None, creds)
        headers["Content-Length"] = str(len(body))
        headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        return headers, date


class ObjectStore:
    """Evidence bucket (locked) and staging bucket (unlocked) on one S3 endpoint."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        bucket: str,
        staging_bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        timeout_seconds: float = 30.0,
        max_connections: int = 32,
    ) -> None:
        http = _pool_manager(5.0, timeout_seconds, max_connections)
        self.endpoint = endpoint
        self.client = _Client(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self.client.unsigned_payload = is_loopback(endpoint) and not secure  # TLS: minio's own way
        self.bucket = bucket
        self.staging_bucket = staging_bucket

    # -- set-up -----------------------------------------------------------------------------
    def ensure_buckets(self, default_retention_days: int) -> None:
        """Create the locked evidence bucket and the staging bucket if missing."""
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket, object_lock=True)
            self.client.set_object_lock_config(
                self.bucket, ObjectLockConfig(COMPLIANCE, max(1, default_retention_days), DAYS)
            )
            if not self.client.bucket_exists(self.staging_bucket):
                self.client.make_bucket(self.staging_bucket)
        except Exception as exc:  # noqa: BLE001 - translated for the caller
            raise _translate(exc) from exc

    # -- multipart upload across requests --------------------------------------------------
    def start_multipart(self, key: str, retain_until: datetime, content_type: str) -> str:
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": content_type,
            "x-amz-object-lock-mode": COMPLIANCE,
            "x-amz-object-lock-retain-until-date": retain_until.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        try:
            return self.client._create_multipart_upload(self.bucket, key, headers)  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes | bytearray | memoryview
    ) -> str:
        try:
            body = cast(bytes, data)  # minio sends any buffer; its signature says bytes
            return self.client._upload_part(self.bucket, key, body, None, upload_id, part_number)  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        try:
            result = self.client._complete_multipart_upload(  # noqa: SLF001
                self.bucket, key, upload_id, [Part(n, etag) for n, etag in parts]
            )
            return result.version_id
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client._abort_multipart_upload(self.bucket, key, upload_id)  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    # -- whole objects ----------------------------------------------------------------------
    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        retain_until: datetime,
        content_type: str = "application/octet-stream",
        length: int = -1,
        part_size: int = 16 * 1024 * 1024,
    ) -> StoredObject:
        """Stream an object of known or unknown length under COMPLIANCE retention, hashing the bytes sent."""
        hashing = _HashingReader(stream)
        try:
            result = self.client.put_object(
                self.bucket,
                key,
                hashing,  # type: ignore[arg-type]
                length,
                content_type=content_type,
                part_size=part_size,
                retention=Retention(COMPLIANCE, retain_until),
            )
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc
        return StoredObject.hashed(self.bucket, key, result.version_id, hashing.digests.size, hashing.digests)

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime, content_type: str) -> StoredObject:
        return self.put_stream(
            key, io.BytesIO(data), retain_until=retain_until, content_type=content_type, length=len(data)
        )

    def read(
        self,
        key: str,
        version_id: str | None = None,
        offset: int = 0,
        length: int = 0,
        chunk: int = 1024 * 1024,
        steps: Callable[[str], None] | None = None,
        window: int = 0,
    ) -> Iterator[bytes]:
        """Stream an object (or a byte range of it) in chunks; the caller never holds the whole object.
        ``steps`` is told ``sent`` (the request written) and ``headers`` (the answer's headers in), so
        a reader waiting for its first bytes can say where the wait went.

        ``window`` (bytes) asks for the range a window at a time, the next only once the last is
        read; without a ``length``, windows until the object ends, wherever that is (a whole read
        still sees every byte the store holds). A GET of an object sent in the first half second
        after a GET that names the rest of a large object waited up to 0.6 s for its answer's
        headers from SeaweedFS (after one naming 16 MiB, as long as with none: 3-14 ms); a player's
        open range names the rest of a 2 GB clip and keeps a megabyte of it. Where the object ends
        short of the range, the bytes stop there, as they would in one GET."""
        if window <= 0 or 0 < length <= window:
            yield from self._read_once(key, version_id, offset, length, chunk, steps)
            return
        at, end = offset, offset + length if length else None
        while end is None or at < end:
            asked = window if end is None else min(window, end - at)
            got = 0
            try:
                for block in self._read_once(
                    key, version_id, at, asked, chunk, steps if at == offset else None
                ):
                    got += len(block)
                    yield block
            except RangeNotInObject:
                if at > offset or (end is None and offset == 0):
                    return  # the object ends where the last window did (or holds no byte at all)
                raise
            if got < asked:
                return  # the object ends within this window
            at += got

    def _read_once(
        self,
        key: str,
        version_id: str | None,
        offset: int,
        length: int,
        chunk: int,
        steps: Callable[[str], None] | None,
    ) -> Iterator[bytes]:
        """One GET of the object (or of ``length`` bytes from ``offset``), streamed in chunks."""
        _READ_STEPS.steps = steps
        try:
            response = self.client.get_object(
                self.bucket, key, offset=offset, length=length, version_id=version_id
            )
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc
        finally:
            _READ_STEPS.steps = None
        try:
            yield from response.stream(chunk)
        finally:
            response.close()
            response.release_conn()

    def sha256_of(self, key: str, version_id: str | None = None) -> tuple[str, int]:
        d = self.digests_of(key, version_id)
        return d.hexdigests()[0], d.size

    def digests_of(self, key: str, version_id: str | None = None, block_list: bool = False) -> Digests:
        """Both digests of a stored object, read once (an upload whose running digests were lost,
        a whole-store verification); with ``block_list``, its block digests too. Read a window at
        a time to wherever the object ends (``WHOLE_READ_WINDOW``), so a player's ranges of the
        same object meanwhile are not held up behind a GET naming all of it."""
        d = Digests(block_list)
        for block in self.read(key, version_id, chunk=4 * 1024 * 1024, window=WHOLE_READ_WINDOW):
            d.update(block)
        return d

    def info(self, key: str, version_id: str | None = None) -> ObjectInfo:
        """The object's size, version and lock as storage holds them. S3 answers a HEAD with the
        lock's mode, retain-until date and legal hold (``x-amz-object-lock-*``), so one request
        does; only what the HEAD leaves out is asked for on its own (the retention, the legal hold:
        two more round trips, the second answered with an error for every object without a hold)."""
        try:
            st = self.client.stat_object(self.bucket, key, version_id=version_id)
            headers = st.metadata or {}
            mode = headers.get("x-amz-object-lock-mode")
            until = _lock_date(headers.get("x-amz-object-lock-retain-until-date"))
            if mode is None or until is None:
                try:
                    ret = self.client.get_object_retention(self.bucket, key, version_id=version_id)
                except S3Error as exc:
                    ret = None
                    _forget(exc)
                mode, until = (ret.mode, ret.retain_until_date) if ret else (None, None)
            held = headers.get("x-amz-object-lock-legal-hold")
            if held is not None:
                hold = held.upper() == "ON"
            else:
                try:
                    hold = self.client.is_object_legal_hold_enabled(self.bucket, key, version_id=version_id)
                except S3Error as exc:  # an object without a legal hold answers with an error
                    hold = False
                    _forget(exc)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc
        return ObjectInfo(
            size=st.size or 0,
            version_id=st.version_id,
            retention_mode=mode,
            retain_until=until,
            legal_hold=bool(hold),
        )

    def set_retention(self, key: str, version_id: str | None, retain_until: datetime) -> None:
        try:
            self.client.set_object_retention(
                self.bucket, key, Retention(COMPLIANCE, retain_until), version_id=version_id
            )
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def set_legal_hold(self, key: str, version_id: str | None, on: bool) -> None:
        try:
            if on:
                self.client.enable_object_legal_hold(self.bucket, key, version_id=version_id)
            else:
                self.client.disable_object_legal_hold(self.bucket, key, version_id=version_id)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def delete_version(self, key: str, version_id: str | None) -> None:
        """Delete one version; refused by storage (ObjectLocked) while retention or legal hold applies."""
        try:
            self.client.remove_object(self.bucket, key, version_id=version_id)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def list_keys(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Names under ``prefix`` (in name order), only those after ``start_after`` when given."""
        try:
            return [
                o.object_name
                for o in self.client.list_objects(
                    self.bucket, prefix=prefix, recursive=True, start_after=start_after
                )
            ]
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def list_stored(
        self, prefix: str, start_after: str | None = None
    ) -> tuple[list[tuple[str, str | None]], list[str]]:
        """Every version under ``prefix`` that holds bytes, as (name, version) in name order, and the
        names a delete marker hides. A locked object cannot be removed, but a delete without a
        version hides its name from a plain listing and a plain read; what must not go unseen (tree
        heads, checkpoints) is listed and read by version, and a hidden name is itself a finding."""
        kept: list[tuple[str, str | None]] = []
        hidden: set[str] = set()
        try:
            for o in self.client.list_objects(
                self.bucket, prefix=prefix, recursive=True, start_after=start_after, include_version=True
            ):
                if o.is_delete_marker:
                    hidden.add(o.object_name or "")
                else:
                    kept.append((o.object_name or "", o.version_id))
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc
        return sorted(kept, key=lambda k: (k[0], k[1] or "")), sorted(hidden)

    def get_bytes(self, key: str, version_id: str | None = None) -> bytes:
        return b"".join(self.read(key, version_id))

    # -- staging (unlocked) ----------------------------------------------------------------
    def stage_put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(self.staging_bucket, key, io.BytesIO(data), len(data))
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def stage_get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.staging_bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc

    def stage_delete(self, key: str) -> None:
        try:
            self.client.remove_object(self.staging_bucket, key)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc


class _HashingReader:
    """File-like wrapper that hashes and counts what the uploader reads."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digests = Digests()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digests.update(data)
        return data


__all__ = [
    "COMPLIANCE",
    "ENABLED",
    "GOVERNANCE",
    "ObjectInfo",
    "ObjectLocked",
    "ObjectStore",
    "RangeNotInObject",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "StoredObject",
]
