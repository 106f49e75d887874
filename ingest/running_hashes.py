"""The running digests of unfinished uploads, kept by the process that received their bytes."""

from __future__ import annotations

import threading

from storage.digests import Digests


class RunningHashes:
    """Process-local digests of an upload's committed bytes, valid only at the offset they cover."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_upload: dict[str, tuple[int, Digests]] = {}

    def take(self, upload_id: str, committed: int) -> Digests | None:
        with self._lock:
            entry = self._by_upload.pop(upload_id, None)
        if entry is None:
            return Digests() if committed == 0 else None
        at, h = entry
        return h if at == committed else (Digests() if committed == 0 else None)

    def put(self, upload_id: str, committed: int, h: Digests | None) -> None:
        if h is None:
            return
        with self._lock:
            self._by_upload[upload_id] = (committed, h)
