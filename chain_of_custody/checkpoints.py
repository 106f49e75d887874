"""Signed checkpoints of the ledger tip, written write-once to object storage.

A checkpoint is what makes truncation visible: whoever edits the database can rewrite its tail and
its head row, but cannot remove a locked checkpoint that names an entry and its hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.objects import ObjectStore

from .canonical import canonical_json, rfc3339
from .keys import ServiceKey, verify_signature
from .models import LedgerHead

PREFIX = "checkpoints/"


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    entry_hash: str
    at: str
    key_id: str
    signature: str

    def body(self) -> bytes:
        return canonical_json(
            {"seq": self.seq, "entry_hash": self.entry_hash, "at": self.at, "key_id": self.key_id}
        )


def write_checkpoint(
    session: Session, store: ObjectStore, key: ServiceKey, retain_days: int
) -> Checkpoint | None:
    """Record the current tip if it moved since the last checkpoint; returns what was written."""
    head = session.execute(
        select(LedgerHead).where(LedgerHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None or head.last_seq == 0 or head.last_seq == head.checkpoint_seq:
        return None
    now = datetime.now(UTC)
    unsigned = Checkpoint(head.last_seq, head.last_hash, rfc3339(now), key.key_id, "")
    cp = Checkpoint(
        unsigned.seq, unsigned.entry_hash, unsigned.at, unsigned.key_id, key.sign(unsigned.body())
    )
    payload = json.dumps(
        {
            "seq": cp.seq,
            "entry_hash": cp.entry_hash,
            "at": cp.at,
            "key_id": cp.key_id,
            "signature": cp.signature,
        }
    ).encode()
    store.put_bytes(
        f"{PREFIX}{cp.seq:015d}.json",
        payload,
        retain_until=now + timedelta(days=retain_days),
        content_type="application/json",
    )
    head.checkpoint_seq = cp.seq
    return cp


def read_checkpoints(store: ObjectStore, key: ServiceKey) -> tuple[list[Checkpoint], list[str], list[str]]:
    """All checkpoints in storage (every version, hidden or not), the names of any whose signature
    fails, and the names a delete marker hides (``ObjectStore.list_stored``)."""
    good: list[Checkpoint] = []
    bad: list[str] = []
    stored, hidden = store.list_stored(PREFIX)
    for name, version in stored:
        try:
            d = json.loads(store.get_bytes(name, version))
            cp = Checkpoint(int(d["seq"]), d["entry_hash"], d["at"], d["key_id"], d["signature"])
        except (ValueError, KeyError):
            bad.append(name)
            continue
        if verify_signature(key.public, cp.signature, cp.body()):
            good.append(cp)
        else:
            bad.append(name)
    return good, bad, hidden
