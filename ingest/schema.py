"""Imports every package's tables so that Alembic and tests see the whole schema."""

from __future__ import annotations

import accounts.models  # noqa: F401
import alarms.models  # noqa: F401
import chain_of_custody.models  # noqa: F401
import devices.models  # noqa: F401
import incidents.export.models  # noqa: F401
import incidents.models  # noqa: F401
import incidents.subject_access.models  # noqa: F401
import ingest.models  # noqa: F401
import redaction.models  # noqa: F401
from storage.db import Base

metadata = Base.metadata
