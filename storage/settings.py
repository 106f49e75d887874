"""The one settings object: every knob is an environment variable prefixed ``EVIDENCE_``.

Nothing in the code carries configuration; the README lists each variable.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The device message types (MQTT topic leaves) of the lone-worker wire protocol.
DEVICE_MESSAGE_TYPES = ("alarm", "heartbeat", "location", "checkin", "status")


@lru_cache(maxsize=8)
def _derive_name(secret: str, purpose: str) -> str:
    """A name only those who hold ``secret`` can work out: the instances of one deployment agree on it
    without configuration, and it cannot be read off the documentation. Slow on purpose (PBKDF2), since
    it may appear in logs while the secret must not be guessable from it."""
    salt = f"evidence mqtt {purpose}".encode()
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 100_000, 10).hex()


class Settings(BaseSettings):
    """Runtime settings, read once from the environment (and an optional ``.env``)."""

    model_config = SettingsConfigDict(env_prefix="EVIDENCE_", env_file=".env", extra="ignore")

    # Where local state lives in the zero-config default (database file, embedded S3 data, keys).
    data_dir: Path = Path("var")

    # Database URL: a SQLite file under data_dir when unset; postgresql://... in production.
    database_url: str | None = None

    # S3 endpoint host:port; unset: the service starts an embedded SeaweedFS on loopback.
    s3_endpoint: str | None = None
    # S3 access key (ignored by the embedded store, which makes its own credentials).
    s3_access_key: str = "evidence"
    # S3 secret key.
    s3_secret_key: SecretStr = SecretStr("")
    # Use HTTPS to reach the S3 endpoint.
    s3_secure: bool = False
    # S3 region name.
    s3_region: str = "us-east-1"
    # Evidence bucket, created with object lock (COMPLIANCE retention on every version).
    bucket: str = "evidence"
    # Bucket without lock for the tails of unfinished uploads.
    staging_bucket: str = "evidence-staging"
    # Default COMPLIANCE retention for new evidence objects (unlinked footage class).
    retention_days: int = 31
    # Evidence linked to an incident is kept while it is open and this long after it closes.
    incident_evidence_retention_days: int = 2192
    # How often the retention sweeper deletes expired evidence and renews object locks.
    retention_sweep_seconds: int = 3600
    # First of the loopback ports the embedded SeaweedFS uses (base..base+7 and base+10000..base+10004).
    embedded_s3_base_port: int = 18300
    # Memory bound of the embedded SeaweedFS (GOMEMLIMIT).
    embedded_s3_memory_limit: str = "768MiB"
    # Below this many free bytes in the embedded store's disk, uploads answer 507.
    min_free_bytes: int = 512 * 1024 * 1024

    # Service signing key for the custody ledger (Ed25519, PEM, mode 0600). Never in the database.
    service_key_path: Path | None = None

    # Largest clip a dock may upload (413 above it).
    max_clip_bytes: int = 64 * 1024**3
    # Size of the S3 multipart parts a clip is streamed in.
    upload_part_bytes: int = 8 * 1024**2
    # Parts of one clip travelling to S3 at once (memory per upload: this many parts plus the one filling).
    upload_parts_in_flight: int = 3
    # S3 part uploads running at once across all clips (one thread each); other parts wait their turn.
    upload_part_senders: int = 8
    # An unfinished upload is abandoned after this long.
    upload_expiry_hours: int = 72
    # Dock PATCH requests streaming at once per process; beyond this the answer is 503 + Retry-After.
    max_concurrent_patches: int = 64
    # Retry-After sent with 503 answers (507 answers send twelve times this).
    retry_after_seconds: int = 5
    # Largest Upload-Metadata header accepted (431 above it).
    max_metadata_bytes: int = 4096
    # How long a dock request holds an upload before another request may take it over.
    upload_lease_seconds: int = 15

    # Address the HTTP API binds to.
    http_host: str = "127.0.0.1"
    # Port of the HTTP API.
    http_port: int = 8000
    # Lifetime of a user's bearer token.
    token_ttl_minutes: int = 480
    # A console (browser) session ends after this many minutes without the person doing anything.
    console_idle_minutes: int = Field(default=30, ge=1)
    # A console session ends this many hours after sign-in, however busy.
    console_session_hours: int = Field(default=12, ge=1)
    # Send the console's session cookie only over HTTPS (turn on whenever the service is behind TLS).
    console_secure_cookie: bool = False
    # Map tiles for the console's map, e.g. https://tiles.example.nhs.uk/{z}/{x}/{y}.png (unset: no
    # tiles; positions are drawn on a plain plotted view). Must be a server the trust runs or trusts.
    map_tile_url: str | None = None
    # Attribution shown on the map for those tiles.
    map_tile_attribution: str = ""
    # Failed logins in a row that lock an account.
    login_max_failures: int = 5
    # How long a locked account stays locked.
    login_lockout_minutes: int = 15

    # MQTT broker the lone-worker devices connect to.
    mqtt_host: str = "127.0.0.1"
    # Port of the MQTT broker.
    mqtt_port: int = 1883
    # The service's broker login (the alarm consumer runs only when this is set).
    mqtt_username: str | None = None
    # The service's broker password.
    mqtt_password: SecretStr | None = None
    # Client id of this instance's persistent MQTT session; give each instance its own. Unset: one
    # derived from the service's broker login (the same on every instance of a deployment).
    mqtt_client_id: str | None = None
    # Shared-subscription group that splits the alarm stream between instances; empty for none.
    # Unset: derived from the service's broker login, so no two deployments share one.
    mqtt_share_group: str | None = None
    # A device message sent further than this ahead of the server clock is rejected.
    max_clock_skew_seconds: int = 300
    # Largest device MQTT payload accepted.
    max_payload_bytes: int = 16 * 1024
    # An alarm nobody acknowledges in this time is escalated.
    alarm_ack_timeout_seconds: int = 30
    # A visit whose end check-in is this late raises missed_checkin.
    missed_checkin_grace_seconds: int = 300
    # A device silent this long during a visit or an open alarm raises device_offline.
    device_offline_after_seconds: int = 180
    # Battery level below which a low_battery alarm is raised.
    low_battery_percent: int = 15
    # URL that receives a JSON POST for every escalation (unset: no webhook).
    escalation_webhook_url: str | None = None
    # Run the MQTT alarm consumer in this process (needs mqtt_host and mqtt_username); the escalation
    # loop runs wherever MQTT is configured, whether or not this process consumes.
    mqtt_consumer_enabled: bool = True
    # How long the broker keeps the service's session (and queues alarms for it) while it is away.
    mqtt_session_expiry_seconds: int = 14 * 24 * 3600
    # Threads verifying and storing heartbeats, locations and status in one consumer (alarms and
    # check-ins have a worker of their own, ahead of these).
    mqtt_workers: int = 4
    # Device message types this instance consumes, comma-separated (alarm, checkin, heartbeat,
    # location, status); empty: all. Instances can split the stream by type as well as by share.
    mqtt_message_types: str = ""
    # Hand heartbeats, locations and status messages to a companion process that this one starts,
    # watches and restarts, so alarms never wait behind them for the interpreter (PostgreSQL only).
    mqtt_telemetry_process: bool = False
    # Nice increment of that companion process: the scheduler favours the alarm process over it.
    mqtt_telemetry_nice: int = Field(default=5, ge=0, le=19)
    # How often the escalation loop looks for deadlines, overdue check-ins and silent devices.
    escalation_poll_seconds: float = 0.5
    # How often a service process with live alarm streams open (the control room's boards) looks for
    # new alarm changes: the longest an alarm waits between its commit and the boards.
    alarm_stream_poll_seconds: float = Field(default=0.1, gt=0, le=5)
    # Largest amber voice memo a device may upload.
    max_voice_memo_bytes: int = 8 * 1024 * 1024
    # A red alarm joins the wearer's incident opened within this many minutes, else opens one.
    incident_join_minutes: int = 30

    # Incident statistics: counts below this are shown as "<N".
    statistics_min_count: int = 5
    # Incident statistics: other counts are rounded to this multiple.
    statistics_rounding: int = 5
    # Months in statistics are calendar months in this time zone.
    report_timezone: str = "Europe/London"

    # Queue an automatic redaction for every stored clip.
    redaction_enabled: bool = True
    # Width frames are scaled to for face detection.
    redaction_detect_width: int = 640
    # Face detector confidence threshold.
    redaction_threshold: float = 0.2
    # Run the whole-frame detector at least every Nth frame (at once after a cut); faces are tracked and re-checked in between.
    redaction_stride: int = 5
    # A worker renews its claim on a job this often; a dead worker's job is taken over after it.
    worker_lease_seconds: int = 120
    # Attempts before a redaction job is marked failed.
    worker_max_attempts: int = 3

    # Log level.
    log_level: str = "INFO"
    # Log as JSON lines instead of text.
    log_json: bool = False

    # Clips the demo records and uploads.
    demo_clips: int = Field(default=3, ge=0)
    # The demo's admin password (unset: one is generated and kept under data_dir).
    admin_password: SecretStr | None = None

    @field_validator("mqtt_share_group")
    @classmethod
    def _plain_share_group(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"[/+#\s]", value):
            raise ValueError("a share group name cannot contain '/', '+', '#' or spaces")
        return value

    @property
    def service_client_id(self) -> str:
        """This instance's MQTT client id (``mqtt_client_id``, or derived from the broker login)."""
        return self.mqtt_client_id or f"evidence-{self._derived('client id')}"

    @property
    def service_share_group(self) -> str:
        """The shared-subscription group (``mqtt_share_group``, or derived from the broker login);
        empty: no shared subscription."""
        if self.mqtt_share_group is not None:
            return self.mqtt_share_group
        return f"g{self._derived('share group')}"

    def _derived(self, purpose: str) -> str:
        password = self.mqtt_password.get_secret_value() if self.mqtt_password else ""
        return _derive_name(f"{self.mqtt_username or ''}\n{password}", purpose)

    @field_validator("mqtt_message_types")
    @classmethod
    def _known_message_types(cls, value: str) -> str:
        named = [t.strip() for t in value.split(",") if t.strip()]
        unknown = sorted(set(named) - set(DEVICE_MESSAGE_TYPES))
        if unknown:
            raise ValueError(
                f"unknown type(s) {', '.join(unknown)}; known: {', '.join(DEVICE_MESSAGE_TYPES)}"
            )
        return ",".join(named)

    def as_environment(self) -> dict[str, str]:
        """These settings as ``EVIDENCE_*`` variables, for a child process that must share them."""
        env: dict[str, str] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            if value is not None:
                env[f"EVIDENCE_{name.upper()}"] = str(value)
        return env

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
