"""The ``evidence`` command: run the service, manage people and devices, verify the ledger."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from redaction.cli import redact as redact_command

from . import seal_commands
from .command_line import console, out, refusing
from .command_line import services as _services
from .settings import get_settings

if TYPE_CHECKING:
    from chain_of_custody.entries import ChainReport
    from chain_of_custody.package_verify import PackageReport


app = typer.Typer(help="Body-worn camera and lone-worker evidence service.", no_args_is_help=True)
users = typer.Typer(help="User accounts.", no_args_is_help=True)
devices = typer.Typer(help="Docks, cameras and lone-worker devices.", no_args_is_help=True)
app.add_typer(users, name="user")
app.add_typer(devices, name="device")
app.command("redact")(redact_command)
# Run once after upgrading to sealed rows (``ingest.seal_commands``): each on its own, or all in order.
app.command("seal-tokens")(seal_commands.seal_tokens_command)
app.command("seal-devices")(seal_commands.seal_devices_command)
app.command("seal-users")(seal_commands.seal_users_command)
app.command("seal-grants")(seal_commands.seal_grants_command)
app.command("seal-reach")(seal_commands.seal_reach_command)
app.command("seal-capture-sites")(seal_commands.seal_capture_sites_command)
app.command("seal-incidents")(seal_commands.seal_incidents_command)
app.command("seal-visits")(seal_commands.seal_visits_command)
app.command("seal-last-heard")(seal_commands.seal_last_heard_command)
app.command("seal-lifecycle")(seal_commands.seal_lifecycle_command)
app.command("seal-outbox")(seal_commands.seal_outbox_command)
app.command("seal-watched")(seal_commands.seal_watched_command)
app.command("seal-replay")(seal_commands.seal_replay_command)
app.command("seal-raise")(seal_commands.seal_raise_command)
app.command("seal-receipts")(seal_commands.seal_receipts_command)
app.command("record-credential-ends")(seal_commands.record_credential_ends_command)
app.command("record-access-ends")(seal_commands.record_access_ends_command)
app.command("upgrade-seals")(seal_commands.upgrade_seals_command)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default EVIDENCE_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default EVIDENCE_HTTP_PORT)")] = None,
) -> None:
    """Run the HTTP API (and, when configured, the alarm consumer) in this process."""
    import uvicorn

    from .http_edge import server_config
    from .logging_setup import configure_logging
    from .telemetry_process import prepare_shared_metrics

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    prepare_shared_metrics(settings)  # before the app imports prometheus_client
    from .app import create_app

    config = server_config(create_app(settings), settings, host, port, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from .migrations_runner import upgrade_database

    upgrade_database(get_settings().resolved_database_url)
    console.print("database is at the latest schema")


@users.command("add")
def user_add(
    username: str,
    role: Annotated[str, typer.Option(help="admin, security_manager, investigator, operator or auditor")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, envvar="EVIDENCE_NEW_USER_PASSWORD"
        ),
    ],
    full_name: str = "",
    site: str | None = None,
) -> None:
    """Create a user (the first admin is created this way)."""
    from accounts.seals import record_user
    from accounts.service import create_user, creation_record

    with refusing() as s, s.db.session() as session:
        created = create_user(session, username, password, role, key=s.key, full_name=full_name, site=site)
        record_user(session, s.ledger, created, "cli", creation_record(s.key, created))
    console.print(f"user {username} created with role {role}")


@users.command("repair")
def user_repair(
    username: str,
    by: Annotated[str, typer.Option("--by", help="the administrator doing the repair (their username)")],
    yes: Annotated[
        bool, typer.Option("--yes", help="repair it (without it: only show the row and custody)")
    ] = False,
    password: Annotated[
        str | None,
        typer.Option(envvar="EVIDENCE_NEW_USER_PASSWORD", help="the new password (asked for when not given)"),
    ] = None,
) -> None:
    """Show a user's row beside what the custody ledger last recorded of them (role, site, active,
    name, and whether the password hash is the one custody holds a digest of), and with --yes put a
    row whose seal does not hold (written in the database) back as custody records it, with a new
    password; the repair is a custody entry in the name of the administrator given by --by."""
    from accounts.repair import repair_plan, repair_user
    from accounts.throttle import SignInThrottle, ThrottlePolicy

    with refusing(existing=True) as s:
        with s.db.session() as session:
            plan = repair_plan(session, s.ledger, username)
        for line in plan.lines():
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        if plan.refused:
            raise typer.Exit(1)
        if not yes:
            console.print("run again with --yes to repair it")
            return
        if password is None:
            password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
        with s.db.session() as session:
            repair_user(session, s.ledger, username, password, by)
        # The failed sign-ins against the broken row are forgotten, as an administrator's unlock does.
        SignInThrottle(s.db, ThrottlePolicy.from_settings(s.settings)).forgive(username)
    console.print(f"user {username} repaired: it signs in with the new password only")


@app.command("create-admin")
def create_admin(
    username: str = "admin",
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, envvar="EVIDENCE_NEW_USER_PASSWORD"
        ),
    ] = "",
) -> None:
    """Create the first administrator."""
    user_add(username, "admin", password)


@devices.command("staff")
def staff_add(staff_id: str, name: str, group: str = "other", site: str | None = None) -> None:
    """Add or update a member of staff who wears cameras or carries alarms."""
    from devices.service import add_staff

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            add_staff(session, s.ledger, staff_id, name, group, site, actor="cli")
    finally:
        s.close()
    console.print(f"staff {staff_id} saved")


@devices.command("dock")
def dock_enrol(dock_id: str, name: str = "", site: str | None = None) -> None:
    """Enrol a dock and print its token (shown once; only its hash is kept)."""
    from devices.service import DeviceRefused, enrol_dock

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            enrolled = enrol_dock(session, s.ledger, dock_id, "cli", name=name, site=site)
    except DeviceRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        s.close()
    out.print(enrolled.token)


@devices.command("camera")
def camera_enrol(serial: str, public_key: str, staff_id: str | None = None, site: str | None = None) -> None:
    """Enrol a body-worn camera by its Ed25519 public key (base64) and assign it to a member of staff."""
    from devices.service import DeviceRefused, enrol_keyed_device

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            enrol_keyed_device(
                session, s.ledger, "camera", serial, public_key, "cli", staff_id=staff_id, site=site
            )
    except DeviceRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        s.close()
    console.print(f"camera {serial} enrolled")


@devices.command("lone-worker")
def lone_worker_enrol(
    device_id: str,
    public_key: Annotated[str, typer.Argument(help="base64 of the device's raw Ed25519 public key")],
    staff_id: Annotated[str | None, typer.Option(help="staff number of the person who carries it")] = None,
    name: str = "",
    site: str | None = None,
) -> None:
    """Enrol a lone-worker device and print its broker password (shown once; only its hash is kept).

    Then regenerate the broker's files (``evidence broker-access``) and reload the broker.
    """
    from devices.service import DeviceRefused, enrol_lone_worker

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            enrolled = enrol_lone_worker(
                session, s.ledger, device_id, public_key, "cli", staff_id=staff_id, name=name, site=site
            )
    except DeviceRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        s.close()
    console.print(f"lone-worker device {device_id} enrolled; its MQTT username is {device_id}, password:")
    out.print(enrolled.mqtt_password)


@devices.command("list")
def device_list(kind: str | None = None) -> None:
    from devices.service import list_devices

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            rows = list_devices(session, None, kind)
            table = Table("id", "kind", "status", "staff", "site")
            for d in rows:
                table.add_row(d.id, d.kind, d.status, d.assigned_staff_id or "", d.site or "")
    finally:
        s.close()
    out.print(table)


@app.command()
def verify(
    package: Annotated[Path | None, typer.Argument(help="An export package to check offline")] = None,
    key_fingerprint: Annotated[
        str | None,
        typer.Option(
            help="SHA-256 fingerprint of the signing key, as obtained from the trust (its "
            "/.well-known/evidence-signing-key or the download link's page), never from the package"
        ),
    ] = None,
    accept_embedded_key: Annotated[
        bool,
        typer.Option(
            "--accept-embedded-key",
            help="Trust the key inside the package: shows only that the package agrees with itself",
        ),
    ] = False,
    skip_objects: Annotated[
        bool, typer.Option(help="Check the ledger and rows only, not object bytes")
    ] = False,
    all_tree_heads: Annotated[
        bool,
        typer.Option(
            "--all-tree-heads",
            help="Read every signed tree head in storage, not the newest, the oldest and a random sample",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print findings as JSON")] = False,
) -> None:
    """Verify the whole custody ledger and every stored object, or an export package offline."""
    report: ChainReport | PackageReport
    if package is not None:
        from chain_of_custody.package_verify import verify_package

        report = verify_package(package, key_fingerprint, accept_embedded_key=accept_embedded_key)
    else:
        from chain_of_custody.verify import TREE_HEAD_SAMPLE, VerifyOptions, verify_service

        s = _services(existing=True)
        try:
            with s.db.reading() as session:  # one moment of a service that may be running
                report = verify_service(
                    session,
                    s.store,
                    s.key,
                    VerifyOptions(
                        check_objects=not skip_objects,
                        tree_head_sample=None if all_tree_heads else TREE_HEAD_SAMPLE,
                    ),
                    progress=lambda m: console.print(f"[dim]{m}[/dim]"),
                )
        finally:
            s.close()
    notes: list[str] = list(getattr(report, "notes", []))
    if as_json:
        problems = [p.__dict__ for p in report.problems]
        doc = {
            "ok": report.ok,
            "entries_checked": report.entries_checked,
            "notes": notes,
            "problems": problems,
        }
        out.print_json(json.dumps(doc))
    else:
        for note in notes:
            out.print(f"[yellow]NOTE[/yellow] {note}")
        for p in report.problems:
            out.print(f"[red]FAIL[/red] {p}")
        if report.ok and package is not None:
            out.print(
                f"[green]OK[/green] package {package.name}: {getattr(report, 'files_checked', 0)} files, "
                f"{getattr(report, 'items_checked', 0)} items, {report.entries_checked} custody entries verified; "
                f"signed by key {getattr(report, 'fingerprint', '?')}"
            )
        elif report.ok:
            out.print(
                f"[green]OK[/green] {report.entries_checked} custody entries and all stored objects verified"
            )
    raise typer.Exit(0 if report.ok else 1)


@app.command("incident-windows")
def incident_windows(
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Withdraw each window the rule refuses, and the links it made beyond its reach "
            "(each step on the custody ledger); without it, only list them",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON")] = False,
) -> None:
    """Audit incidents' footage windows against today's access rule: windows set by someone who may
    not see all of the wearer's footage, or following a wearer to another site. Exits 1 when some
    were found and left standing."""
    from incidents.retention import RetentionRules
    from incidents.service import Retention
    from incidents.window_audit import audit_windows, withdraw

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            findings = audit_windows(session, s.key)
            if apply:
                retention = Retention(s.store, RetentionRules.from_settings(s.settings))
                for finding in findings:
                    withdraw(session, s.ledger, finding, retention=retention)
    finally:
        s.close()
    if as_json:
        out.print_json(json.dumps({"withdrawn": apply, "windows": [f.as_dict() for f in findings]}))
    else:
        for f in findings:
            verb = "withdrawn" if apply else "found"
            out.print(f"[yellow]{f.reference}[/yellow] {verb}: wearer {f.wearer}, set by {f.set_by}")
            for why in f.why:
                out.print(f"  {why}")
            if f.beyond:
                out.print(f"  {len(f.beyond)} linked item(s) beyond its reach: {', '.join(f.beyond)}")
        out.print(f"{len(findings)} window(s) {'withdrawn' if apply else 'outside the rule'}")
    raise typer.Exit(1 if findings and not apply else 0)


@app.command("keep-block-lists")
def keep_block_lists(
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="Read each one whole, check it and keep its list (without it: only list them)"
        ),
    ] = False,
) -> None:
    """Give every item stored before block lists were kept its list, once: its object read whole,
    checked against its record, the list kept with a signed ``blocks_listed`` custody entry, so a
    player's first seek into it no longer waits for a whole check. An object that no longer matches
    is quarantined. Exits 1 when one was refused."""
    from chain_of_custody.later_lists import keep_lists

    s = _services(existing=True)
    try:
        lines = keep_lists(s.db, s.ledger, s.store, yes)
    finally:
        s.close()
    for line in lines:
        out.print(line.line(), markup=False, highlight=False, soft_wrap=True)
    refused = sum(1 for line in lines if line.refused)
    done = "kept" if yes else "to keep: run again with --yes to keep them"
    console.print(f"{len(lines) - refused} block list(s) {done}")
    if refused:
        console.print(f"[yellow]{refused} item(s) refused: the reason is on each line[/yellow]")
    raise typer.Exit(1 if refused else 0)


@app.command()
def sweep(
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON")] = False,
) -> None:
    """Delete evidence whose retention class has expired, and renew the locks of linked and held evidence."""
    from incidents.retention import RetentionRules
    from incidents.retention import as_json as report_json
    from incidents.retention import sweep as run_sweep

    s = _services(existing=True)
    try:
        report = run_sweep(s.db, s.ledger, s.store, RetentionRules.from_settings(s.settings))
    finally:
        s.close()
    if as_json:
        out.print_json(report_json(report))
    else:
        out.print(
            f"deleted {len(report.deleted)}, storage refused {len(report.refused)}, "
            f"renewed {len(report.renewed)}, errors {len(report.errors)}"
        )
        for item_id, why in {**report.refused, **report.errors}.items():
            out.print(f"[yellow]{item_id}[/yellow] {why}")
    raise typer.Exit(1 if report.errors else 0)


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="Run queued jobs until the queue is empty, then exit")] = False,
    processes: Annotated[int, typer.Option(help="Worker processes to run side by side")] = 1,
) -> None:
    """Run redaction workers (any number, on any machine sharing the database and the object store)."""
    import multiprocessing

    if processes > 1:
        procs = [multiprocessing.Process(target=_worker_main, args=(once,)) for _ in range(processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return
    _worker_main(once)


def _worker_main(once: bool) -> None:
    s = _services(existing=True)
    w = s.redaction_worker()
    console.print(f"redaction worker {w.name} started")
    try:
        if once:
            while w.run_once() is not None:
                pass
        else:
            w.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        s.close()


@app.command("broker-access")
def broker_access(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for mosquitto.conf, passwords and data/rules.json")
    ],
    port: Annotated[int | None, typer.Option(help="Listener port (default EVIDENCE_MQTT_PORT)")] = None,
    bind: Annotated[str, typer.Option(help="Listener address")] = "127.0.0.1",
    reload_pid: Annotated[
        int | None,
        typer.Option(help="Send this Mosquitto process SIGHUP (passwords) and then --apply (rules)"),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Bring the running broker's rules in line over its control topic")
    ] = False,
    run_as_user: Annotated[
        str | None,
        typer.Option(help="Account Mosquitto runs as; it will own the files (default: mosquitto as root)"),
    ] = None,
    plugin: Annotated[
        Path | None, typer.Option(help="Mosquitto's mosquitto_dynamic_security.so (default: found)")
    ] = None,
) -> None:
    """Regenerate the broker's password and rules files (and its configuration) from the device registry.

    Each enrolled, active lone-worker device may log in only with its own id as client id, publish
    only its own topics and subscribe only to its own acks and commands; the service account
    (EVIDENCE_MQTT_USERNAME/PASSWORD) reads all device topics. Disabled devices are left out: once
    the broker has re-read its passwords and its rules are in line, they are disconnected and
    cannot log in again.
    """
    import os
    import signal

    from devices.broker_access import BrokerFilesError, write_broker_files
    from devices.broker_rules import BrokerAdmin, BrokerRulesError, rules_for
    from devices.service import broker_accounts, service_account

    settings = get_settings()
    try:
        service = service_account(settings)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    from storage.db import Database

    from .migrations_runner import upgrade_database

    upgrade_database(settings.resolved_database_url)
    from chain_of_custody.keys import ServiceKey
    from devices.seals import device_seal_key

    key_path = settings.resolved_service_key_path
    if not key_path.exists():
        console.print(
            f"[red]no service key at {key_path}[/red]: the device registry's seals are checked with it"
        )
        raise typer.Exit(2)
    seal_key = device_seal_key(ServiceKey.load_or_create(key_path))
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            devices_ = broker_accounts(session, seal_key)  # a row altered in the database is left out
    finally:
        db.dispose()
    try:
        files = write_broker_files(
            out_dir,
            devices=devices_,
            service=service,
            port=port or settings.mqtt_port,
            bind_address=bind,
            run_as_user=run_as_user,
            plugin_path=plugin,
        )
    except (BrokerFilesError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(
        f"wrote {files.config}, {files.password_file} and {files.rules_file} ({len(devices_)} devices)"
    )
    if reload_pid:
        os.kill(reload_pid, signal.SIGHUP)
    if not (apply or reload_pid):
        console.print("reload the broker (SIGHUP) and run again with --apply, or restart it, to apply")
        return
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    wanted = rules_for([d.username for d in devices_], service.username)  # what the files say
    try:
        with BrokerAdmin(host, files.port, files.admin_password()) as admin:
            made = admin.bring_in_line(wanted)
    except BrokerRulesError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"the running broker's rules are in line ({made} changes)")


@app.command("alarm-worker")
def alarm_worker(
    client_id: Annotated[
        str | None,
        typer.Option(help="Stable MQTT client id of this instance (default EVIDENCE_MQTT_CLIENT_ID)"),
    ] = None,
    escalation: Annotated[bool, typer.Option(help="Also run the escalation loop")] = True,
    nice: Annotated[int, typer.Option(help="Lower this process's scheduling priority by this much")] = 0,
    parent_pid: Annotated[
        int | None, typer.Option(help="Stop when this process (the one that started this one) is gone")
    ] = None,
) -> None:
    """Consume lone-worker alarms from the broker (and run escalation) without the HTTP API."""
    if parent_pid is not None and os.getppid() != parent_pid:
        raise typer.Exit(1)  # the service that started it is already gone
    if nice:
        os.nice(nice)

    from alarms.service import escalation_loop

    from .mqtt_consumer import AlarmConsumer
    from .services import settle_heap

    s = _services(existing=True)
    consumer = AlarmConsumer(s, client_id=client_id)

    async def main() -> None:
        # SIGTERM (a supervisor, or the service stopping its telemetry process) stops it cleanly:
        # what is in hand is finished and acknowledged, the session stays with the broker.
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        if parent_pid is not None:
            watcher = asyncio.create_task(_stop_with_parent(parent_pid, task))  # noqa: F841 - kept alive
        try:
            await asyncio.to_thread(consumer.start)
            settle_heap()
            if escalation:
                await escalation_loop(s.alarms, s.settings.escalation_poll_seconds)
            else:
                await asyncio.Event().wait()
        finally:
            await asyncio.to_thread(consumer.stop)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        s.close()


async def _stop_with_parent(parent: int, task: asyncio.Task[None]) -> None:
    """A companion left behind by a killed service would fight its restarted successor for the
    same MQTT client id; it leaves instead."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    console.print("the service that started this process is gone; stopping")
    task.cancel()


