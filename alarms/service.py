"""The alarm side of the service, shared by the MQTT consumer, the clock's loop and the API.

:class:`AlarmService` assembles the collaborators, each with one job, and is what the rest of the
application talks to:

- ``intake``: device messages in (verify, replay state, dispatch) — ``alarms.intake``;
- ``lifecycle``: raising, transitions by the pure rules, their effects, provisional alarms made
  whole, operators' actions — ``alarms.lifecycle``;
- ``visits``: check-ins and missed check-ins — ``alarms.visits``;
- ``timekeeper``: what the clock decides (deadlines, silent devices, deferred evidence) —
  ``alarms.clock``;
- ``outbox``: effects written with their change and sent after it — ``alarms.outbox``;
- ``voice_memos`` — ``alarms.voice_memos``; ``queries``: the control room's reads — ``alarms.queries``
  (one alarm's full record is ``alarms.records``; how well the room answers, ``alarms.performance``);
- position trails sampled while an alarm is open — ``alarms.trails``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from chain_of_custody.core import CoreServices
from devices.models import Device, LoneWorkerState
from devices.seals import DeviceSeals, device_seal_key
from storage.db import dialect_insert
from storage.objects import StorageError
from storage.paging import Position
from storage.slots import Slots

from . import rules
from .clock import Clock
from .incident_links import IncidentLinks
from .intake import HandleResult, Intake
from .lifecycle import Lifecycle
from .liveness import Liveness
from .models import AlarmOutbox
from .outbox import Outbox, Outgoing
from .payloads import PayloadEvidence
from .queries import AlarmQueries
from .staging import bind
from .trails import sample_trails
from .visits import Visits
from .voice_memos import MemoAdmission, VoiceMemos

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0
MAX_BATCHES = 20  # per kind of work per pass, so one pass stays short
PROVISIONAL_GRACE = timedelta(seconds=5)  # a provisional alarm left this long is made whole by the clock
PASS_WAITS_S = 0.5  # how long into a pass it still waits for a consumer's alarms before a transaction


class AlarmService:
    """The alarm side of the service (see the module's docstring for its parts)."""

    def __init__(self, core: CoreServices, *, clock: Callable[[], datetime] | None = None) -> None:
        self.core = core
        self.settings = core.settings
        self.db = core.db
        bind(core.db.sessions)  # provisional alarms' rows are written at commit (alarms.staging)
        self.policy = rules.AlarmPolicy.from_settings(core.settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.outbox = Outbox(
            core.db, core.key, self.clock, lambda: core.settings.escalation_webhook_url, core.ledger
        )
        self.payloads = PayloadEvidence(core)
        links = IncidentLinks(core.ledger, timedelta(minutes=core.settings.incident_join_minutes))
        self.lifecycle = Lifecycle(core, self.policy, self.clock, self.outbox, self.payloads, links)
        liveness = Liveness(self.lifecycle, self.policy)
        self.visits = Visits(self.policy, self.lifecycle, liveness, self.outbox)
        self.intake = Intake(
            core.db,
            core.settings,
            self.policy,
            self.clock,
            self.outbox,
            self.lifecycle,
            self.payloads,
            self.visits,
            liveness,
            DeviceSeals(device_seal_key(core.key)),
        )
        self.timekeeper = Clock(
            core.db, self.policy, self.clock, self.outbox, self.lifecycle, self.visits, self.payloads
        )
        self.voice_memos = VoiceMemos(core, self.lifecycle, self.clock)
        # Voice memo bodies being read at once: a device's own share and this process's whole.
        self.memo_uploads = Slots(
            core.settings.max_voice_memo_uploads, core.settings.max_voice_memo_uploads_per_device
        )
        # Live alarm streams open at once, per person (the process's whole is the HTTP edge's to bound).
        self.streams = Slots(1 << 30, core.settings.max_alarm_streams_per_user)
        self.queries = AlarmQueries(core.db, core.key)
        # Set by an MQTT consumer in this process: returns once it has no alarm waiting or being
        # handled (or after a moment), and the clock's pass calls it before each piece of its work.
        self.alarms_first: Callable[[], object] = wait_for_nothing

    # -- how effects leave this process ---------------------------------------------------------

    @property
    def publisher(self) -> Callable[[list[Outgoing]], None] | None:
        """Set by an MQTT consumer in this process: effects are published at once after commit."""
        return self.outbox.publisher

    @publisher.setter
    def publisher(self, value: Callable[[list[Outgoing]], None] | None) -> None:
        self.outbox.publisher = value

    @property
    def committed_listeners(self) -> list[Callable[[], None]]:
        """Called after a commit that changed an alarm (``alarms.outbox``): the live streams of this
        process look at once instead of at their next poll."""
        return self.outbox.committed_listeners

    @property
    def make_whole_inline(self) -> bool:
        """Whether a provisional alarm is made whole right after its commit, in the handling thread
        (False under an MQTT consumer, whose own worker makes provisional alarms whole)."""
        return self.intake.make_whole_inline

    @make_whole_inline.setter
    def make_whole_inline(self, value: bool) -> None:
        self.intake.make_whole_inline = value

    # -- device messages -------------------------------------------------------------------------

    def handle(
        self, topic: str, raw: bytes, *, retained: bool = False, now: datetime | None = None
    ) -> HandleResult:
        return self.intake.handle(topic, raw, retained=retained, now=now)

    def handle_many(
        self, messages: Sequence[tuple[str, bytes, bool]], *, now: datetime | None = None
    ) -> list[HandleResult]:
        return self.intake.handle_many(messages, now=now)

    def dead_letter(self, topic: str, raw: bytes, error: str) -> None:
        self.intake.dead_letter(topic, raw, error)

    def attach_voice_memo(
        self,
        device_id: str,
        event_id: str,
        data: bytes,
        *,
        content_type: str,
        sent_at: str,
        signature: str,
        now: datetime | None = None,
    ) -> tuple[str, bool]:
        return self.voice_memos.attach(
            device_id,
            event_id,
            data,
            content_type=content_type,
            sent_at=sent_at,
            signature=signature,
            now=now,
        )

    def admit_voice_memo(self, device_id: str, event_id: str, **claims: Any) -> MemoAdmission:
        """A memo upload checked from its signed headers, before its body is read (``VoiceMemos.admit``)."""
        return self.voice_memos.admit(device_id, event_id, **claims)

    def store_voice_memo(self, admission: MemoAdmission, data: bytes) -> tuple[str, bool, str]:
        return self.voice_memos.store(admission, data)

    # -- provisional alarms made whole ------------------------------------------------------------

    def make_whole(self, alarm_id: str, now: datetime | None = None) -> bool:
        return self.lifecycle.make_whole_if_provisional(alarm_id, now)

    def provisional_alarms(self, limit: int = 50, raised_before: datetime | None = None) -> list[str]:
        return self.lifecycle.provisional_alarms(limit, raised_before)

    def make_provisional_alarms_whole(
        self,
        now: datetime | None = None,
        limit: int = 20,
        older_than: timedelta = timedelta(0),
        before_each: Callable[[], bool] | None = None,
    ) -> int:
        return self.lifecycle.make_provisional_alarms_whole(now, limit, older_than, before_each)

    # -- the control room ------------------------------------------------------------------------

    def get(self, alarm_id: str) -> dict[str, Any]:
        return self.queries.get(alarm_id)

    def list_alarms(
        self,
        *,
        status: Iterable[str] = (),
        open_only: bool = False,
        device_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: Position | None = None,
    ) -> list[dict[str, Any]]:
        return self.queries.list_alarms(
            status=status,
            open_only=open_only,
            device_id=device_id,
            kind=kind,
            limit=limit,
            offset=offset,
            after=after,
        )

    def act(self, alarm_id: str, event: rules.Acknowledge | rules.Escalate | rules.Resolve) -> dict[str, Any]:
        return self.lifecycle.act(alarm_id, event)

    # -- what the clock decides ------------------------------------------------------------------

    def fire_deadlines(self, now: datetime | None = None, limit: int = 50) -> int:
        return self.timekeeper.fire_deadlines(now, limit)

    def raise_missed_checkins(self, now: datetime | None = None, limit: int = 50) -> int:
        return self.timekeeper.raise_missed_checkins(now, limit)

    def raise_offline(self, now: datetime | None = None, limit: int = 50) -> int:
        return self.timekeeper.raise_offline(now, limit)

    def store_deferred_evidence(self, now: datetime | None = None, limit: int = 20) -> int:
        return self.timekeeper.store_deferred_evidence(now, limit)

    def sample_trails(self, now: datetime | None = None) -> int:
        """Each device's newest position joins its trail while it has an alarm open (``alarms.trails``)."""
        at = now or self.clock()
        return sample_trails(self.db, at, lambda session: self.timekeeper.standing(session, at))

    def purge(self, now: datetime | None = None, keep: timedelta = timedelta(days=7)) -> None:
        self.timekeeper.purge(now, keep)

    # -- the outbox relay's side -----------------------------------------------------------------

    def claim_outbox(
        self, channel: str, now: datetime | None = None, limit: int = 100, lease_s: float = 30
    ) -> list[AlarmOutbox]:
        return self.outbox.claim(channel, now, limit, lease_s)

    def mark_sent(self, ids: Iterable[int], now: datetime | None = None) -> None:
        self.outbox.mark_sent(ids, now)

    def mark_over_share(self, device_id: str, since: datetime | None) -> None:
        """Flag (``since``) or unflag (None) a device that sends beyond its share of the consumer.
        A device whose every message was refused has no state row yet: it gets one (as its first
        status would make it), if it is an enrolled lone-worker device."""
        with self.db.session() as session:
            S = LoneWorkerState
            done = session.execute(update(S).where(S.device_id == device_id).values(over_share_since=since))
            if getattr(done, "rowcount", 0) or since is None:
                return
            if session.scalar(select(Device.id).where(Device.id == device_id, Device.kind == "lone_worker")):
                session.execute(
                    dialect_insert(session, S)
                    .values(
                        device_id=device_id,
                        version=0,
                        replay_state="",
                        presence="unknown",
                        battery_low=False,
                        over_share_since=since,
                    )
                    .on_conflict_do_update(index_elements=[S.device_id], set_={"over_share_since": since})
                )


@dataclass
class PassReport:
    deadlines: int = 0
    missed_checkins: int = 0
    offline: int = 0
    webhooks: int = 0
    evidence: int = 0
    made_whole: int = 0
    trail_points: int = 0


def wait_for_nothing() -> None:
    """``AlarmService.alarms_first`` with no MQTT consumer in the process."""


def _drain(step: Callable[[int], int], before: Callable[[], object], limit: int = 50) -> int:
    total = 0
    for _ in range(MAX_BATCHES):
        before()
        done = step(limit)
        total += done
        if done < limit:
            break
    return total


def run_pass(alarms: AlarmService, http: httpx.Client, now: datetime | None = None) -> PassReport:
    """One pass over everything due now (also what tests call to move time along).

    Each piece of it (a transaction) first waits while this process's MQTT consumer has alarms in
    hand (``AlarmService.alarms_first``): a pass is some ten transactions and about 10 ms of the
    interpreter's time, twice a second, and an SOS handled beside it waited for the interpreter's
    lock at every one of its own database round trips. A pass begins no wait after
    ``PASS_WAITS_S`` (so under a stream of alarms its deadlines are at most about a second late)."""
    report = PassReport()
    waits_until = time.monotonic() + PASS_WAITS_S

    def first() -> None:
        if time.monotonic() < waits_until:
            alarms.alarms_first()

    report.deadlines = _drain(lambda limit: alarms.fire_deadlines(now, limit), first)
    # Provisional alarms that the instance which acknowledged them did not make whole (it died, or
    # its worker for them is far behind): made whole here, after the deadlines (which never wait
    # for storage writes).
    first()
    report.made_whole = alarms.make_provisional_alarms_whole(now, limit=50, older_than=PROVISIONAL_GRACE)
    report.missed_checkins = _drain(lambda limit: alarms.raise_missed_checkins(now, limit), first)
    report.offline = _drain(lambda limit: alarms.raise_offline(now, limit), first)
    first()
    report.webhooks = alarms.outbox.send_webhooks(http, now)
    first()
    report.trail_points = alarms.sample_trails(now)
    try:
        first()
        report.evidence = alarms.store_deferred_evidence(now)
    except StorageError as exc:
        log.warning("deferred alarm evidence still waiting for object storage", extra={"error": str(exc)})
    return report


async def escalation_loop(alarms: AlarmService, interval_s: float) -> None:
    """Run :func:`run_pass` forever; every exception is logged and the loop carries on."""
    last_purge = 0.0
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        while True:
            try:
                await asyncio.to_thread(run_pass, alarms, http)
                if time.monotonic() - last_purge > PURGE_EVERY_S:
                    await asyncio.to_thread(alarms.purge)
                    last_purge = time.monotonic()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("escalation pass failed")
            await asyncio.sleep(interval_s)
