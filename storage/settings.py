"""The one settings object: every knob is an environment variable prefixed ``EVIDENCE_``.

Nothing in the code carries configuration. The settings come in sections (one class each, with a
description for every field); :class:`Settings` is all of them, so every variable keeps its flat
name (``EVIDENCE_MQTT_HOST``), and a part of the service that needs only one section may say so in
its types. The README's table is made from the descriptions (``scripts/settings_doc.py``).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


@lru_cache(maxsize=8)
def _derive_name(secret: str, purpose: str) -> str:
    """A name only those who hold ``secret`` can work out: the instances of one deployment agree on it
    without configuration, and it cannot be read off the documentation. Slow on purpose (PBKDF2), since
    it may appear in logs while the secret must not be guessable from it."""
    salt = f"evidence mqtt {purpose}".encode()
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 100_000, 10).hex()


class _Section(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVIDENCE_", env_file=".env", extra="ignore")


class LocalStateSettings(_Section):
    """Local state and the database."""

    data_dir: Path = Field(
        Path("var"),
        description="Where local state lives in the zero-config default (database file, embedded S3 data, keys).",
    )
    database_url: str | None = Field(
        None,
        description="Database URL: a SQLite file under data_dir when unset; postgresql://... in production.",
    )
    service_key_path: Path | None = Field(
        None,
        description="Service signing key for the custody ledger (Ed25519, PEM, mode 0600). Never in the database.",
    )


class ObjectStorageSettings(_Section):
    """Object storage (S3)."""

    s3_endpoint: str | None = Field(
        None,
        description="S3 endpoint host:port; unset: the service starts an embedded SeaweedFS on loopback.",
    )
    s3_access_key: str = Field(
        "evidence",
        description="S3 access key (ignored by the embedded store, which makes its own credentials).",
    )
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    s3_secure: bool = Field(False, description="Use HTTPS to reach the S3 endpoint.")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    bucket: str = Field(
        "evidence",
        description="Evidence bucket, created with object lock (COMPLIANCE retention on every version).",
    )
    staging_bucket: str = Field(
        "evidence-staging", description="Bucket without lock for the tails of unfinished uploads."
    )
    embedded_s3_base_port: int = Field(
        18300,
        description="First of the loopback ports the embedded SeaweedFS uses (base..base+7 and base+10000..base+10004).",
    )
    embedded_s3_memory_limit: str = Field(
        "768MiB", description="Memory bound of the embedded SeaweedFS (GOMEMLIMIT)."
    )
    min_free_bytes: int = Field(
        512 * 1024 * 1024,
        description="Below this many free bytes in the embedded store's disk, uploads answer 507.",
    )


class RetentionSettings(_Section):
    """Retention."""

    retention_days: int = Field(
        31, description="Default COMPLIANCE retention for new evidence objects (unlinked footage class)."
    )
    incident_evidence_retention_days: int = Field(
        2192,
        description="Evidence linked to an incident is kept while it is open and this long after it closes.",
    )
    retention_sweep_seconds: int = Field(
        3600, description="How often the retention sweeper deletes expired evidence and renews object locks."
    )
    position_trail_retention_days: int = Field(
        90,
        ge=1,
        description="A lone-worker position trail point is forgotten this long after it was taken "
        "(never while its device has an alarm open; the alarm keeps the fix it was raised with).",
    )
    ended_session_retention_days: int = Field(
        30,
        ge=1,
        description="A console sign-in session's row is forgotten this long after it ended or expired.",
    )
    personal_data_sweep_seconds: int = Field(
        3600, ge=1, description="How often one instance forgets old trail points and console sessions."
    )


class ExhibitSettings(_Section):
    """Exhibit references and continuity reports."""

    exhibit_pattern: str = Field(
        "{initials}/{n}",
        min_length=3,
        max_length=40,
        description="How an evidence item's exhibit reference in an incident is written: {initials} of its "
        "producer (the wearer who recorded it), {n} their next number in the incident (required), "
        "{incident} the incident's reference, {year} its year. For example {incident}/{initials}/{n}.",
    )
    continuity_max_items: int = Field(
        500,
        ge=1,
        description="Most evidence items one continuity report or statement may cover (an incident's); "
        "more is refused (413 report_too_large) before anything is read or recorded.",
    )
    continuity_max_entries: int = Field(
        20000,
        ge=1,
        description="Most custody entries one continuity report or statement may set out, over all its "
        "items; more is refused (413 report_too_large): page through GET /evidence/{id}/custody instead.",
    )


class ViewingSettings(_Section):
    """Viewing evidence in a player (ranged reads)."""

    viewing_idle_minutes: int = Field(
        10,
        ge=1,
        description="A viewing (one person's ranged reads of one item, for one purpose and reason, from one "
        "sign-in) is closed and sealed on custody this long after its last range; the next read opens a new one.",
    )
    viewing_longest_minutes: int = Field(
        10,
        ge=1,
        description="A viewing is sealed this long after it opened however busy it is, so no range stays off "
        "the signed record for longer; the next read opens a new one.",
    )
    viewing_admission_seconds: float = Field(
        2.0,
        ge=0,
        le=10,
        description="A player's range is admitted (the item found among the person's incidents, a play grant checked) and the admission kept this long for the next ranges of the same read by the same sign-in; each range is still signed in, recorded on custody and checked. An item unlinked meanwhile stays playable to an open player at most this long (0: every range looked up afresh).",
    )
    max_open_viewings_per_user: int = Field(
        20,
        ge=1,
        description="Viewings one person may have open at once; opening one more seals their least recently used.",
    )


class DockUploadSettings(_Section):
    """Dock uploads."""

    max_clip_bytes: int = Field(64 * 1024**3, description="Largest clip a dock may upload (413 above it).")
    upload_part_bytes: int = Field(
        8 * 1024**2, description="Size of the S3 multipart parts a clip is streamed in."
    )
    upload_parts_in_flight: int = Field(
        3,
        description="Parts of one clip travelling to S3 at once (memory per upload: this many parts plus the one filling).",
    )
    upload_part_senders: int = Field(
        8,
        description="S3 part uploads running at once across all clips (one thread each); other parts wait their turn.",
    )
    upload_expiry_hours: int = Field(72, description="An unfinished upload is abandoned after this long.")
    max_open_uploads_per_dock: int = Field(
        32,
        ge=1,
        description="Unfinished uploads one dock may have open at once; one more is answered 429 (naming the open ones) until one finishes, is terminated or expires.",
    )
    max_concurrent_patches: int = Field(
        64,
        description="Dock PATCH requests streaming at once per process; beyond this the answer is 503 + Retry-After.",
    )
    max_patches_per_dock: int = Field(
        8,
        ge=1,
        description="Of those, how many one dock may hold at once (beyond it, 503 + Retry-After for that dock only), so one dock cannot take every slot.",
    )
    retry_after_seconds: int = Field(
        5, description="Retry-After sent with 503 answers (507 answers send twelve times this)."
    )
    max_metadata_bytes: int = Field(
        4096, description="Largest Upload-Metadata header accepted (431 above it)."
    )
    upload_lease_seconds: int = Field(
        15, description="How long a dock request holds an upload before another request may take it over."
    )
    upload_stall_seconds: int = Field(
        30,
        description="A dock PATCH whose body sends nothing for this long is ended (408): what arrived is kept and the upload is free for the retry.",
    )


class HttpSettings(_Section):
    """HTTP API and sign-in."""

    http_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    http_port: int = Field(8000, description="Port of the HTTP API.")
    http_max_header_bytes: int = Field(
        64 * 1024,
        ge=4096,
        le=16 * 1024 * 1024,
        description="Largest request line and header block accepted; a larger one is answered 431 and the connection closed.",
    )
    http_header_timeout_seconds: int = Field(
        10,
        ge=1,
        description="Time a client has, from connecting (or from starting its next request), to send the whole header block; then 408 and the connection is closed.",
    )
    http_body_idle_timeout_seconds: int = Field(
        60,
        ge=1,
        description="A request body that sends no byte for this long while the service waits for it is abandoned and its connection closed (a dock's upload then resumes with HEAD).",
    )
    http_max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest request body a route reads whole (JSON, forms); larger is answered 413. Dock uploads and voice memos stream and have their own limits.",
    )
    http_keep_alive_seconds: int = Field(
        5, ge=1, description="An idle kept-alive connection is closed after this many seconds."
    )
    http_max_connections_per_client: int = Field(
        100,
        ge=0,
        description="Open connections one client address may hold; more are answered 503 with Retry-After (0: no cap). Behind a reverse proxy every client is the proxy's address: raise it, or cap at the proxy.",
    )
    http_max_connections: int = Field(
        2000,
        ge=0,
        description="Open connections and requests the server holds at once; more are answered 503 (0: no cap).",
    )
    http_worker_threads: int = Field(
        64,
        ge=1,
        description="Threads the event loop hands blocking steps to (database transactions, store requests). Python's default is the CPUs plus four: six on two cores made the seventh of sixteen docks opening uploads at once wait for a store round trip of one of the first six.",
    )
    token_ttl_minutes: int = Field(480, description="Lifetime of a user's bearer token.")
    idempotency_key_hours: int = Field(
        24,
        ge=1,
        le=24 * 30,
        description="How long a POST's Idempotency-Key holds its first answer: the same request sent again with it within this time answers that answer and makes nothing new; after it the key is forgotten (with the answer) and free again.",
    )
    login_free_failures: int = Field(
        3,
        ge=1,
        description="Failed sign-ins for one username from one client address before each further try from there must wait (the wait doubles with each failure). No account is ever locked.",
    )
    login_max_delay_seconds: int = Field(
        900, ge=1, description="The longest wait between sign-in tries for one username from one address."
    )
    login_client_failures_per_hour: int = Field(
        30, ge=1, description="Failed sign-ins one client address may make in an hour, over all usernames."
    )
    login_account_failures_per_hour: int = Field(
        100,
        ge=1,
        description="Failed sign-ins one username may take in an hour from anywhere; past it, only addresses that have not failed for it may try.",
    )


class ConsoleSettings(_Section):
    """The web console."""

    console_idle_minutes: int = Field(
        30,
        ge=1,
        description="A console (browser) session ends after this many minutes without the person doing anything.",
    )
    console_session_hours: int = Field(
        12, ge=1, description="A console session ends this many hours after sign-in, however busy."
    )
    console_secure_cookie: bool = Field(
        False,
        description="Send the console's session cookie only over HTTPS (turn on whenever the service is behind TLS).",
    )
    console_reads_need_fetch_metadata: bool = Field(
        True,
        description="A read made with the console's cookie that writes custody (evidence content, waveform, voice memo, continuity report, a subject access search) must carry a browser's Sec-Fetch-Site of same-origin or none, or else a Referer or Origin of this service; off: a cookie read with none of these headers (a browser older than 2023) is let through.",
    )
    map_tile_url: str | None = Field(
        None,
        description="Map tiles for the console's map, e.g. https://tiles.example.nhs.uk/{z}/{x}/{y}.png (unset: no tiles; positions are drawn on a plain plotted view). Must be a server the trust runs or trusts.",
    )
    map_tile_attribution: str = Field("", description="Attribution shown on the map for those tiles.")


class MqttSettings(_Section):
    """MQTT and lone-worker devices."""

    mqtt_host: str = Field("127.0.0.1", description="MQTT broker the lone-worker devices connect to.")
    mqtt_port: int = Field(1883, description="Port of the MQTT broker.")
    mqtt_username: str | None = Field(
        None, description="The service's broker login (the alarm consumer runs only when this is set)."
    )
    mqtt_password: SecretStr | None = Field(None, description="The service's broker password.")
    mqtt_client_id: str | None = Field(
        None,
        description="Client id of this instance's persistent MQTT session; give each instance its own. Unset: one derived from the service's broker login (the same on every instance of a deployment).",
    )
    mqtt_share_group: str | None = Field(
        None,
        description="Shared-subscription group that splits the alarm stream between instances; empty for none. Unset: derived from the service's broker login, so no two deployments share one.",
    )
    max_clock_skew_seconds: int = Field(
        300, description="A device message sent further than this ahead of the server clock is rejected."
    )
    max_payload_bytes: int = Field(16 * 1024, description="Largest device MQTT payload accepted.")
    mqtt_consumer_enabled: bool = Field(
        True,
        description="Run the MQTT alarm consumer in this process (needs mqtt_host and mqtt_username); the escalation loop runs wherever MQTT is configured, whether or not this process consumes.",
    )
    mqtt_session_expiry_seconds: int = Field(
        14 * 24 * 3600,
        description="How long the broker keeps the service's session (and queues alarms for it) while it is away.",
    )
    mqtt_workers: int = Field(
        4,
        description="Threads verifying and storing heartbeats, locations and status in one consumer (alarms and check-ins have a worker of their own, ahead of these).",
    )
    mqtt_message_types: str = Field(
        "",
        description="Device message types this instance consumes, comma-separated (alarm, checkin, heartbeat, location, status); empty: all. Instances can split the stream by type as well as by share.",
    )
    mqtt_telemetry_process: bool = Field(
        False,
        description="Hand heartbeats, locations and status messages to a companion process that this one starts, watches and restarts, so alarms never wait behind them for the interpreter (PostgreSQL only).",
    )
    mqtt_telemetry_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="Nice increment of that companion process: the scheduler favours the alarm process over it.",
    )
    mqtt_device_rate: float = Field(
        20.0,
        gt=0,
        description="Messages a second each device may have verified and stored (alarms and check-ins, and separately its telemetry); beyond it (and its burst) they are refused at once and the device is flagged. An alarm being raised may go a little beyond it.",
    )
    mqtt_device_burst: int = Field(
        100,
        ge=1,
        description="How many messages a device may send at once before its rate applies (room for a backlog the broker kept while the service was away).",
    )
    mqtt_device_queue: int = Field(
        32,
        ge=1,
        le=100,
        description="Most messages of one device waiting to be verified (each holds one of the broker's unacknowledged deliveries); more are refused at once.",
    )

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
    def _message_type_list(cls, value: str) -> str:
        """A comma-separated list, stripped; which types exist is the device protocol's to say
        (checked by the service's settings, ``ingest.settings``)."""
        return ",".join(t.strip() for t in value.split(",") if t.strip())


class AlarmSettings(_Section):
    """Alarms."""

    alarm_ack_timeout_seconds: int = Field(
        30, description="An alarm nobody acknowledges in this time is escalated."
    )
    missed_checkin_grace_seconds: int = Field(
        300, description="A visit whose end check-in is this late raises missed_checkin."
    )
    device_offline_after_seconds: int = Field(
        180, description="A device silent this long during a visit or an open alarm raises device_offline."
    )
    low_battery_percent: int = Field(
        15, description="Battery level below which a low_battery alarm is raised."
    )
    escalation_webhook_url: str | None = Field(
        None, description="URL that receives a JSON POST for every escalation (unset: no webhook)."
    )
    escalation_poll_seconds: float = Field(
        0.5,
        description="How often the escalation loop looks for deadlines, overdue check-ins and silent devices.",
    )
    alarm_stream_poll_seconds: float = Field(
        0.1,
        gt=0,
        le=5,
        description="How often a service process with live alarm streams open (the control room's boards) looks for new alarm changes: the longest an alarm waits between its commit and the boards.",
    )
    max_voice_memo_bytes: int = Field(
        8 * 1024 * 1024, description="Largest amber voice memo a device may upload."
    )
    max_voice_memo_uploads: int = Field(
        8,
        ge=1,
        description="Voice memo bodies one process reads at once, over all devices (memory: this many times max_voice_memo_bytes); beyond it, 503 + Retry-After.",
    )
    max_voice_memo_uploads_per_device: int = Field(
        2,
        ge=1,
        description="Of those, how many one device may send at once; beyond it, 429 + Retry-After for that device only.",
    )
    incident_join_minutes: int = Field(
        30,
        description="A red alarm joins the wearer's incident of its own site opened within this many minutes, else opens one.",
    )


class StatisticsSettings(_Section):
    """Incident statistics."""

    statistics_min_count: int = Field(
        5,
        description="Incident statistics: counts below this are not listed (nor any the totals would reveal).",
    )
    statistics_rounding: int = Field(
        5, description="Incident statistics: other counts are rounded to this multiple."
    )
    report_timezone: str = Field(
        "Europe/London", description="Months in statistics are calendar months in this time zone."
    )


class WorkerSettings(_Section):
    """Redaction and background workers."""

    redaction_enabled: bool = Field(True, description="Queue an automatic redaction for every stored clip.")
    redaction_detect_width: int = Field(640, description="Width frames are scaled to for face detection.")
    redaction_threshold: float = Field(0.2, description="Face detector confidence threshold.")
    redaction_detector: Literal["opencv", "onnxruntime-int8"] = Field(
        "onnxruntime-int8",
        description="How the face detector runs: onnxruntime-int8 (the model quantised to 8-bit integers but for its first six convolutions, kept in 32-bit floats, through onnxruntime: redaction 1.3-1.6 times as fast on two cores with VNNI, as many faces covered, a little more spill) or opencv (the whole model in 32-bit floats through OpenCV); see docs/benchmarks.md.",
    )
    redaction_stride: int = Field(
        5,
        description="Run the whole-frame detector at least every Nth frame (at once after a cut); faces are tracked and re-checked in between.",
    )
    worker_lease_seconds: int = Field(
        120,
        description="A worker renews its claim on a job this often; a dead worker's job is taken over after it.",
    )
    worker_max_attempts: int = Field(3, description="Attempts before a redaction job is marked failed.")


class ShareSettings(_Section):
    """One person's share of what is costly."""

    max_exports_building_per_user: int = Field(
        3,
        ge=1,
        description="Export packages one person may have building at once; one more is answered 429 until one is ready or failed.",
    )
    max_export_links_per_user: int = Field(
        100,
        ge=1,
        description="Download links one person may have live at once (not expired, not revoked); one more is answered 429.",
    )
    max_redactions_queued_per_user: int = Field(
        10,
        ge=1,
        description="Redaction versions one person may have queued or running at once; one more is answered 429.",
    )
    max_alarm_streams_per_user: int = Field(
        10,
        ge=1,
        description="Live alarm streams (the board, the map: one per open page) one person may hold open at once per process; one more is answered 429.",
    )
    max_download_streams_per_link: int = Field(
        2,
        ge=1,
        description="Downloads of one package link streaming at once per process (each range of a media member reads that member whole to check it); one more is answered 429 with Retry-After.",
    )
    max_download_streams: int = Field(
        8,
        ge=1,
        description="Package downloads streaming at once per process, over every link; one more is answered 503 with Retry-After.",
    )


class LoggingSettings(_Section):
    """Logging."""

    log_level: str = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="Log as JSON lines instead of text.")


