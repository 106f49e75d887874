"""Prometheus metrics of the intake paths."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

UPLOAD_BYTES = Counter("evidence_upload_bytes_total", "Clip bytes received from docks")
UPLOADS_FINISHED = Counter(
    "evidence_uploads_finished_total", "Clips finished, by evidence status", ["status"]
)
UPLOAD_REFUSALS = Counter("evidence_upload_refusals_total", "Dock requests refused, by reason", ["reason"])
EVIDENCE_READS = Counter("evidence_reads_total", "Evidence reads (each is a custody entry)")
REQUEST_SECONDS = Histogram("evidence_http_request_seconds", "HTTP request time", ["route"])
