"""The one lease primitive (``storage.leases``): a lease is taken only when free, renewed and
released only by its holder, and free again once it runs out; the error envelope of a refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

import ingest.schema  # noqa: F401 - every table
from ingest.models import Upload
from storage.db import Base, Database
from storage.errors import Refused
from storage.leases import Lease, claim

WRITER = Lease(until=Upload.lease_until, holder=Upload.lease_id)
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=15)


def _upload(db: Database, upload_id: str) -> None:
    with db.session() as session:
        session.add(
            Upload(
                id=upload_id,
                dock_id="D",
                camera_serial="C",
                wearer="W",
                filename="f.mp4",
                content_type="video/mp4",
                recorded_start="",
                recorded_stop="",
                camera_sha256="0" * 64,
                signature="",
                length=1,
                part_size=1,
                object_key="k",
                s3_upload_id="u",
                expires_at=T0 + timedelta(days=1),
            )
        )


def test_a_lease_has_one_holder_until_it_runs_out(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'l.db'}")
    Base.metadata.create_all(db.engine)
    _upload(db, "u1")
    where = Upload.id == "u1"
    with db.session() as session:
        assert WRITER.take(session, where, "a", LEASE, T0)
        assert not WRITER.take(session, where, "b", LEASE, T0 + timedelta(seconds=14))
        assert not WRITER.renew(session, where, "b", LEASE, T0 + timedelta(seconds=14))
        assert WRITER.renew(session, where, "a", LEASE, T0 + timedelta(seconds=14))  # until T0 + 29 s
        assert not WRITER.take(session, where, "b", LEASE, T0 + timedelta(seconds=28))
        assert WRITER.take(session, where, "b", LEASE, T0 + timedelta(seconds=29))  # ran out: free
        WRITER.release(session, where, "a")  # not a's any more: nothing happens
        assert not WRITER.take(session, where, "c", LEASE, T0 + timedelta(seconds=30))
        WRITER.release(session, where, "b")
        assert WRITER.take(session, where, "c", LEASE, T0 + timedelta(seconds=30))
        rows = claim(session, select(Upload).where(WRITER.expired(T0 + timedelta(seconds=46))), 10)
        assert [r.id for r in rows] == ["u1"]
    db.dispose()


def test_a_refusal_is_one_envelope() -> None:
    class Busy(Refused):
        status = 503

    refused = Busy("busy", "another request is writing this upload", retry_after=5)
    assert refused.envelope() == {
        "error": "another request is writing this upload",
        "reason": "busy",
        "detail": "another request is writing this upload",
    }
    assert (refused.status, refused.response_headers()) == (503, {"Retry-After": "5"})
