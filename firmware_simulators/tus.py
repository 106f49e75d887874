"""A streaming tus 1.0 client (core, creation, checksum, termination) on a synchronous httpx client.

Clips are many GB and docks sit on poor hospital networks, so the client never holds a clip in
memory, always resumes from the offset the server reports, honours ``Retry-After``, and gives up
with a clear error when the server says the clip can never be stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin

import httpx

TUS_VERSION = "1.0.0"
READ_BLOCK_BYTES = 1024 * 1024
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# 4xx answers that describe a passing state, not the clip: worth another try.
RETRYABLE_4XX = frozenset({408, 423, 429})
EVIDENCE_HEADERS = ("Evidence-Item-Id", "Evidence-Status")
log = logging.getLogger(__name__)

Transform = Callable[[int, bytes], bytes]
BodyHook = Callable[[int, Iterator[bytes]], Iterator[bytes]]


class TusError(Exception):
    """An upload that could not be completed."""


class UploadRefused(TusError):
    """The server refused with a 4xx that will not change on retry (the protocol promises this)."""

    def __init__(self, status: int, method: str, url: str, reason: str | None, detail: str) -> None:
        self.status = status
        self.method = method
        self.url = url
        self.reason = reason
        self.detail = detail
        super().__init__(f"{method} {url} refused with {status} ({reason or 'no reason'}): {detail}")


class RetriesExhausted(TusError):
    """The server stayed busy or unreachable past the retry budget."""

    def __init__(self, message: str, last_status: int | None, last_error: BaseException | None) -> None:
        self.last_status = last_status
        self.last_error = last_error
        super().__init__(message)


class ProtocolViolation(TusError):
    """The server answered something tus 1.0 does not allow (e.g. an offset going backwards)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying without progress: ``max_attempts`` failures in a row or ``max_elapsed_s``.

    Both budgets reset whenever the server's offset moves forward, so a long clip on a flaky link
    still finishes while a dead server is given up on. Without ``Retry-After`` the wait is
    exponential with equal jitter (half fixed, half random) so many docks do not retry in step.
    """

    max_attempts: int = 8
    max_elapsed_s: float = 300.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    retry_after_jitter: float = 0.1

    def backoff(self, failures: int, rng: random.Random) -> float:
        """The wait before retry number ``failures`` (1-based) when the server gave no Retry-After."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** max(failures - 1, 0))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def honour(self, retry_after_s: float, rng: random.Random) -> float:
        """The wait when the server named one: never shorter, a little longer to spread the herd."""
        return retry_after_s * (1 + rng.uniform(0, self.retry_after_jitter))


@dataclass(frozen=True)
class UploadStatus:
    """What ``HEAD`` says about an upload."""

    offset: int
    length: int | None
    evidence_item_id: str | None
    evidence_status: str | None
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers)


@dataclass
class UploadResult:
    """How an upload ended and what it took to get there."""

    upload_url: str
    offset: int
    length: int
    evidence_item_id: str | None
    evidence_status: str | None
    resumes: int = 0  # times the client asked the server for its offset after a failure and went on
    attempts: int = 0  # HTTP requests made for this upload, retries included
    retries: int = 0  # failures answered by waiting or re-asking (connection errors, 5xx, 409, 460, ...)
    replay: UploadResult | None = None  # set by a dock told to send the same clip twice
    waits_s: list[float] = field(default_factory=list)


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """The tus ``Upload-Metadata`` form: ``key base64(value)`` pairs joined by commas."""
    pairs = []
    for key, value in metadata.items():
        if not key or any(ch in key for ch in " ,") or not key.isascii():
            raise ValueError(f"tus metadata key not allowed: {key!r}")
        pairs.append(f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}")
    return ",".join(pairs)


def decode_metadata(header: str) -> dict[str, str]:
    """Inverse of :func:`encode_metadata` (useful to anyone checking what was sent)."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        out[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
    return out


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or junk."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def iter_file(
    path: str | os.PathLike[str],
    start: int,
    end: int,
    *,
    block_bytes: int = READ_BLOCK_BYTES,
    transform: Transform | None = None,
) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of a file in blocks; ``transform(offset, block)`` may rewrite each block."""
    with open(path, "rb") as fh:
        fh.seek(start)
        position = start
        while position < end:
            block = fh.read(min(block_bytes, end - position))
            if not block:
                raise TusError(f"{path} ended at {position}, expected {end} bytes: did the clip change?")
            yield transform(position, block) if transform else block
            position += len(block)


