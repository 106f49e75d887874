"""What every domain needs from the running service: settings, database, object store, key and ledger.

The application (``ingest.services.Services``) has these and more; a domain asks only for this
protocol, so no domain imports the application that assembles it.
"""

from __future__ import annotations

from typing import Protocol

from storage.db import Database
from storage.objects import ObjectStore
from storage.paging import Cursors
from storage.settings import Settings

from .keys import ServiceKey
from .ledger import Ledger


class CoreServices(Protocol):
    """The parts of the running service that every domain shares."""

    settings: Settings
    db: Database
    store: ObjectStore
    key: ServiceKey
    ledger: Ledger


CURSOR_SECRET = "list cursor"


def list_cursors(s: CoreServices) -> Cursors:
    """The cursors of the lists paged newest first: signed under a secret derived from the service
    key, so every instance reads the cursors any other gave."""
    return Cursors(s.key.derived_secret(CURSOR_SECRET))
