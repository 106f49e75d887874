"""The alarm outbox: effects (MQTT publishes, webhook calls) written in the transaction of the change
that caused them, sent after its commit, marked sent once delivered.

A process with an MQTT consumer publishes its effects at once after the commit (``publisher``) and
gives the relay a grace period before it would send them again; any instance's relay sends what
was left behind (a crash between commit and publish). Rows are leased to a sender by their due time
(``storage.leases``): a row claimed is due again later, so a sender that dies loses nothing.

Webhook calls (escalations) are signed with the service key: ``X-Evidence-Signature`` is the
Ed25519 signature over the body (public key at ``/api/v1/custody/public-key``); a refusal or a
timeout is retried with backoff until the endpoint answers 2xx.

Every row is sealed (``chain_of_custody.outbox_seals``): its message when queued, its due time by
every claim and retry, its delivery by the statement that marks it sent, each in the statement that
already writes it. A claimed row whose message is not as the service sealed it is withheld (nothing
else records what it said), with an error naming it and a ledger entry; rows marked sent or put off
by SQL are put back by the watch (``alarms.outbox_watch``) before a claim.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from prometheus_client import Counter
from sqlalchemy import Select, case, delete, select, update
from sqlalchemy.orm import Session

from chain_of_custody.keys import ServiceKey
from chain_of_custody.ledger import Ledger
from chain_of_custody.outbox_seals import content_holds, due_mark, outbox_seal, sent_mark, sent_of
from chain_of_custody.reach_seals import reach_secret
from devices.lone_worker_wire import AckStatus, build_ack, topic_for
from storage.db import Database
from storage.leases import Lease, claim

from .models import AlarmOutbox
from .outbox_watch import OutboxWatch
from .staging import stage

log = logging.getLogger(__name__)

WEBHOOK_CALLS = Counter(
    "evidence_alarm_webhook_calls_total", "Escalation webhook calls, by result", ["result"]
)
# An outbox row's lease is its due time: claimed rows are due again after the sender's lease.
LEASE = Lease(until=AlarmOutbox.next_attempt_at)
WITHHELD = "withheld: its message is not as the service sealed it"


@dataclass(frozen=True)
class Outgoing:
    """An MQTT publish to make now; ``outbox_id`` is marked sent once the broker has it (None: no row)."""

    topic: str
    payload: bytes
    qos: int = 1
    outbox_id: int | None = None


def mqtt_effects(outbox: list[AlarmOutbox]) -> list[Outgoing]:
    """The MQTT publishes among outbox rows, to send at once after the commit (the relay retries them)."""
    return [Outgoing(o.target, o.payload, o.qos, o.id) for o in outbox if o.channel == "mqtt"]


def webhook_backoff(attempts: int) -> timedelta:
    """How long a refused escalation webhook waits before its next attempt: doubling, at most 5 minutes."""
    return timedelta(seconds=min(300, 2 ** min(attempts, 9)))


class Outbox:
    """Writes effects with their change, and hands them to whoever sends them."""

    def __init__(
        self,
        db: Database,
        key: ServiceKey,
        clock: Callable[[], datetime],
        webhook: Callable[[], str | None] = lambda: None,
        ledger: Ledger | None = None,
    ) -> None:
        self.db = db
        self.key = key
        self.secret = reach_secret(key)
        self.watch = OutboxWatch(db, self.secret, ledger)
        self.clock = clock
        # The escalation webhook configured now (``EVIDENCE_ESCALATION_WEBHOOK_URL``): the only
        # address a webhook row is posted to, whatever its (unsealed) ``target`` says.
        self.webhook = webhook
        # Set by an MQTT consumer in this process: effects are then published at once after commit
        # (the relay of any instance sends what is left behind).
        self.publisher: Callable[[list[Outgoing]], None] | None = None
        # Called (in the committing thread) after a commit that had effects to send, which is nearly
        # every change of an alarm: the live stream of this process looks at once instead of at its
        # next poll. Listeners must be quick and thread-safe.
        self.committed_listeners: list[Callable[[], None]] = []
        self.relay_grace = timedelta(seconds=5)

    # -- writing, in the caller's transaction --------------------------------------------------

    def queue(
        self,
        session: Session,
        outbox: list[AlarmOutbox],
        channel: str,
        target: str,
        payload: bytes,
        now: datetime,
        alarm_id: str | None,
    ) -> None:
        published_here = channel == "mqtt" and self.publisher is not None
        due = now + self.relay_grace if published_here else now
        seal = outbox_seal(self.secret, channel, target, 1, alarm_id, now, payload)
        row = AlarmOutbox(
            channel=channel,
            target=target,
            payload=payload,
            qos=1,
            alarm_id=alarm_id,
            created_at=now,
            next_attempt_at=due,
            attempts=0,
            seal=seal,
            due_seal=due_mark(self.secret, seal, due),
        )
        stage(session, row)  # the outbox is read by the relay, in transactions of its own
        outbox.append(row)

    def ack(
        self,
        device_id: str,
        event_id: str,
        status: AckStatus,
        now: datetime,
        *,
        alarm_id: str | None = None,
        reason: str | None = None,
    ) -> bytes:
        """The service's signed answer to a device (``devices.lone_worker_wire.build_ack``)."""
        return build_ack(
            private_key=self.key.private,
            device_id=device_id,
            event_id=event_id,
            status=status,
            at=now,
            alarm_id=alarm_id,
            reason=reason,
        )

    def queue_ack(
        self,
        session: Session,
        outbox: list[AlarmOutbox],
        device_id: str,
        event_id: str,
        status: AckStatus,
        alarm_id: str | None,
        now: datetime,
    ) -> None:
        payload = self.ack(device_id, event_id, status, now, alarm_id=alarm_id)
        self.queue(session, outbox, "mqtt", topic_for(device_id, "ack"), payload, now, alarm_id)

    # -- after the commit ----------------------------------------------------------------------

    def publish(self, messages: list[Outgoing]) -> None:
        """Tell this process's listeners a change committed, and hand its effects to this process's
        publisher, if any (the relay covers a failure)."""
        if messages:
            for listener in self.committed_listeners:
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a listener never costs the alarm its effects
                    log.exception("alarm commit listener failed")
        if messages and self.publisher is not None:
            try:
                self.publisher(messages)
            except Exception:  # noqa: BLE001 - the outbox relay sends it later
                log.exception("publishing alarm effects failed; the outbox relay will retry")

    # -- the relay's side ----------------------------------------------------------------------

    def claim(
        self, channel: str, now: datetime | None = None, limit: int = 100, lease_s: float = 30
    ) -> list[AlarmOutbox]:
        """Due unsent effects, leased to the caller for ``lease_s`` (another instance takes them after),
        after the watch's sweep when one is due; a row whose message is not as the service sealed it
        is withheld (:meth:`_withheld`)."""
        now = now or self.clock()
        self.watch.sweep_if_due(now)
        out: list[AlarmOutbox] = []
        with self.db.session() as session:
            rows = claim(
                session,
                select(AlarmOutbox)
                .where(AlarmOutbox.channel == channel, AlarmOutbox.sent_at.is_(None), LEASE.expired(now))
                .order_by(AlarmOutbox.next_attempt_at, AlarmOutbox.id),
                limit,
            )
            for row in rows:
                row.attempts += 1
                if self._withheld(session, row, now):
                    continue
                LEASE.grant(row, None, timedelta(seconds=lease_s), now)
                row.due_seal = due_mark(self.secret, row.seal, row.next_attempt_at)
                out.append(row)
            session.flush()
            for row in rows:
                session.expunge(row)
        return out

    def _withheld(self, session: Session, row: AlarmOutbox, now: datetime) -> bool:
        """Whether a claimed row is withheld: its seal does not hold for its message (or was removed
        from a row queued after seals began), so what it says is nobody's the service knows. It is
        tried again with backoff (an operator sees it each time); the first time, an error names it
        and the ledger records it."""
        if content_holds(self.secret, row) or self.watch.older(session, row):
            return False
        row.next_attempt_at = now + webhook_backoff(row.attempts)
        row.due_seal = due_mark(self.secret, row.seal, row.next_attempt_at)
        if row.last_error != WITHHELD:
            row.last_error = WITHHELD
            log.error(
                "an alarm outbox row's message is not as the service sealed it: withheld",
                extra={"outbox": row.id, "alarm": row.alarm_id},
            )
            self.watch.record(session, row, WITHHELD, now)
        return True

    def mark_sent(self, ids: Iterable[int], now: datetime | None = None) -> None:
        ids = list(ids)
        if not ids:
            return
        now = now or self.clock()
        o = AlarmOutbox
        with self.db.session() as session:
            unsent = select(o.id, o.seal).where(o.id.in_(ids), o.sent_at.is_(None))
            seals = {int(i): seal for i, seal in session.execute(unsent)}
            if not seals:
                return
            marks = case({i: sent_mark(self.secret, i, seal, now) for i, seal in seals.items()}, value=o.id)
            session.execute(
                update(o)
                .where(o.id.in_(list(seals)), o.sent_at.is_(None))
                .values(sent_at=now, sent_seal=marks)
            )

    def mark_failed(self, row: AlarmOutbox, error: str, retry_in: timedelta) -> None:
        due = self.clock() + retry_in
        with self.db.session() as session:
            session.execute(
                update(AlarmOutbox)
                .where(AlarmOutbox.id == row.id)
                .values(
                    last_error=error[:1000],
                    next_attempt_at=due,
                    due_seal=due_mark(self.secret, row.seal, due),
                )
            )

    def claimed_pass(
        self,
        query: Select[Any],
        limit: int,
        act: Callable[[Session, Any, list[AlarmOutbox]], None],
        *,
        isolate: bool = True,
    ) -> int:
        """Claim up to ``limit`` due rows of ``query`` (nobody else acts on them meanwhile), ``act`` on
        each in one transaction, and publish the effects once it committed; how many were claimed.

        One row that cannot be acted on (garbled in the database: a status no rule knows, a key
        another row holds) must not hold back every other row due with it, pass after pass: when the
        batch fails, each row is acted on in a transaction of its own, and the failing ones are left
        due, each named in the log (``isolate``; a row ``act`` leaves due, as a sweep does, cannot
        be passed over one at a time)."""
        try:
            return self._claimed(query, limit, act)
        except Exception:
            if not isolate:
                raise
            log.exception("a batch of due rows failed: each acted on alone")
        done = failed = 0
        while done + failed < limit:
            try:  # the rows that failed stay due, and first: passed over by their number
                claimed = self._claimed(query.offset(failed), 1, act)
            except Exception:  # noqa: BLE001 - left due, named; the others go on
                log.exception("a due row could not be acted on: left due", extra={"offset": failed})
                failed += 1
                continue
            if not claimed:
                break
            done += claimed
        return done

    def _claimed(
        self, query: Select[Any], limit: int, act: Callable[[Session, Any, list[AlarmOutbox]], None]
    ) -> int:
        outbox: list[AlarmOutbox] = []
        with self.db.session() as session:
            rows = claim(session, query, limit)
            for row in rows:
                act(session, row, outbox)
            session.flush()
        self.publish(mqtt_effects(outbox))
        return len(rows)

    def forget_sent(self, session: Session, before: datetime) -> None:
        """Sent rows are history once the alarms and custody keep it: those the service marked sent
        (one marked sent by SQL is left for the watch to put back)."""
        o = AlarmOutbox
        old = session.execute(select(o.id, o.seal, o.sent_seal).where(o.sent_at < before))
        sent = [i for i, seal, mark in old if sent_of(self.secret, i, seal, mark) is not None]
        for start in range(0, len(sent), 500):
            session.execute(delete(o).where(o.id.in_(sent[start : start + 500])))

    def send_webhooks(self, http: httpx.Client, now: datetime | None = None) -> int:
        """POST due escalation webhooks; a refusal or timeout is retried later with backoff."""
        rows = self.claim("webhook", now=now, limit=20, lease_s=60)
        sent: list[int] = []
        for row in rows:
            url = self.webhook()
            if row.target != url:
                # A target written into the row in the database would hand the escalation, signed
                # by the service, to whoever it names: it goes to the configured webhook, or nowhere.
                log.warning(
                    "escalation webhook row names another address: sent to the configured one",
                    extra={"outbox": row.id, "alarm": row.alarm_id},
                )
            if not url:
                self.mark_failed(row, "no escalation webhook configured", webhook_backoff(row.attempts))
                continue
            signature = base64.b64encode(self.key.private.sign(row.payload)).decode()
            try:
                response = http.post(
                    url,
                    content=row.payload,
                    headers={
                        "Content-Type": "application/json",
                        "X-Evidence-Signature": signature,
                        "X-Evidence-Key-Id": self.key.key_id,
                        "X-Evidence-Delivery": str(row.id),
                    },
                )
                ok = 200 <= response.status_code < 300
                error = None if ok else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            WEBHOOK_CALLS.labels(result="ok" if ok else "failed").inc()
            if ok:
                sent.append(row.id)
            else:
                retry = webhook_backoff(row.attempts)
                log.warning(
                    "escalation webhook failed",
                    extra={"outbox": row.id, "error": error, "retry_in": str(retry)},
                )
                self.mark_failed(row, error or "failed", retry)
        self.mark_sent(sent, now)
        return len(sent)
