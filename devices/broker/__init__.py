"""Package data for the MQTT broker: ``evidence.conf``, the Mosquitto configuration template.

It ships inside the package so an installed service finds it; ``devices.broker_access`` fills it in.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "evidence.conf"
