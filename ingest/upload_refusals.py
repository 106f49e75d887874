"""What an upload request may end in other than its new offset, each with the answer the tus
routes give it (``ingest.dock_api``)."""

from __future__ import annotations

from .tus_protocol import TusRefusal


class UploadBusy(Exception):
    """Another request is writing this upload, or the service is at capacity: 503 with Retry-After."""


class Stalled(TusRefusal):
    """The request body stopped arriving: the request is ended, what arrived is kept, the upload is free."""

    def __init__(self, seconds: int) -> None:
        super().__init__(408, "stalled", f"the request body sent nothing for {seconds} s; resume from HEAD")


class UploadGone(Exception):
    """Expired (410) or unknown/terminated (404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StorageFullError(Exception):
    """No room to store more footage: 507."""


class ClientGone(Exception):
    """Raised by the body iterator when the client disconnects mid-request."""


class _Disconnected(Exception):
    """The client went away; what it sent is kept (without a checksum) and nobody is left to answer."""
