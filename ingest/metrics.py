"""Prometheus metrics of the intake paths."""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

UPLOAD_BYTES = Counter("evidence_upload_bytes_total", "Clip bytes received from docks")
UPLOADS_FINISHED = Counter(
    "evidence_uploads_finished_total", "Clips finished, by evidence status", ["status"]
)
UPLOAD_REFUSALS = Counter("evidence_upload_refusals_total", "Dock requests refused, by reason", ["reason"])
REQUEST_SECONDS = Histogram("evidence_http_request_seconds", "HTTP request time", ["route"])
VIEWINGS_OPEN = Gauge(
    "evidence_viewings_open",
    "Viewings open now, over every instance (counted by each instance's housekeeping pass)",
    multiprocess_mode="livemax",
)


def exposition() -> bytes:
    """Every metric of this service, in Prometheus text format: with a telemetry process (multiprocess
    mode), the sum over both processes."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
