"""The footage screens' pure parts: a download's name and a waveform's slices."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from chain_of_custody.models import EvidenceItem
from incidents.footage import content_disposition, download_name, is_original
from redaction.waveform import summarise


def _item(**kw: object) -> EvidenceItem:
    values: dict[str, object] = dict(
        id="0b6f1c1e-aaaa-bbbb-cccc-000000000001",
        kind="clip",
        content_type="video/mp4",
        filename="CAM-1_0001.mp4",
        captured_start=datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC),
        created_at=datetime(2026, 11, 22, 11, 0, tzinfo=UTC),
        derived_from_id=None,
    )
    values.update(kw)
    return EvidenceItem(**values)


def test_a_download_is_named_for_its_incident_its_capture_time_and_what_it_is() -> None:
    assert download_name(_item(), "INC-2026-0007") == "INC-2026-0007_20261122-100005Z_clip.mp4"
    copy = _item(kind="redacted_clip", filename="CAM-1_0001-redacted-v3.mp4", derived_from_id="x")
    assert download_name(copy, "INC-2026-0007") == "INC-2026-0007_20261122-100005Z_redacted-clip-v3.mp4"
    record = _item(
        kind="redaction_record", content_type="application/json", filename="redaction-record-v2.json"
    )
    assert download_name(record, None) == "no-incident_20261122-100005Z_redaction-record.json"
    undated = _item(captured_start=None)
    assert download_name(undated, None).startswith("no-incident_20261122-110000Z_")
    assert is_original(_item()) and not is_original(copy)


def test_a_download_name_is_safe_whatever_the_fields_hold() -> None:
    hostile = _item(kind='clip"; evil=1', content_type="x/y", filename='a.mp4"\r\nSet-Cookie: x=1')
    name = download_name(hostile, '../INC"\r\n')
    assert all(c.isalnum() or c in "._-" for c in name), name
    assert name.endswith("_clip-evil-1")  # no extension made of the header it tried to smuggle
    assert content_disposition(name, inline=False) == f'attachment; filename="{name}"'
    assert content_disposition(name, inline=False).count('"') == 2


def test_a_waveform_has_the_loudest_sample_and_the_rms_of_each_slice() -> None:
    rate = 8000
    loud = (np.sin(np.linspace(0, 200 * np.pi, rate)) * 16384).astype("<i2")
    samples = np.concatenate([loud, np.zeros(rate, dtype="<i2")])
    w = summarise(samples, rate, 4)
    assert w["duration"] == 2.0 and len(w["peaks"]) == 4
    assert w["peaks"][0] == pytest.approx(0.5, abs=0.01) and w["peaks"][3] == 0
    assert w["rms"][1] == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert summarise(np.zeros(0, dtype="<i2"), rate, 10)["peaks"] == []
    with pytest.raises(ValueError):
        summarise(samples, rate, 0)
