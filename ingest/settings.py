"""The service's settings: storage's sections (``storage.settings``), checked against the device
protocol, and found from wherever the command is run.

``EVIDENCE_MQTT_MESSAGE_TYPES`` names device message types, which are the protocol's
(``devices.lone_worker_wire.DEVICE_TOPICS``): a typo stops the service at start instead of leaving
alarms unconsumed.

The zero-config data directory is ``./var``. A command run from another directory, with no
``EVIDENCE_DATA_DIR``, uses the project's ``var/`` when there is one (an installation from the
source tree) rather than starting a fresh, empty service beside it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import field_validator

from devices.lone_worker_wire import DEVICE_TOPICS
from incidents.exhibits import check_pattern
from storage.settings import Settings

DEFAULT_DATA_DIR = Path("var")
PROJECT_DATA_DIR = Path(__file__).resolve().parents[1] / "var"


class ServiceSettings(Settings):
    """The settings a process of the service runs with."""

    @field_validator("mqtt_message_types")
    @classmethod
    def _known_message_types(cls, value: str) -> str:
        named = [t for t in value.split(",") if t]
        unknown = sorted(set(named) - set(DEVICE_TOPICS))
        if unknown:
            raise ValueError(f"unknown type(s) {', '.join(unknown)}; known: {', '.join(DEVICE_TOPICS)}")
        return value

    @field_validator("exhibit_pattern")
    @classmethod
    def _usable_exhibit_pattern(cls, value: str) -> str:
        return check_pattern(value)


def locate_data(settings: Settings) -> Settings:
    """The settings with the project's data directory when the default one is missing here."""
    if settings.data_dir == DEFAULT_DATA_DIR and not DEFAULT_DATA_DIR.exists() and PROJECT_DATA_DIR.is_dir():
        return settings.model_copy(update={"data_dir": PROJECT_DATA_DIR})
    return settings


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    found = locate_data(ServiceSettings())
    assert isinstance(found, ServiceSettings)
    return found