@dataclass
class _Progress:
    """Failure bookkeeping for one upload; budgets reset on progress."""

    policy: RetryPolicy
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    rng: random.Random
    attempts: int = 0
    retries: int = 0
    resumes: int = 0
    failures: int = 0  # in a row, without the offset moving
    since: float = 0.0  # when the current run of failures began
    waits: list[float] = field(default_factory=list)

    def progressed(self) -> None:
        self.failures = 0

    def failed(
        self, what: str, status: int | None, error: BaseException | None, retry_after: float | None
    ) -> None:
        """Count a failure and wait before the next try, or raise when the budget is spent."""
        self.failures += 1
        self.retries += 1
        if self.failures == 1:
            self.since = self.clock()
        cause = f"HTTP {status}" if status is not None else repr(error)
        if self.failures >= self.policy.max_attempts:
            raise RetriesExhausted(
                f"{what}: gave up after {self.failures} failed attempts ({cause})", status, error
            )
        delay = (
            self.policy.honour(retry_after, self.rng)
            if retry_after is not None
            else self.policy.backoff(self.failures, self.rng)
        )
        if self.clock() - self.since + delay > self.policy.max_elapsed_s:
            raise RetriesExhausted(
                f"{what}: waiting {delay:.1f}s more would pass the {self.policy.max_elapsed_s:.0f}s budget ({cause})",
                status,
                error,
            )
        log.warning("%s failed (%s); try %d in %.2fs", what, cause, self.failures + 1, delay)
        self.waits.append(delay)
        self.sleep(delay)


