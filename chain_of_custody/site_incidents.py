"""A security manager's sealed incidents, read when a request first needs them, not at sign-in.

A manager reads the incidents of their site whose seal holds (``incident_seals``): one HMAC and
one custody look-up a row. Read at sign-in, every request of a manager paid for every incident of
their site, ``GET /api/v1/me`` and a device list alike, and more as the site's incidents grew. So
the sign-in keeps only how to read them (:class:`SiteIncidents`, ``SiteReach.incidents``): the set
is read the first time the request asks for it (``incidents.access.incident_scope``, the export's
check), through the session the request is using then (``storage.db.session_in_use``; a read-only
one of its own when none is open), and kept for the rest of the request. What it holds is what it
held when read at sign-in: the ids whose seal holds now, so an incident moved to the site by SQL,
or an older copy of a row put back, is in it for nobody.
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from storage.db import read_only_engine, session_in_use

from .incident_seals import sealed_incidents


class SiteIncidents:
    """The ids of ``site``'s incidents whose seal holds, read on the first call and kept (one
    request's sign-in holds one: the next request reads them afresh)."""

    def __init__(self, bind: Engine | Connection, secret: bytes, site: str) -> None:
        self._bind, self._secret, self._site = bind, secret, site
        self._read: frozenset[str] | None = None
        self._lock = threading.Lock()

    @property
    def read(self) -> bool:
        """Whether the set has been read (what a test of the sign-in's cost asks)."""
        return self._read is not None

    def __call__(self) -> frozenset[str]:
        with self._lock:
            if self._read is None:
                self._read = self._from(session_in_use())
            return self._read

    def _from(self, session: Session | None) -> frozenset[str]:
        # The same database (a ``Database.reading`` block's engine carries options but shares the pool).
        if session is not None and session.get_bind().engine.pool is self._bind.engine.pool:
            return sealed_incidents(session, self._secret, self._site)
        bind = read_only_engine(self._bind) if isinstance(self._bind, Engine) else self._bind
        with Session(bind) as own:
            try:
                return sealed_incidents(own, self._secret, self._site)
            finally:
                own.rollback()
