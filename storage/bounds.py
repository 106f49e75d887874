"""Bounds every request value is checked against before it reaches a database, and the PATCH rule on nulls.

An integer past ``DB_INT_MAX`` cannot be bound as a parameter by SQLite or PostgreSQL: unchecked, it
fails deep in the driver as a 500. Routes give each integer they take a ``le=`` from here (a test
walks the OpenAPI document for any that lacks one).

A PATCH body says what to change: a field left out is unchanged, ``null`` clears it. For a field
that cannot be empty (a name, an active flag, an incident's time), ``null`` is refused with 422 by
:class:`Patch` rather than reaching a NOT NULL column.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, model_validator

DB_INT_MAX = 2**63 - 1
"""The largest integer SQLite and PostgreSQL (``BIGINT``) hold."""

MAX_OFFSET = 10**12
"""The furthest a list may be paged into (far past any real list; well inside ``DB_INT_MAX``)."""


class Patch(BaseModel):
    """A PATCH body whose ``not_null`` fields may be left out but not set to ``null``."""

    not_null: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _refuse_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None and k in cls.not_null)
            if nulls:
                raise ValueError(f"{', '.join(nulls)} cannot be null (leave a field out to keep it)")
        return data
