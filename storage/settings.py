"""The one settings object: every knob is an environment variable prefixed ``EVIDENCE_``.

Nothing in the code carries configuration; the README lists each variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings, read once from the environment (and an optional ``.env``)."""

    model_config = SettingsConfigDict(env_prefix="EVIDENCE_", env_file=".env", extra="ignore")

    # Where local state lives in the zero-config default (database file, embedded S3 data, keys).
    data_dir: Path = Path("var")

    # Database: SQLite file under data_dir when unset; PostgreSQL in production.
    database_url: str | None = None

    # Object storage. Empty endpoint: start the embedded SeaweedFS S3 gateway on loopback.
    s3_endpoint: str | None = None
    s3_access_key: str = "evidence"
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    bucket: str = "evidence"
    staging_bucket: str = "evidence-staging"
    # Default COMPLIANCE retention for new evidence objects (unlinked footage class).
    retention_days: int = 31
    # Evidence linked to an incident is kept while it is open and this long after it closes.
    incident_evidence_retention_days: int = 2192
    # How often the retention sweeper deletes expired evidence and renews object locks.
    retention_sweep_seconds: int = 3600
    embedded_s3_base_port: int = 18300
    embedded_s3_memory_limit: str = "768MiB"
    # Below this many free bytes in the embedded store's disk, uploads answer 507.
    min_free_bytes: int = 512 * 1024 * 1024

    # Service signing key for the custody ledger (Ed25519, PEM, mode 0600). Never in the database.
    service_key_path: Path | None = None

    # Dock uploads.
    max_clip_bytes: int = 64 * 1024**3
    upload_part_bytes: int = 8 * 1024**2
    upload_expiry_hours: int = 72
    max_concurrent_patches: int = 64
    retry_after_seconds: int = 5
    max_metadata_bytes: int = 4096
    # How long a dock request holds an upload before another request may take it over.
    upload_lease_seconds: int = 15

    # HTTP.
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    token_ttl_minutes: int = 480
    login_max_failures: int = 5
    login_lockout_minutes: int = 15

    # MQTT broker for lone-worker devices.
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_client_id: str = "evidence-service"
    mqtt_share_group: str = "evidence"
    mqtt_embedded: bool = False
    max_clock_skew_seconds: int = 300
    max_payload_bytes: int = 16 * 1024
    alarm_ack_timeout_seconds: int = 30
    # A visit whose end check-in is this late raises missed_checkin.
    missed_checkin_grace_seconds: int = 300
    # A device silent this long during a visit or an open alarm raises device_offline.
    device_offline_after_seconds: int = 180
    low_battery_percent: int = 15
    escalation_webhook_url: str | None = None
    incident_join_minutes: int = 30

    # Incident statistics: counts below this are suppressed; the rest are rounded to this multiple.
    statistics_min_count: int = 5
    statistics_rounding: int = 5
    # Months in statistics are calendar months in this time zone.
    report_timezone: str = "Europe/London"

    # Redaction.
    redaction_enabled: bool = True
    redaction_detect_width: int = 640
    redaction_threshold: float = 0.35
    redaction_stride: int = 2
    worker_lease_seconds: int = 120
    worker_max_attempts: int = 3

    # Logging.
    log_level: str = "INFO"
    log_json: bool = False

    # Demo.
    demo_clips: int = Field(default=3, ge=0)
    admin_password: SecretStr | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'evidence.db').resolve()}"

    @property
    def resolved_service_key_path(self) -> Path:
        return self.service_key_path or (self.data_dir / "keys" / "service_ed25519.pem")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings()