class DemoSettings(_Section):
    """The demo."""

    demo_clips: int = Field(default=3, ge=0, description="Clips the demo records and uploads.")
    admin_password: SecretStr | None = Field(
        None, description="The demo's admin password (unset: one is generated and kept under data_dir)."
    )


SECTIONS: tuple[tuple[str, type[_Section]], ...] = (
    ("Local state and the database", LocalStateSettings),
    ("Object storage (S3)", ObjectStorageSettings),
    ("Retention", RetentionSettings),
    ("Exhibits and continuity", ExhibitSettings),
    ("Viewing evidence", ViewingSettings),
    ("Dock uploads", DockUploadSettings),
    ("HTTP API and sign-in", HttpSettings),
    ("The web console", ConsoleSettings),
    ("MQTT and lone-worker devices", MqttSettings),
    ("Alarms", AlarmSettings),
    ("Incident statistics", StatisticsSettings),
    ("Redaction and background workers", WorkerSettings),
    ("One person's share", ShareSettings),
    ("Logging", LoggingSettings),
    ("The demo", DemoSettings),
)


class Settings(
    LocalStateSettings,
    ObjectStorageSettings,
    RetentionSettings,
    ExhibitSettings,
    ViewingSettings,
    DockUploadSettings,
    HttpSettings,
    ConsoleSettings,
    MqttSettings,
    AlarmSettings,
    StatisticsSettings,
    WorkerSettings,
    ShareSettings,
    LoggingSettings,
    DemoSettings,
):
    """Runtime settings, read once from the environment (and an optional ``.env``)."""

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