@app.command("backfill-custody")
def backfill_custody(
    yes: Annotated[
        bool, typer.Option("--yes", help="append the entries (without it: only list them)")
    ] = False,
) -> None:
    """Adopt rows made before the ledger recorded them (links, assignments, incidents' sites, users'
    sites and passwords, staff, devices' and alarms' sites, incidents' windows) as they stand
    now, with signed entries; run once, after `evidence verify` shows nothing but the unrecorded
    rows to adopt (a planted row would be adopted too)."""
    from chain_of_custody.backfill import backfill

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            adoption = backfill(session, s.ledger, apply=yes)
    finally:
        s.close()
    for line in adoption.lines():
        out.print(line, markup=False, highlight=False)
    n = len(adoption.entries)
    if yes:
        console.print(f"{n} entries appended")
    else:
        console.print(f"{n} entries would be appended: run again with --yes to append them")


@app.command()
def checkpoint() -> None:
    """Write a signed checkpoint of the ledger tip to write-once storage now."""
    from chain_of_custody.checkpoints import write_checkpoint

    s = _services(existing=True)
    try:
        with s.db.session() as session:
            cp = write_checkpoint(session, s.store, s.key, retain_days=3650)
    finally:
        s.close()
    console.print(f"checkpoint at #{cp.seq}" if cp else "nothing new to checkpoint")


