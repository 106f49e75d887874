"""The commands run once after upgrading to a schema whose rows carry seals: ``evidence seal-tokens``,
``seal-devices``, ``seal-users``, ``seal-grants``, ``seal-reach``, ``seal-capture-sites``,
``seal-incidents``, ``seal-watched``,
``record-credential-ends`` and
``record-access-ends``, each on its own,
and ``evidence upgrade-seals``, which runs them all in the order they must go (users before the
grants made to them). Each lists what it would do, and does it only with ``--yes``; ``ingest.cli``
puts them on the ``evidence`` command."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

import typer

from .command_line import console, out
from .command_line import services as _services

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from chain_of_custody.awaiting_upgrade import AwaitingUpgrade
    from chain_of_custody.ledger import Ledger

    from .services import Services


class _Listed(Protocol):
    """A row a seal command lists: one line for the administrator; ``refused`` when it is not sealed."""

    def line(self) -> str: ...


Run = Callable[["Session", "Services", bool], Sequence[_Listed]]


@dataclass(frozen=True)
class Step:
    """One of the upgrade's commands: its name, what it lists, and what it does to them."""

    command: str
    noun: str
    run: Run
    verb: str = "seal"
    done: str = "sealed"


def _report(step: Step, listed: Sequence[_Listed], yes: bool) -> int:
    """Print a step's rows, a line each, and what it did or would do; how many it refused."""
    for row in listed:
        out.print(row.line(), markup=False, highlight=False, soft_wrap=True)  # a row a line
    refused = sum(1 for row in listed if getattr(row, "refused", None))
    ready = len(listed) - refused
    if yes:
        console.print(f"{ready} {step.noun} {step.done}")
    else:
        console.print(f"{ready} {step.noun} would be {step.done}: run again with --yes to {step.verb} them")
    if refused:
        console.print(f"[yellow]{refused} {step.noun} refused: the reason is on each line[/yellow]")
    return refused


def _seal_rows(step: Step, yes: bool) -> None:
    """The shape of every ``seal-*`` command: list the rows made before their table carried a seal
    and, with ``yes``, seal them in one transaction (``run`` does both); rows it refuses to seal
    are listed with the reason, and make the command exit 1 after ``--yes``."""
    s = _services(existing=True)
    try:
        with s.db.session() as session:
            listed = step.run(session, s, yes)
    finally:
        s.close()
    if _report(step, listed, yes) and yes:
        raise typer.Exit(1)