class TusClient:
    """tus 1.0 against one creation endpoint.

    ``chunk_size=None`` sends the rest of the file in one PATCH; otherwise each PATCH carries at most
    ``chunk_size`` bytes and, with ``checksum``, an ``Upload-Checksum: sha256`` computed by reading the
    chunk from disk once before sending it (memory stays at one read block either way).
    ``transform`` rewrites bytes as they are read (it must be deterministic: checksums cover its output);
    ``body_hook`` wraps the iterator actually sent, for fault injection on the wire.
    """

    def __init__(
        self,
        http: httpx.Client,
        endpoint: str,
        *,
        chunk_size: int | None = None,
        checksum: bool = True,
        retry: RetryPolicy | None = None,
        block_bytes: int = READ_BLOCK_BYTES,
        transform: Transform | None = None,
        body_hook: BodyHook | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("chunk_size must be positive or None")
        self.http = http
        self.endpoint = endpoint
        self.chunk_size = chunk_size
        self.checksum = checksum
        self.retry = retry or RetryPolicy()
        self.block_bytes = block_bytes
        self.transform = transform
        self.body_hook = body_hook
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()

    # --- single requests: one HTTP exchange each, errors classified, no retry ------------------

    def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        content: Iterator[bytes] | None = None,
    ) -> httpx.Response:
        return self.http.request(
            method, url, headers={"Tus-Resumable": TUS_VERSION, **(headers or {})}, content=content
        )

    def create_once(self, length: int, metadata: Mapping[str, str]) -> httpx.Response:
        """``POST`` the creation request; the caller classifies the answer."""
        return self._request(
            "POST",
            self.endpoint,
            headers={"Upload-Length": str(length), "Upload-Metadata": encode_metadata(metadata)},
        )

    def head_once(self, url: str) -> httpx.Response:
        """``HEAD`` an upload for its offset."""
        return self._request("HEAD", url)

    def patch_once(self, path: str | os.PathLike[str], url: str, offset: int, end: int) -> httpx.Response:
        """``PATCH`` bytes ``[offset, end)`` streamed from the file; never reads more than a block at once."""
        headers = {
            "Content-Type": OFFSET_CONTENT_TYPE,
            "Upload-Offset": str(offset),
            "Content-Length": str(end - offset),
        }
        if self.checksum and self.chunk_size is not None:
            digest = hashlib.sha256()
            for block in self._blocks(path, offset, end):
                digest.update(block)
            headers["Upload-Checksum"] = "sha256 " + base64.b64encode(digest.digest()).decode("ascii")
        body = self._blocks(path, offset, end)
        if self.body_hook is not None:
            body = self.body_hook(offset, body)
        return self._request("PATCH", url, headers=headers, content=body)

    def delete(self, url: str) -> None:
        """Terminate an unfinished upload (``DELETE``); a refusal raises :class:`UploadRefused`."""
        response = self._request("DELETE", url)
        if response.status_code not in (200, 204):
            raise _refusal(response)

    def _blocks(self, path: str | os.PathLike[str], start: int, end: int) -> Iterator[bytes]:
        return iter_file(path, start, end, block_bytes=self.block_bytes, transform=self.transform)

    # --- operations with retry ---------------------------------------------------------------

    def _progress(self) -> _Progress:
        return _Progress(self.retry, self.clock, self.sleep, self.rng)

    def create(self, length: int, metadata: Mapping[str, str], progress: _Progress | None = None) -> str:
        """Create an upload and return its absolute URL, waiting out busy answers."""
        progress = progress or self._progress()
        while True:
            progress.attempts += 1
            try:
                response = self.create_once(length, metadata)
            except httpx.TransportError as exc:
                progress.failed("create", None, exc, None)
                continue
            if response.status_code == 201:
                location = response.headers.get("Location")
                if not location:
                    raise ProtocolViolation("201 Created without a Location header")
                progress.progressed()
                return urljoin(str(response.url), location)
            self._fail_or_raise("create", response, progress)

    def head(self, url: str, progress: _Progress | None = None) -> UploadStatus:
        """The server's view of an upload, waiting out busy answers; 404/410 raise :class:`UploadRefused`."""
        progress = progress or self._progress()
        while True:
            progress.attempts += 1
            try:
                response = self.head_once(url)
            except httpx.TransportError as exc:
                progress.failed("head", None, exc, None)
                continue
            if response.status_code in (200, 204):
                return _status(response)
            self._fail_or_raise("head", response, progress)

    def upload(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, str],
        *,
        length: int | None = None,
        upload_url: str | None = None,
        on_created: Callable[[str], None] | None = None,
    ) -> UploadResult:
        """Send a whole file, resuming ``upload_url`` if given, else creating a new upload.

        ``on_created`` receives the URL as soon as the server issues it, so a caller can persist it
        and resume after its own restart.
        """
        length = Path(path).stat().st_size if length is None else length
        progress = self._progress()
        if upload_url is None:
            url = self.create(length, metadata, progress)
            if on_created is not None:
                on_created(url)
            status: UploadStatus | None = None
            offset = 0
        else:
            url = upload_url
            status = self.head(url, progress)
            if status.length is not None and status.length != length:
                raise ProtocolViolation(f"{url} has Upload-Length {status.length}, file has {length}")
            offset = status.offset
        evidence = _evidence(status.headers) if status is not None else {}
        while offset < length:
            end = length if self.chunk_size is None else min(offset + self.chunk_size, length)
            progress.attempts += 1
            try:
                response = self.patch_once(path, url, offset, end)
            except httpx.TransportError as exc:
                progress.failed("patch", None, exc, None)
                offset = self._resume(url, progress, offset, evidence)
                continue
            code = response.status_code
            if code in (200, 204):
                new_offset = _offset(response)
                if not offset < new_offset <= length:
                    raise ProtocolViolation(f"PATCH at {offset} answered Upload-Offset {new_offset}")
                offset = new_offset
                evidence.update(_evidence(response.headers))
                progress.progressed()
            elif code == 409:
                progress.failed("patch", code, None, None)
                offset = self._resume(url, progress, offset, evidence)
            elif code == 460:
                progress.failed("patch", code, None, None)
            else:
                self._fail_or_raise("patch", response, progress)
                offset = self._resume(url, progress, offset, evidence)
        if len(evidence) < len(EVIDENCE_HEADERS):
            # The final answer was lost (or there was no PATCH at all): the server still knows.
            evidence.update(_evidence(self.head(url, progress).headers))
        return UploadResult(
            upload_url=url,
            offset=offset,
            length=length,
            evidence_item_id=evidence.get("Evidence-Item-Id"),
            evidence_status=evidence.get("Evidence-Status"),
            resumes=progress.resumes,
            attempts=progress.attempts,
            retries=progress.retries,
            waits_s=progress.waits,
        )

    def _resume(self, url: str, progress: _Progress, offset: int, evidence: dict[str, str]) -> int:
        """Ask where the server got to; a failed PATCH may still have stored some bytes (that is progress)."""
        status = self.head(url, progress)
        progress.resumes += 1
        if status.offset > offset:
            progress.progressed()
        evidence.update(_evidence(status.headers))
        return status.offset

    def _fail_or_raise(self, what: str, response: httpx.Response, progress: _Progress) -> None:
        code = response.status_code
        if code >= 500 or code in RETRYABLE_4XX:
            progress.failed(what, code, None, parse_retry_after(response.headers.get("Retry-After")))
            return
        raise _refusal(response)


def _offset(response: httpx.Response) -> int:
    value = response.headers.get("Upload-Offset")
    if value is None or not value.isdigit():
        raise ProtocolViolation(
            f"{response.request.method} answered without a valid Upload-Offset: {value!r}"
        )
    return int(value)


def _evidence(headers: Mapping[str, str]) -> dict[str, str]:
    """The evidence headers present in an answer (``headers`` must be case-insensitive, as httpx's are)."""
    return {name: value for name in EVIDENCE_HEADERS if (value := headers.get(name))}


def _status(response: httpx.Response) -> UploadStatus:
    length = response.headers.get("Upload-Length")
    return UploadStatus(
        offset=_offset(response),
        length=int(length) if length and length.isdigit() else None,
        evidence_item_id=response.headers.get("Evidence-Item-Id"),
        evidence_status=response.headers.get("Evidence-Status"),
        headers=response.headers,
    )


def _refusal(response: httpx.Response) -> UploadRefused:
    reason = None
    detail = response.text[:500]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = body.get("reason")
        detail = str(body.get("error") or body.get("detail") or detail)
    return UploadRefused(
        response.status_code, response.request.method, str(response.request.url), reason, detail
    )
