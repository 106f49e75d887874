"""One redaction of one file from a request: the path both a worker's job and ``evidence redact`` take.

The settings are the service's (``EVIDENCE_REDACTION_*``) with the request's own overrides on
top, and the request's manual regions, exclusions and audio edits go to the pipeline as they
are, so a file redacted at the command line with a job's request comes out as the job's would.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from storage.settings import WorkerSettings

from .pipeline import Progress, RedactionResult, RedactionSettings, redact_clip
from .spec import RedactionSpec


def settings_for(spec: RedactionSpec, service_settings: WorkerSettings) -> RedactionSettings:
    """The pipeline settings for a request under the service's settings."""
    return replace(RedactionSettings.from_settings(service_settings), **spec.settings)


def redact_file(
    src: str | Path,
    dst: str | Path,
    spec: RedactionSpec,
    service_settings: WorkerSettings,
    progress: Progress | None = None,
) -> RedactionResult:
    """Redact ``src`` into ``dst`` as the request ``spec`` asks."""
    return redact_clip(
        src,
        dst,
        settings_for(spec, service_settings),
        manual_regions=[r.to_region() for r in spec.manual_regions],
        exclusions=[e.to_exclusion() for e in spec.exclusions],
        audio_edits=[a.to_edit() for a in spec.audio_edits],
        progress=progress,
    )
