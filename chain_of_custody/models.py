"""Tables of the evidence domain: evidence items, custody entries and the ledger head."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from storage.db import Base, UTCDateTime, utcnow


def new_id() -> str:
    return str(uuid.uuid4())


class EvidenceItem(Base):
    """One stored, hashed, write-once object and what is known about where it came from."""

    __tablename__ = "evidence_items"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(
        String(32)
    )  # clip, alarm, voice_memo, redacted_clip, redaction_record, export
    status: Mapped[str] = mapped_column(String(16), default="stored")  # stored, quarantined, deleted
    quarantine_reason: Mapped[str | None] = mapped_column(Text, default=None)
    bucket: Mapped[str] = mapped_column(String(63))
    object_key: Mapped[str] = mapped_column(String(512))
    version_id: Mapped[str | None] = mapped_column(String(128), default=None)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # A second digest of the same bytes, for fast re-checks (storage.digests); None before it was kept.
    blake3: Mapped[str | None] = mapped_column(String(64), default=None)
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(128), default="application/octet-stream")
    filename: Mapped[str | None] = mapped_column(String(255), default=None)
    source_device_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    wearer: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    captured_start: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    captured_stop: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    derived_from_id: Mapped[str | None] = mapped_column(
        ForeignKey("evidence_items.id"), default=None, index=True
    )
    retain_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # HMAC under a secret the database does not hold, over the id, wearer, recording device and
    # original (``reach_seals``): a row whose seal does not hold widens nobody's reach.
    reach_seal: Mapped[str | None] = mapped_column(String(64), default=None)
    # The site whose managers see the item by site: the site its device was enrolled at when it was
    # captured (an alarm's sealed site, a camera's at upload), or its original's; covered by the reach
    # seal when present. None for items recorded before, whose reach by site follows their device now.
    site: Mapped[str | None] = mapped_column(String(64), default=None, index=True)

    __table_args__ = (
        Index("ix_evidence_items_wearer_window", "wearer", "captured_start", "captured_stop"),
        Index("ix_evidence_items_created_at_id", "created_at", "id"),  # the list, newest first
    )

    @property
    def copy_type(self) -> str:
        """As the Home Office Digital Imaging Procedure names them: the item as it arrived is the master
        copy; anything derived from it (a redacted video, its redaction record) is a working copy."""
        return "working copy" if self.derived_from_id else "master copy"


class EvidenceBlockList(Base):
    """The BLAKE3 digest of every block of an item's object (``storage.digests.BLOCK`` bytes, the
    last perhaps shorter), taken in the pass that stored it: a ranged read checks only the blocks
    its range lies in (``block_lists``). The item's signed ``stored`` entry commits to the list
    (its block size, count and the BLAKE3 of the digests one after another), so an edited list is
    found. Items stored before lists were kept have none, and ranges of them are checked whole."""

    __tablename__ = "evidence_block_lists"

    item_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    block_size: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    digests: Mapped[bytes] = mapped_column(LargeBinary)  # ``count`` digests of 32 bytes, in order


# The actions that link an item to an incident and unlink it (a partial index's predicate: a query
# that wants the index repeats this term as it is).
LINK_STEPS = "action IN ('linked', 'unlinked')"


class CustodyEntry(Base):
    """One signed, hash-chained line of the custody ledger. Never updated, never deleted."""

    __tablename__ = "custody_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    at: Mapped[str] = mapped_column(String(40))  # RFC 3339 text exactly as hashed
    action: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[str | None] = mapped_column(String(36), default=None)
    item_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    details: Mapped[str] = mapped_column(Text)  # canonical JSON text exactly as hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    item_prev_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    key_id: Mapped[str] = mapped_column(String(32))
    entry_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))

    __table_args__ = (
        UniqueConstraint("item_id", "item_seq", name="uq_custody_entries_item_seq"),
        Index("ix_custody_entries_item", "item_id", "item_seq"),
        # An item's link steps, found at every access a link grants (``incidents.access``).
        Index(
            "ix_custody_entries_link_steps",
            "item_id",
            "seq",
            sqlite_where=text(LINK_STEPS),
            postgresql_where=text(LINK_STEPS),
        ),
    )


# The ledger's own link steps for alarms (of no item), by the alarm they name: what the access rule
# looks up for each alarm link (``incidents.access.alarm_link_on_custody``), one index search
# instead of a scan of every alarm's link steps. Its predicate, as a query that wants it repeats it.
ALARM_LINK_STEPS = "item_id IS NULL AND " + LINK_STEPS


class named_alarm(FunctionElement[str]):
    """The alarm a custody entry's details name (their top-level ``alarm``, as the ledger's replay of
    link steps reads it, ``chain_of_custody.row_replay.link_key``), spelt as the index on it is
    (``ix_custody_entries_alarm_link_steps``): a query spelt otherwise is not served by it."""

    type = String()
    name = "named_alarm"
    inherit_cache = True


@compiles(named_alarm, "sqlite")
def _named_alarm_sqlite(element: named_alarm, compiler: SQLCompiler, **kw: object) -> str:
    # As text: a bare ``json_extract`` has no affinity, and compared with a text column it is not
    # looked up in an index on it.
    return f"CAST(json_extract({compiler.process(element.clauses, **kw)}, '$.alarm') AS TEXT)"


@compiles(named_alarm, "postgresql")
def _named_alarm_postgresql(element: named_alarm, compiler: SQLCompiler, **kw: object) -> str:
    return f"(({compiler.process(element.clauses, **kw)})::json ->> 'alarm')"


Index(
    "ix_custody_entries_alarm_link_steps",
    named_alarm(CustodyEntry.__table__.c.details),
    CustodyEntry.__table__.c.seq,
    sqlite_where=text(ALARM_LINK_STEPS),
    postgresql_where=text(ALARM_LINK_STEPS),
)


class LedgerHead(Base):
    """The single row that serialises appends (row lock on PostgreSQL) and remembers the chain's tip."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class ViewingSession(Base):
    """One person's ranged reads of one item, for one purpose and reason, from one sign-in: opened by
    a signed ``viewed`` entry, sealed by a signed ``viewing_closed`` entry (``viewings``). While open,
    ``open_key`` holds its key (unique: one open viewing per key); sealing clears it."""

    __tablename__ = "viewing_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    open_key: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("evidence_items.id"), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    opened_seq: Mapped[int] = mapped_column(BigInteger)  # the ``viewed`` entry that opened it
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ranges: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    closed_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)  # its ``viewing_closed`` entry
    # The chain value of its newest range (``viewing.range_mac``; the opening entry's hash before any).
    last_mac: Mapped[str | None] = mapped_column(String(64), default=None)


class ViewingRange(Base):
    """One range served in a viewing, in order (``n`` from 1); sealed by the viewing's closing entry."""

    __tablename__ = "viewing_ranges"

    viewing_id: Mapped[str] = mapped_column(ForeignKey("viewing_sessions.id"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_byte: Mapped[int] = mapped_column(BigInteger)
    last_byte: Mapped[int] = mapped_column(BigInteger)  # inclusive, as in Content-Range
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # HMAC under a secret of the service key over the range and the previous range's ``mac`` (the
    # first over the opening entry's hash): a row edited, removed or slipped in before the seal is found.
    mac: Mapped[str | None] = mapped_column(String(64), default=None)