def _devices(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from devices.seals import seal_devices, unsealed_devices

    return seal_devices(session, s.ledger) if yes else unsealed_devices(session, s.ledger)


def _tokens(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from accounts.seals import seal_tokens, unsealed_tokens
    from chain_of_custody.row_seals import CREDENTIAL_SEALS

    listed = unsealed_tokens(session)
    if yes:
        seal_tokens(session, s.key.derived_secret(CREDENTIAL_SEALS))
    return listed


def _users(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from accounts.seals import seal_users, unsealed_users

    return seal_users(session, s.ledger) if yes else unsealed_users(session, s.ledger)


def _grants(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from incidents.grants import seal_grants, unsealed_grants

    return seal_grants(session, s.ledger) if yes else unsealed_grants(session, s.ledger)


def _record(
    session: Session,
    s: Services,
    yes: bool,
    secret: bytes,
    listing: Callable[[Session, bytes], Sequence[_Listed]],
    recording: Callable[[Session, Ledger, bytes, str], int],
) -> Sequence[_Listed]:
    """The shape of every ``record-*`` step: list the ends custody does not hold and, with ``yes``,
    record them."""
    listed = listing(session, secret)
    if yes:
        recording(session, s.ledger, secret, "service")
    return listed


def _ends(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from accounts.ends import record_unrecorded_ends, unrecorded_ends
    from chain_of_custody.row_seals import CREDENTIAL_SEALS

    return _record(
        session, s, yes, s.key.derived_secret(CREDENTIAL_SEALS), unrecorded_ends, record_unrecorded_ends
    )


def _access_ends(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.row_seals import GRANT_SEALS
    from devices.ends import record_unrecorded_disables, unrecorded_disables
    from devices.seals import device_seal_key
    from incidents.grants import record_unrecorded_assignment_ends, unrecorded_assignment_ends

    devices = _record(
        session, s, yes, device_seal_key(s.key), unrecorded_disables, record_unrecorded_disables
    )
    secret = s.key.derived_secret(GRANT_SEALS)
    return [
        *devices,
        *_record(session, s, yes, secret, unrecorded_assignment_ends, record_unrecorded_assignment_ends),
    ]


def _reach(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.alarm_seals import seal_alarms, unsealed_alarms
    from chain_of_custody.reach_seals import seal_reach, unsealed_reach

    entries = s.ledger.all_entries(session)
    if yes:
        return [*seal_reach(session, s.key, entries), *seal_alarms(session, s.key, entries)]
    return [*unsealed_reach(session, s.key, entries), *unsealed_alarms(session, entries)]


def _capture_sites(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.capture_sites import record_capture_sites, unsited_items

    entries = s.ledger.all_entries(session)
    if yes:
        return record_capture_sites(session, s.key, s.ledger, entries)
    return unsited_items(session, s.key, entries)


def _incidents(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.incident_seals import seal_incidents, unsealed_incidents

    if yes:
        return seal_incidents(session, s.ledger)
    return unsealed_incidents(session, s.key, s.ledger.all_entries(session))


def _visits(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.visit_seals import seal_visits, unsealed_visits

    if yes:
        return seal_visits(session, s.key, s.ledger)
    return unsealed_visits(session, s.key, s.ledger.all_entries(session))


def _heard(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.heard_seals import seal_heard, unsealed_heard

    return seal_heard(session, s.key) if yes else unsealed_heard(session)


def _lifecycles(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.lifecycle_seals import seal_lifecycles, unsealed_lifecycles

    entries = s.ledger.all_entries(session)
    return seal_lifecycles(session, s.key, entries) if yes else unsealed_lifecycles(session, entries, s.key)


def _outbox(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.outbox_seals import seal_outbox, unsealed_outbox

    return seal_outbox(session, s.key, s.ledger) if yes else unsealed_outbox(session, s.key)


def _watched(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.watched_seals import seal_watched, unsealed_watched

    return seal_watched(session, s.key) if yes else unsealed_watched(session, s.key)


def _replays(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from alarms.replay_state import seal_replays, unsealed_replays

    return seal_replays(session, s.key) if yes else unsealed_replays(session, s.key)


def _receipts(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.receipt_upgrade import seal_receipts, unsealed_receipts

    return seal_receipts(session, s.key, s.ledger) if yes else unsealed_receipts(session, s.key)


def _raises(session: Session, s: Services, yes: bool) -> Sequence[_Listed]:
    from chain_of_custody.raise_seals import seal_raises, unsealed_raises

    entries = s.ledger.all_entries(session)
    return seal_raises(session, s.key, entries) if yes else unsealed_raises(session, entries, s.key)


TOKENS = Step("seal-tokens", "tokens", _tokens)
DEVICES = Step("seal-devices", "devices", _devices)
USERS = Step("seal-users", "users", _users)
GRANTS = Step("seal-grants", "grants", _grants)
ENDS = Step("record-credential-ends", "ends", _ends, verb="record", done="recorded")
ACCESS_ENDS = Step("record-access-ends", "ends", _access_ends, verb="record", done="recorded")
REACH = Step("seal-reach", "members of staff, evidence items and alarms", _reach)
CAPTURE_SITES = Step(
    "seal-capture-sites", "evidence items' capture sites", _capture_sites, verb="record", done="recorded"
)
INCIDENTS = Step("seal-incidents", "incidents", _incidents)
VISITS = Step("seal-visits", "visits", _visits)
HEARD = Step("seal-last-heard", "devices' last-heard times", _heard)
LIFECYCLES = Step("seal-lifecycle", "alarms' lifecycles", _lifecycles)
OUTBOX = Step("seal-outbox", "alarm outbox rows", _outbox)
WATCHED = Step("seal-watched", "devices' low-battery flags and visits", _watched)
REPLAYS = Step("seal-replay", "devices' replay states", _replays)
RECEIPTS = Step("seal-receipts", "device messages' receipts", _receipts)
RAISES = Step("seal-raise", "alarms' notes, positions and payloads", _raises)
# The upgrade's order: a grant is sealed only after the users it is made to (docs/console.md, "Grant seals"),
# a device's visit only after the visits (whose own seals bear it out), device messages' receipts
# after the devices (whose keys vouch for them) and before every step that reads the messages
# (devices' replay states are rebuilt from them), and items' capture sites after their reach seals
# (only an item whose seal holds is given one, and sealed again over it).
UPGRADE = (
    TOKENS,
    DEVICES,
    USERS,
    GRANTS,
    ENDS,
    ACCESS_ENDS,
    RECEIPTS,
    REACH,
    CAPTURE_SITES,
    INCIDENTS,
    VISITS,
    HEARD,
    LIFECYCLES,
    OUTBOX,
    WATCHED,
    REPLAYS,
    RAISES,
)

_YES = typer.Option("--yes", help="seal them (without it: only list them)")


def seal_devices_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the devices enrolled before device rows carried a seal (``devices.seals``), and those
    sealed before seals were bound to their latest custody entry, which are refused as unknown until
    then; run once after upgrading (after `evidence backfill-custody` for devices older than the
    custody record). Only a row whose kind, site, assigned staff and public key are what the
    custody ledger last recorded, and that is not active where custody last disabled it, is sealed,
    bound to a new entry; every other is listed as refused, with what differs."""
    _seal_rows(DEVICES, yes)


def seal_tokens_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the bearer tokens issued before tokens carried a seal (``accounts.seals``), which sign
    nobody in until then; run once after upgrading. It seals them as they stand, a token planted in
    the database too: read the list first."""
    _seal_rows(TOKENS, yes)


def seal_users_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the users made before user rows carried a seal (``accounts.seals``), and those sealed
    before seals covered the full name, who cannot sign in until then; run once after upgrading
    (after `evidence backfill-custody` for users older than the custody record of their site or
    password). Only a row whose role, site, active state and password are what the custody ledger
    last recorded (or the old seal holds for them), and whose name is the one it records, if it
    records one, is sealed; every other is listed as refused, with what differs."""
    _seal_rows(USERS, yes)


def record_credential_ends_command(
    yes: Annotated[bool, typer.Option("--yes", help="record them (without it: only list them)")] = False,
) -> None:
    """Record on custody the bearer tokens revoked and console sessions ended before ends were
    recorded (``accounts.ends``), which a row put back in the database would revive until then; run
    once after upgrading."""
    _seal_rows(ENDS, yes)


def record_access_ends_command(
    yes: Annotated[bool, typer.Option("--yes", help="record them (without it: only list them)")] = False,
) -> None:
    """Record on custody the devices disabled and incident assignments ended before these ends were
    recorded (``devices.ends``, ``incidents.grants``), which a copy of their row from before, put
    back in the database, would make active again until then; run once after upgrading."""
    _seal_rows(ACCESS_ENDS, yes)


def seal_grants_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the incident assignments and export jobs made before they carried a seal
    (``incidents.grants``), which grant nothing until then; run once after upgrading (after
    `evidence seal-users`). Only an active assignment the custody ledger's latest entry for it
    assigns, and a job its ``export_requested`` entry records as it stands, is sealed; every other
    is listed as refused, with why."""
    _seal_rows(GRANTS, yes)


def seal_reach_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the members of staff, evidence items and alarms made before they carried a reach seal
    (``chain_of_custody.reach_seals``, ``chain_of_custody.alarm_seals``), which reach no site's
    managers by their row until then; run once after upgrading (after `evidence backfill-custody`
    for staff and alarms older than their custody record). Only a member of staff whose site, an
    item whose wearer, device and original, and an alarm whose site and voice memo are what the
    custody ledger recorded is sealed; every other is listed as refused, with what differs."""
    _seal_rows(REACH, yes)


def seal_capture_sites_command(
    yes: Annotated[bool, typer.Option("--yes", help="record them (without it: only list them)")] = False,
) -> None:
    """Record the site each evidence item recorded before items kept one was captured under
    (``chain_of_custody.capture_sites``), whose reach by device follows its device's site now until
    then (a device re-enrolled at another site takes them there); run once after upgrading (after
    `evidence seal-reach`). An item whose reach seal holds is given its device's site as the
    custody ledger's device entries last set it before the item's 'stored' entry (an alarm's
    payload or voice memo its alarm's recorded site, a redacted copy its original's), and sealed
    again over it; every other is listed as refused, with why."""
    _seal_rows(CAPTURE_SITES, yes)


def _print_awaiting(found: AwaitingUpgrade) -> None:
    """The counts the service's start-up warning, ``/healthz`` and the console's banner give, a kind
    a line, before the steps list their rows."""
    out.print(found.summary(), markup=False, highlight=False, soft_wrap=True)
    for line in found.lines():
        out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def seal_incidents_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the incidents opened before incident rows carried a seal
    (``chain_of_custody.incident_seals``), which no site's managers read and whose windows link
    nothing until then; run once after upgrading (after `evidence backfill-custody` for incidents
    older than the custody record of their site). Only an incident whose site and footage window
    are what the custody ledger last recorded is sealed; every other is listed as refused, with
    what differs."""
    _seal_rows(INCIDENTS, yes)


def seal_visits_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the lone visits opened before visits carried a seal (``chain_of_custody.visit_seals``),
    whose missed check-in takes no wearer from them until then; run once after upgrading. Only a
    visit whose wearer is the one the custody ledger last recorded for it, or, for a visit it never
    recorded, the member of staff it last assigned to its device, is sealed (and recorded); every
    other is listed as refused, with what differs."""
    _seal_rows(VISITS, yes)


def seal_last_heard_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal when each lone-worker device was last heard from, for state rows written before that
    was sealed (``chain_of_custody.heard_seals``), which count as silent once due until then; run
    once after upgrading. A time later than now is refused."""
    _seal_rows(HEARD, yes)


def seal_lifecycle_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the lifecycle of each alarm raised before it was sealed
    (``chain_of_custody.lifecycle_seals``), taken as it stands until then only while its custody
    record agrees; run once after upgrading. Only an alarm whose status, severity, outcome and
    deadline are what its latest custody entry records is sealed; every other is listed as refused,
    with what differs."""
    _seal_rows(LIFECYCLES, yes)


def seal_outbox_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the alarm outbox rows queued before messages were sealed
    (``chain_of_custody.outbox_seals``), taken as they stand until then; run once after upgrading.
    Nothing outside a row records its message, so each is sealed as it stands, due no later than
    now; a row queued after seals began (by the custody ledger, or above a row whose seal holds)
    had its seal removed, and is listed as refused."""
    _seal_rows(OUTBOX, yes)


def seal_watched_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the low-battery flag and visit of each lone-worker device whose state row was written
    low or on a visit before they were sealed (``chain_of_custody.watched_seals``), taken as they
    stand until then only while its alarms and visits bear them out; run once after upgrading
    (after `evidence seal-visits`). Only a row that is low exactly while a low-battery alarm of the
    device is open and its condition not cleared, and on the latest of its visits not ended whose
    own seal holds, is sealed; every other is listed as refused, with what differs."""
    _seal_rows(WATCHED, yes)


def seal_replay_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the replay state of each lone-worker device stored before it was sealed
    (``chain_of_custody.replay_seals``), taken until then only as far as the device's received
    messages bear it out; run once after upgrading (after `evidence seal-receipts`). Nothing
    records a heartbeat's sequence number, so each is written as its received messages bear it out
    (their latest event ids and sequence numbers, as the device signed them), sealed: what the
    intake would write at the device's next message."""
    _seal_rows(REPLAYS, yes)


def seal_raise_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal the provisional flag, note, position and payload item of each alarm raised before they
    were sealed (``chain_of_custody.raise_seals``), shown as they stand until then; run once after
    upgrading. Only a whole alarm whose payload item is the one its custody entries name, and whose
    note and position are what they (or the device's own message) record, is sealed; every other
    is listed as refused, with what differs."""
    _seal_rows(RAISES, yes)


def seal_receipts_command(yes: Annotated[bool, _YES] = False) -> None:
    """Seal, once, the receipt of each lone-worker device message stored before receipts were sealed
    (migration 0045, ``chain_of_custody.receipt_upgrade``), which no key replaced since vouches for
    until then; run once after upgrading (after `evidence seal-devices`). Only a message whose
    stored bytes the device signed with a key its custody record says it had at the message's date
    (a key since replaced only for a message dated before its replacement) is sealed, under that
    key; every other is listed as refused. Once it has run (its ``receipts_sealed`` custody entry),
    no row without a receipt seal is sealed again: each is listed as refused."""
    _seal_rows(RECEIPTS, yes)


def upgrade_seals_command(
    yes: Annotated[bool, typer.Option("--yes", help="do every step (without it: only list them)")] = False,
) -> None:
    """Run every command the upgrade to sealed rows needs, in order: seal-tokens, seal-devices,
    seal-users, seal-grants (after the users), record-credential-ends, record-access-ends,
    seal-receipts, seal-reach, seal-capture-sites (after the items' reach seals), seal-incidents,
    seal-visits, seal-last-heard, seal-lifecycle, seal-outbox, seal-watched, seal-replay, seal-raise. It first prints how many rows of each kind await it (as the service's start-up
    warning, ``/healthz`` and the console's banner count them); each step lists its rows,
    and with ``--yes`` does what it lists, in a transaction of its own, then prints what still awaits. Rows a step refuses are
    listed under it with why, the later steps still run, and the command exits 1 after ``--yes``
    (run it again once they are put right, or leave them refused)."""
    from chain_of_custody.awaiting_upgrade import awaiting_upgrade

    s = _services(existing=True)
    refused: list[str] = []
    try:
        with s.db.session() as session:
            before = awaiting_upgrade(session, s.key)
        _print_awaiting(before)
        for step in UPGRADE:
            out.print(f"== evidence {step.command}", markup=False, highlight=False)
            with s.db.session() as session:
                listed = step.run(session, s, yes)
            if _report(step, listed, yes):
                refused.append(step.command)
        if yes and before:
            with s.db.session() as session:
                after = awaiting_upgrade(session, s.key)
            left = "; ".join(after.lines())
            said = (
                f"still awaiting (refused above, with why): {left}"
                if after
                else "nothing awaits the upgrade now"
            )
            console.print(said, markup=False, highlight=False, soft_wrap=True)
    finally:
        s.close()
    if refused:
        console.print(f"[yellow]steps with refused rows: {', '.join(refused)}[/yellow]")
        if yes:
            raise typer.Exit(1)
