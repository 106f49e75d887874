"""Seals on device rows: what a device is and what it may speak for.

A device row's seal is an HMAC-SHA256, under a secret derived from the service key
(``ServiceKey.derived_secret(DEVICE_SEALS)``, which the database does not hold), over its id, kind,
status, the credentials it proves itself with (a lone-worker unit's or camera's public key, a
dock's token digest, a lone-worker unit's broker password hash) and whom and where it speaks for
(its site and its assigned member of staff). The service seals a row at every write of these
(enrolment, key or token rotation, a new broker password, assignment, disabling and enabling:
``devices.service``). A row written in the database by anyone else (a public key swapped for an
attacker's, a dock token planted, a disabled device enabled again, a unit moved to another member
of staff) has no seal that holds, and every use refuses it as an unknown device: a lone-worker
message (``alarms.intake``), a dock's upload (``authenticate_dock``), a camera's clip
(``camera_for_clip``), the broker's password file (``broker_accounts``).

Devices enrolled before seals existed have none: ``evidence seal-devices`` lists them and, with
``--yes``, seals them as they stand (review the list first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from chain_of_custody.keys import ServiceKey
from chain_of_custody.row_seals import (
    DEVICE_SEALS,
    SealedValues,
    device_seal,
    device_status_subject,
    seal_verdict,
)

from .ends import disabled_on_custody
from .models import Device

log = logging.getLogger(__name__)

_CACHE_MAX = 8192


def device_seal_key(key: ServiceKey) -> bytes:
    """The secret device seals are made with, derived from the service key for this purpose alone."""
    return key.derived_secret(DEVICE_SEALS)


def sealed_values(device: Device) -> SealedValues:
    """What a device row's seal covers, in order."""
    return (
        device.id,
        device.kind,
        device.status,
        device.public_key,
        device.token_hash,
        device.broker_password_hash,
        device.site,
        device.assigned_staff_id,
    )


def seal_device(device: Device, key: ServiceKey) -> None:
    """Seal ``device`` as it now stands: every write of what :func:`sealed_values` covers calls this."""
    device.seal = device_seal(device_seal_key(key), sealed_values(device))


def device_seal_holds(secret: bytes, values: SealedValues, seal: str | None) -> bool:
    """Whether a row's seal is the one the service made for its values; a warning (naming the
    device id only, never its key or token digest) when it is not."""
    return seal_verdict(device_seal(secret, values), seal, log, "device", {"device": values[0]})


class DeviceSeals:
    """Checks device seals where every message of every device passes (``alarms.intake``): the
    verdict is kept per row as read (its sealed values and seal, and the action of its latest status
    entry, ``devices.ends``), so a device's messages cost a dictionary look-up each, and a row that
    changes (by the service or by anyone else) is checked afresh, with one warning for a seal that
    does not hold or a row custody says was disabled. Nothing else is kept: custody is read with the
    row, by every message."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._verdicts: dict[tuple[SealedValues, str | None, str | None], bool] = {}
        self._subjects: dict[str, str] = {}

    def holds(self, values: SealedValues, seal: str | None, latest: str | None = None) -> bool:
        """Whether the row speaks for its device: its seal holds and, when ``latest`` (the action
        of its latest status entry) is given, custody does not say it was disabled."""
        found = self._verdicts.get((values, seal, latest))
        if found is None:
            found = device_seal_holds(self._secret, values, seal) and not disabled_on_custody(
                values[0], values[2], latest
            )
            if len(self._verdicts) >= _CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[(values, seal, latest)] = found
        return found

    @property
    def secret(self) -> bytes:
        """The secret the seals are made with (``device_seal_key``)."""
        return self._secret

    def status_subject(self, device_id: str) -> str:
        """The subject of the device's status entries (``row_seals.device_status_subject``), kept."""
        found = self._subjects.get(device_id)
        if found is None:
            found = device_status_subject(self._secret, device_id)
            if len(self._subjects) >= _CACHE_MAX:
                self._subjects.clear()
            self._subjects[device_id] = found
        return found


@dataclass(frozen=True)
class UnsealedDevice:
    """A device row without a seal, as ``evidence seal-devices`` lists it."""

    device_id: str
    kind: str
    status: str
    site: str | None
    staff_id: str | None

    def line(self) -> str:
        return (
            f"{self.kind} {self.device_id} ({self.status}), site {self.site or '-'}, "
            f"assigned to {self.staff_id or '-'}"
        )


def unsealed_devices(session: Session) -> list[UnsealedDevice]:
    """Every device without a seal (enrolled before seals), by id."""
    rows = session.scalars(select(Device).where(Device.seal.is_(None)).order_by(Device.id))
    return [UnsealedDevice(d.id, d.kind, d.status, d.site, d.assigned_staff_id) for d in rows]


def seal_devices(session: Session, key: ServiceKey) -> int:
    """Seal every device :func:`unsealed_devices` lists, as it stands; how many."""
    listed = unsealed_devices(session)
    for found in listed:
        row = session.get(Device, found.device_id)
        assert row is not None
        seal_device(row, key)
    return len(listed)
