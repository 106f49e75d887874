"""Retention runs from the recording time the camera signed, bounded by receipt (both databases, real SeaweedFS).

The lock storage reports on the object is the proof: it is COMPLIANCE and cannot be shortened afterwards,
so it must be right when the upload begins.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.retention_basis import retention_basis
from tests.clipkit import clip_metadata, enrol, sha256
from tests.test_dock_upload_e2e import tus_upload

DATA = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


def _rfc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _upload(live, start: datetime, *, bad_signature: bool = False):  # type: ignore[no-untyped-def]
    fleet = enrol(live.url, live.admin())
    meta = clip_metadata(
        fleet,
        sha256(DATA),
        len(DATA),
        recorded_start=_rfc(start),
        recorded_stop=_rfc(start + timedelta(minutes=1)),
        bad_signature=bad_signature,
    )
    before = datetime.now(UTC)
    r = tus_upload(fleet, DATA, metadata=meta)
    after = datetime.now(UTC)
    item_id = r.headers["evidence-item-id"]
    s = live.services
    with s.db.session() as session:
        item = session.get(EvidenceItem, item_id)
        assert item is not None
        stored = session.scalar(
            select(CustodyEntry).where(CustodyEntry.item_id == item_id, CustodyEntry.action == "stored")
        )
        assert stored is not None
        details = json.loads(stored.details)
    info = s.store.info(item.object_key, item.version_id)
    return item, details, info, before, after


def test_lock_runs_from_the_signed_capture_time(live) -> None:  # type: ignore[no-untyped-def]
    keep = timedelta(days=live.services.settings.retention_days)
    start = datetime.now(UTC).replace(microsecond=0) - keep / 2
    item, details, info, _, _ = _upload(live, start)
    assert info.retention_mode == "COMPLIANCE" and info.retain_until is not None
    # Storage's lock ends one retention period after the recording began, not after the upload.
    assert abs(info.retain_until - (start + keep)) <= timedelta(seconds=2), (info.retain_until, start + keep)
    assert details["retention_basis"] == {"from": "capture", "at": start.isoformat()}
    assert item.retain_until == info.retain_until  # the row says what storage holds


@pytest.mark.parametrize(
    "offset, why",
    [(timedelta(days=3650), "later than receipt"), (-timedelta(days=400), "older than the retention period")],
    ids=["future", "ancient"],
)
def test_an_implausible_capture_time_falls_back_to_receipt(live, offset: timedelta, why: str) -> None:  # type: ignore[no-untyped-def]
    keep = timedelta(days=live.services.settings.retention_days)
    start = datetime.now(UTC).replace(microsecond=0) + offset
    _, details, info, before, after = _upload(live, start)
    assert info.retain_until is not None
    assert before + keep - timedelta(seconds=1) <= info.retain_until <= after + keep + timedelta(seconds=2)
    assert details["retention_basis"]["from"] == "receipt" and why in details["retention_basis"]["note"]


def test_an_unsigned_capture_time_is_not_trusted(live) -> None:  # type: ignore[no-untyped-def]
    keep = timedelta(days=live.services.settings.retention_days)
    start = datetime.now(UTC).replace(microsecond=0) - keep / 2
    item, details, info, before, after = _upload(live, start, bad_signature=True)
    assert item.status == "quarantined"
    assert info.retain_until is not None and before + keep - timedelta(seconds=1) <= info.retain_until
    assert details["retention_basis"]["from"] == "receipt"


def test_the_bounds() -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    keep = timedelta(days=31)
    assert retention_basis(now - timedelta(days=3), now, keep).at == now - timedelta(days=3)
    assert retention_basis(None, now, keep).source == "receipt"
    assert retention_basis(now + timedelta(seconds=1), now, keep).at == now
    assert retention_basis(now - timedelta(days=32), now, keep).at == now
    assert retention_basis(now - timedelta(days=3), now, keep, vouched=False).at == now


def test_alarm_and_its_voice_memo_are_locked_from_when_the_alarm_happened(services) -> None:  # type: ignore[no-untyped-def]
    """An amber alarm the device held for half the retention period (no incident, so nothing extends it)."""
    from alarms.models import AlarmRecord
    from alarms.service import AlarmService
    from tests.test_alarms_kit import enrol as enrol_device

    keep = timedelta(days=services.settings.retention_days)
    alarms = AlarmService(services)
    device = enrol_device(services, "LW-RET")
    occurred = datetime.now(UTC).replace(microsecond=0) - keep / 2
    topic, raw = device.amber(600, occurred_at=occurred)
    event_id = json.loads(raw)["event_id"]
    result = alarms.handle(topic, raw)
    assert result.outcome == "accepted" and result.alarm_id, result
    memo = b"OggS" + bytes(range(256)) * 8
    headers = device.voice_memo_headers(event_id, memo)
    memo_id, _ = alarms.attach_voice_memo(
        "LW-RET",
        event_id,
        memo,
        content_type="audio/ogg",
        sent_at=headers["X-Device-Sent-At"],
        signature=headers["X-Device-Signature"],
    )
    with services.db.session() as session:
        alarm = session.get(AlarmRecord, result.alarm_id)
        assert alarm is not None and alarm.evidence_item_id
        items = [session.get(EvidenceItem, alarm.evidence_item_id), session.get(EvidenceItem, memo_id)]
        stored = {
            e.item_id: json.loads(e.details)
            for e in session.scalars(select(CustodyEntry).where(CustodyEntry.action == "stored"))
        }
    for item in items:
        assert item is not None
        info = services.store.info(item.object_key, item.version_id)
        assert info.retain_until is not None
        assert abs(info.retain_until - (occurred + keep)) <= timedelta(seconds=2), (
            item.kind,
            info.retain_until,
        )
        assert stored[item.id]["retention_basis"] == {"from": "capture", "at": occurred.isoformat()}