if __name__ == "__main__":
    app()


@app.command("witness")
def witness_command(
    url: Annotated[
        str, typer.Argument(help="The service's address, for example https://evidence.trust.nhs.uk")
    ],
    key_fingerprint: Annotated[
        str,
        typer.Option(help="SHA-256 fingerprint of the service's signing key, as given to you by the trust"),
    ],
    state: Annotated[
        Path, typer.Option(help="This witness's own directory: its key and its record of countersigned heads")
    ],
    token: Annotated[
        str | None,
        typer.Option(envvar="EVIDENCE_WITNESS_TOKEN", help="An auditor's API token on the service"),
    ] = None,
) -> None:
    """Fetch the custody log's newest tree head, check it extends the last one countersigned, and
    countersign it (run by a second party: another trust, the police)."""
    from chain_of_custody.witness import WitnessRefused, witness

    if not token:
        console.print("[red]an auditor's API token is needed[/red] (--token or EVIDENCE_WITNESS_TOKEN)")
        raise typer.Exit(2)
    try:
        record = witness(url, token, key_fingerprint, state)
    except WitnessRefused as exc:
        out.print(f"[red]REFUSED[/red] {exc}")
        raise typer.Exit(1) from None
    since = f", consistent with {record.previous_size}" if record.previous_size else ""
    out.print(
        f"[green]COUNTERSIGNED[/green] tree head of {record.head.tree_size} entries, root "
        f"{record.head.root_hash}{since}; witness key {record.witness_fingerprint}"
    )
