"""Rows that widen what someone sees or keeps, against the ledger's replay: pure comparison, no I/O.

An incident's links, legal holds, users' roles and sites, and export download links all live in
database rows that the access rules trust. Each change to them is also a signed custody entry, so
the latest entry for a row's key says what the row must say. Anyone with write access to the
database can insert, delete or edit a row; only the service key can sign an entry. The database
reads are in ``row_checks``; these functions compare and name each disagreement once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .entries import CustodyAction, Problem, SignedEntry


def _details(entry: SignedEntry) -> dict[str, Any]:
    try:
        d = json.loads(entry.body.details)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


# -- incident links ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkRow:
    """An active (not unlinked) row of ``incident_links``."""

    id: int
    incident_id: str
    kind: str  # evidence | alarm
    target_id: str


@dataclass(frozen=True)
class LinkStep:
    """The latest ``linked`` or ``unlinked`` entry for one incident and target."""

    seq: int
    linked: bool
    link_id: int | None


LinkKey = tuple[str, str, str]  # incident id, target kind, target id


def link_key(entry: SignedEntry) -> LinkKey | None:
    """Which incident and target a ``linked``/``unlinked`` entry is about (None: it does not say).
    An evidence link is an entry of the item's own chain; an alarm link names the alarm."""
    if entry.body.action not in (CustodyAction.LINKED, CustodyAction.UNLINKED):
        return None
    d = _details(entry)
    incident = d.get("incident_id")
    if not isinstance(incident, str):
        return None
    if entry.body.item_id is not None:
        return incident, "evidence", entry.body.item_id
    alarm = d.get("alarm")
    return (incident, "alarm", str(alarm)) if alarm is not None else None


def link_replay(entries: Iterable[SignedEntry]) -> dict[LinkKey, LinkStep]:
    """The latest link step of every incident and target the ledger names, in ledger order."""
    out: dict[LinkKey, LinkStep] = {}
    for e in entries:
        key = link_key(e)
        if key is None:
            continue
        link = _details(e).get("link")
        out[key] = LinkStep(
            e.body.seq, e.body.action == CustodyAction.LINKED, link if isinstance(link, int) else None
        )
    return out


def _pair(key: LinkKey) -> str:
    incident, kind, target = key
    what = "evidence item" if kind == "evidence" else kind
    return f"incident {incident} / {what} {target}"


def link_findings(replay: Mapping[LinkKey, LinkStep], rows: Iterable[LinkRow]) -> list[Problem]:
    """Every active link row must be the one the latest ``linked`` entry for its pair names, and every
    pair whose latest entry says linked must have its active row. A link makes an item visible to
    the incident's readers, so a row the ledger does not hold is a way into someone else's evidence."""
    problems: list[Problem] = []
    active: dict[LinkKey, LinkRow] = {}
    for row in rows:
        key = (row.incident_id, row.kind, row.target_id)
        active[key] = row
        step = replay.get(key)
        where = _pair(key)
        if step is None:
            problems.append(
                Problem(
                    "link_unrecorded",
                    where,
                    f"link row #{row.id} is active but no custody entry links them (row inserted in the database)",
                )
            )
        elif not step.linked:
            problems.append(
                Problem(
                    "link_unlinked_in_custody",
                    where,
                    f"link row #{row.id} is active but custody entry #{step.seq} unlinked them",
                )
            )
        elif step.link_id is not None and step.link_id != row.id:
            problems.append(
                Problem(
                    "link_row_altered",
                    where,
                    f"the active link row is #{row.id} but custody entry #{step.seq} links them by row #{step.link_id}",
                )
            )
    for key, step in sorted(replay.items()):
        if step.linked and key not in active:
            problems.append(
                Problem(
                    "link_row_missing",
                    _pair(key),
                    f"custody entry #{step.seq} links them but no active link row does (row deleted or "
                    "marked unlinked in the database)",
                )
            )
    return problems


# -- legal holds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldRow:
    """A row of ``legal_holds``; ``active`` while not released."""

    id: int
    target_kind: str
    target_id: str
    active: bool


@dataclass(frozen=True)
class HoldStep:
    """The latest ``legal_hold`` entry that places or releases one hold, and what it holds."""

    seq: int
    on: bool
    target: tuple[str, str] | None


def hold_replay(entries: Iterable[SignedEntry]) -> dict[int, HoldStep]:
    """The latest step of every legal hold the ledger names: entries written when a hold is placed or
    released name it (``holds`` and ``target``); entries that only follow an item's class do not."""
    out: dict[int, HoldStep] = {}
    for e in entries:
        if e.body.action != CustodyAction.LEGAL_HOLD:
            continue
        d = _details(e)
        target = d.get("target")
        if not isinstance(target, dict) or not isinstance(d.get("on"), bool):
            continue
        at = (str(target.get("kind")), str(target.get("id")))
        for hold in d.get("holds") or []:
            if isinstance(hold, int):
                out[hold] = HoldStep(e.body.seq, d["on"], at)
    return out


def item_hold_replay(entries: Iterable[SignedEntry]) -> dict[str, tuple[int, bool]]:
    """Whether the ledger last said each item's object is held (its latest ``legal_hold`` entry)."""
    out: dict[str, tuple[int, bool]] = {}
    for e in entries:
        if e.body.action != CustodyAction.LEGAL_HOLD or e.body.item_id is None:
            continue
        d = _details(e)
        held = d.get("object_held", d.get("on"))
        if isinstance(held, bool):
            out[e.body.item_id] = (e.body.seq, held)
    return out


def hold_findings(replay: Mapping[int, HoldStep], rows: Iterable[HoldRow]) -> list[Problem]:
    """Every hold row must be what its latest entry says (placed or released, on the same target),
    and every hold the ledger places must have its row: deleting or releasing a hold in the database
    lets footage expire under its retention class."""
    problems: list[Problem] = []
    seen: set[int] = set()
    for row in rows:
        seen.add(row.id)
        where = f"legal hold #{row.id} on {row.target_kind} {row.target_id}"
        step = replay.get(row.id)
        if step is None:
            if row.active:
                problems.append(
                    Problem("hold_unrecorded", where, "active, but no custody entry places it (row inserted)")
                )
            else:
                problems.append(Problem("hold_unrecorded", where, "no custody entry places or releases it"))
            continue
        if step.target is not None and step.target != (row.target_kind, row.target_id):
            problems.append(
                Problem(
                    "hold_row_altered",
                    where,
                    f"custody entry #{step.seq} holds {step.target[0]} {step.target[1]}",
                )
            )
        if step.on and not row.active:
            problems.append(
                Problem(
                    "hold_released_unrecorded",
                    where,
                    f"its row is released but custody entry #{step.seq} placed it and no entry releases it",
                )
            )
        elif not step.on and row.active:
            problems.append(
                Problem(
                    "hold_row_altered", where, f"its row is active but custody entry #{step.seq} released it"
                )
            )
    for hold, step in sorted(replay.items()):
        if hold not in seen:
            target = f" on {step.target[0]} {step.target[1]}" if step.target else ""
            state = "placed" if step.on else "released"
            problems.append(
                Problem(
                    "hold_row_missing",
                    f"legal hold #{hold}{target}",
                    f"custody entry #{step.seq} {state} it but its row is gone",
                )
            )
    return problems


def item_hold_findings(replay: Mapping[str, tuple[int, bool]], held: Mapping[str, bool]) -> list[Problem]:
    """An item's ``legal_hold`` flag (what the retention sweeper reads) against its latest entry; an
    item the ledger never held must not be flagged either way (``held``: item id -> flag)."""
    problems: list[Problem] = []
    for item_id, flag in sorted(held.items()):
        seq, recorded = replay.get(item_id, (None, False))
        if flag != recorded:
            said = f"custody entry #{seq} says {recorded}" if seq is not None else "no custody entry holds it"
            problems.append(
                Problem(
                    "item_hold_altered", f"evidence item {item_id}", f"its row's legal_hold is {flag}; {said}"
                )
            )
    return problems


# -- evidence items' scope -----------------------------------------------------------------------

ITEM_SCOPE = "item scope v1"  # the label of the service key's secret an item's scope digest uses


def item_scope_mac(secret: bytes, wearer: str | None, source_device_id: str | None) -> str:
    """What an item's ``stored`` entry records of its wearer and recording device: a keyed digest.
    They decide which site's security managers see the item (the wearer's site, the device's), so
    a change in the database widens who sees it; keyed (``ServiceKey.derived_secret(ITEM_SCOPE)``)
    rather than written out, because a package's custody chains travel to people from whom a
    withheld item's wearer is kept (a staff number is guessed from a plain hash)."""
    message = json.dumps([wearer, source_device_id], separators=(",", ":")).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


# -- incidents' sites ------------------------------------------------------------------------------


def incident_field_replay(entries: Iterable[SignedEntry], field: str) -> dict[str, tuple[int, Any]]:
    """What each incident's latest ``incident_changed`` entry that records ``field`` gives it, with
    that entry's seq."""
    out: dict[str, tuple[int, Any]] = {}
    for e in entries:
        if e.body.action != CustodyAction.INCIDENT_CHANGED:
            continue
        d = _details(e)
        incident = d.get("incident_id")
        if isinstance(incident, str) and field in d:
            out[incident] = (e.body.seq, d[field])
    return out


def incident_site_replay(entries: Iterable[SignedEntry]) -> dict[str, tuple[int, Any]]:
    """The site each incident's latest ``incident_changed`` entry gives it, with that entry's seq."""
    return incident_field_replay(entries, "site")


def incident_site_findings(
    replay: Mapping[str, tuple[int, Any]], sites: Mapping[str, str | None]
) -> list[Problem]:
    """Each incident's site (``sites``: incident id -> its row's site) against the latest entry that
    set it: a security manager sees the incidents of their site and everything linked to them, so
    moving an incident to another site shows its evidence to that site's managers. An incident no
    entry records (opened before sites were recorded) is not checked (``incidents_unchecked``)."""
    problems: list[Problem] = []
    for incident, site in sorted(sites.items()):
        if incident not in replay:
            continue
        seq, recorded = replay[incident]
        if site != recorded:
            problems.append(
                Problem(
                    "incident_site_altered",
                    f"incident {incident}",
                    f"its site is {site!r} in the database but {recorded!r} in custody entry #{seq}",
                )
            )
    return problems


def incidents_unchecked(replay: Mapping[str, tuple[int, Any]], sites: Mapping[str, str | None]) -> list[str]:
    """Incidents whose site no entry records: not checked."""
    return sorted(i for i in sites if i not in replay)


# -- users ---------------------------------------------------------------------------------------

USER_FIELDS = ("role", "site", "active")
NAME = "full_name"  # recorded at creation and at every change since names were sealed; older: unknown
PASSWORD_DIGESTS = "password hashes v1"  # the label of the service key's secret password digests use


def password_digest(secret: bytes, password_hash: str) -> str:
    """What custody records of a password: an HMAC of its stored hash under a secret derived from the
    service key (``ServiceKey.derived_secret(PASSWORD_DIGESTS)``). Never the hash itself (an offline
    guesser's target) nor anything from which one could test a guess: without the service key the
    digest says nothing, with it ``evidence verify`` tells a hash set in the database from the last
    one the service set."""
    return hmac.new(secret, password_hash.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class UserRow:
    username: str
    role: str
    site: str | None
    active: bool
    password_digest: str | None = None  # None: not computed (no key), or no hash
    full_name: str | None = None  # None: not read


def user_replay(entries: Iterable[SignedEntry]) -> dict[str, dict[str, tuple[int, Any]]]:
    """What the ledger says of each user: for each of role, site, active and full name, the entry
    that last set it and its value. A field the creating entry did not record (older entries: a
    site given on the command line, any name) stays unknown until a change records it."""
    out: dict[str, dict[str, tuple[int, Any]]] = {}
    for e in entries:
        if e.body.action != CustodyAction.USER_CHANGED:
            continue
        d = _details(e)
        name = d.get("user")
        if not isinstance(name, str):
            continue
        changes = d.get("changes")
        if d.get("created"):
            out[name] = {"active": (e.body.seq, True)}
            for f in ("role", "site", NAME):
                if f in d:
                    out[name][f] = (e.body.seq, d[f])
            if "password_digest" in d:
                out[name]["password"] = (e.body.seq, d["password_digest"])
        elif isinstance(changes, dict) and name in out:
            for f in (*USER_FIELDS, NAME):
                if f in changes:
                    out[name][f] = (e.body.seq, changes[f])
            if "password_digest" in changes:
                out[name]["password"] = (e.body.seq, changes["password_digest"])
            elif "password" in changes:  # changed before digests were recorded: unknown from here on
                out[name].pop("password", None)
    return out


def user_findings(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[UserRow]
) -> list[Problem]:
    """Each user's role, site and whether the account is active must be what the latest entry that
    set it says: a role or a site is what access is decided by; so must the name, where an entry
    records it and the row's was read (reports print it). A user no entry created is named."""
    problems: list[Problem] = []
    for row in rows:
        where = f"user {row.username}"
        known = replay.get(row.username)
        if known is None:
            problems.append(
                Problem(
                    "user_unrecorded",
                    where,
                    f"no custody entry creates this user (role {row.role!r}, site {row.site!r}): row inserted",
                )
            )
            continue
        for f in (*USER_FIELDS, NAME):
            if f not in known or getattr(row, f) is None:
                continue
            seq, recorded = known[f]
            kept = getattr(row, f)
            if kept != recorded:
                problems.append(
                    Problem(
                        f"user_{f}_altered",
                        where,
                        f"its {f} is {kept!r} in the database but {recorded!r} in custody entry #{seq}",
                    )
                )
        if "password" in known and row.password_digest is not None:
            seq, recorded = known["password"]
            if row.password_digest != recorded:
                problems.append(
                    Problem(
                        "user_password_altered",
                        where,
                        f"its password hash is not the one custody entry #{seq} records (a password set "
                        "in the database: whoever set it can sign in as this user)",
                    )
                )
    return problems


def users_unchecked(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[UserRow]
) -> list[str]:
    """Users whose site no entry recorded (created before sites were recorded): not checked."""
    return sorted(r.username for r in rows if r.username in replay and "site" not in replay[r.username])


def passwords_unchecked(
    replay: Mapping[str, Mapping[str, tuple[int, Any]]], rows: Iterable[UserRow]
) -> list[str]:
    """Users whose password no entry recorded a digest of (set before digests were): not checked."""
    return sorted(r.username for r in rows if r.username in replay and "password" not in replay[r.username])


# -- incident assignments ------------------------------------------------------------------------


@dataclass(frozen=True)
class AssignmentRow:
    """An active (not ended) row of ``incident_assignments``, with its user's name."""

    id: int
    incident_id: str
    username: str


def assignment_replay(entries: Iterable[SignedEntry]) -> dict[tuple[str, str], LinkStep]:
    """The latest assignment step of every incident and user: ``user_changed`` entries that name an
    incident and whether the user was assigned to it or taken off it."""
    out: dict[tuple[str, str], LinkStep] = {}
    for e in entries:
        if e.body.action != CustodyAction.USER_CHANGED:
            continue
        d = _details(e)
        incident, name, assigned = d.get("incident_id"), d.get("user"), d.get("assigned")
        if isinstance(incident, str) and isinstance(name, str) and isinstance(assigned, bool):
            row = d.get("assignment")
            out[(incident, name)] = LinkStep(e.body.seq, assigned, row if isinstance(row, int) else None)
    return out


def assignment_findings(
    replay: Mapping[tuple[str, str], LinkStep], rows: Iterable[AssignmentRow]
) -> list[Problem]:
    """Every active assignment must be the one the latest entry for its incident and user assigns,
    and every assignment the ledger holds must have its active row: an assignment shows an
    investigator the incident and everything linked to it."""
    problems: list[Problem] = []
    active: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.incident_id, row.username)
        active.add(key)
        where = f"incident {row.incident_id} / investigator {row.username}"
        step = replay.get(key)
        if step is None:
            problems.append(
                Problem(
                    "assignment_unrecorded",
                    where,
                    f"assignment row #{row.id} is active but no custody entry assigns them (row inserted)",
                )
            )
        elif not step.linked:
            problems.append(
                Problem(
                    "assignment_ended_in_custody",
                    where,
                    f"assignment row #{row.id} is active but custody entry #{step.seq} took them off",
                )
            )
        elif step.link_id is not None and step.link_id != row.id:
            problems.append(
                Problem(
                    "assignment_row_altered",
                    where,
                    f"the active assignment row is #{row.id} but custody entry #{step.seq} assigns them by row #{step.link_id}",
                )
            )
    for (incident, name), step in sorted(replay.items()):
        if step.linked and (incident, name) not in active:
            problems.append(
                Problem(
                    "assignment_row_missing",
                    f"incident {incident} / investigator {name}",
                    f"custody entry #{step.seq} assigns them but no active assignment row does (row "
                    "deleted or ended in the database)",
                )
            )
    return problems


# -- export jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportJobRow:
    """A row of ``export_jobs``: whose incident it belongs to (that decides who may fetch its
    package), who asked, and what it says the package is once ready; and what the request fixed
    (the requester's role, whether originals go in and why, the scope's SHA-256)."""

    id: str
    incident_id: str
    requested_by: str
    status: str
    package_sha256: str | None
    package_size: int | None
    requester_role: str | None = None
    include_originals: bool = False
    reason: str | None = None
    scope_sha256: str | None = None


def export_request_details(row: ExportJobRow) -> dict[str, Any]:
    """What the ``export_requested`` entry of a job records: everything the builder acts on. The
    scope (incident summary, items, pinned redactions, items listed by hash only) by its SHA-256."""
    return {
        "export": row.id,
        "incident_id": row.incident_id,
        "role": row.requester_role,
        "include_originals": row.include_originals,
        "reason": row.reason,
        "scope_sha256": row.scope_sha256,
    }


def export_request_disagreements(entry: SignedEntry, row: ExportJobRow) -> list[str]:
    """Where a job row differs from its ``export_requested`` entry, one sentence a field: the builder
    builds what the row says, so a row edited after the request (another incident, more items,
    originals added) must not be built."""
    said = _details(entry)
    out = []
    if entry.body.actor != row.requested_by:
        out.append(f"its requester is {row.requested_by!r} but {entry.body.actor!r} asked for it")
    for name, kept in export_request_details(row).items():
        if said.get(name) != kept:
            out.append(f"its {name} is {kept!r} but the request recorded {said.get(name)!r}")
    return out


def export_request_replay(entries: Iterable[SignedEntry]) -> dict[str, SignedEntry]:
    """The ``export_requested`` entry of each job, by export id."""
    out: dict[str, SignedEntry] = {}
    for e in entries:
        if e.body.action == CustodyAction.EXPORT_REQUESTED:
            export = _details(e).get("export")
            if isinstance(export, str):
                out[export] = e
    return out


def export_request_findings(replay: Mapping[str, SignedEntry], rows: Iterable[ExportJobRow]) -> list[Problem]:
    """Every job not yet ready (building, or failed) must be what its ``export_requested`` entry
    says: a job row put in the database by hand would otherwise be built by a worker, a package of
    footage nobody asked for (the builder refuses it too). A ready job answers to its package's
    ``exported`` entry (``export_job_findings``); jobs asked for before requests were recorded have
    none and are named here when not ready."""
    problems: list[Problem] = []
    for row in rows:
        if row.status == "ready":
            continue
        where = f"export {row.id}"
        entry = replay.get(row.id)
        if entry is None:
            problems.append(
                Problem(
                    "export_job_unrequested",
                    where,
                    f"{row.status}, but no 'export_requested' custody entry asks for it (row inserted)",
                )
            )
            continue
        for detail in export_request_disagreements(entry, row):
            problems.append(
                Problem("export_job_altered", where, f"{detail} (custody entry #{entry.body.seq})")
            )
    return problems


def export_replay(entries: Iterable[SignedEntry]) -> dict[str, SignedEntry]:
    """The ``exported`` entry of each package (the package's own, naming its incident), by export id."""
    out: dict[str, SignedEntry] = {}
    for e in entries:
        if (
            e.body.action == CustodyAction.EXPORTED
            and e.body.item_id
            and isinstance(_details(e).get("incident"), dict)
        ):
            out[e.body.item_id] = e
    return out


def export_job_findings(replay: Mapping[str, SignedEntry], rows: Iterable[ExportJobRow]) -> list[Problem]:
    """A ready export job must be what its package's ``exported`` entry says (incident, requester,
    package digest and size), and a package the ledger records must keep its job row. A job still
    building, or failed, is not on the ledger yet: it is not checked."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.id)
        where = f"export {row.id}"
        entry = replay.get(row.id)
        if entry is None:
            if row.status == "ready":
                problems.append(
                    Problem(
                        "export_job_unrecorded", where, "ready, but no 'exported' entry records its package"
                    )
                )
            continue
        d = _details(entry)
        incident = d["incident"].get("id")
        recorded: dict[str, tuple[Any, Any]] = {
            "incident": (incident, row.incident_id),
            "requester": (entry.body.actor, row.requested_by),
        }
        if row.status == "ready":
            recorded["package SHA-256"] = (d.get("package_sha256"), row.package_sha256)
            recorded["package size"] = (d.get("package_size"), row.package_size)
        for what, (said, kept) in recorded.items():
            if said != kept:
                problems.append(
                    Problem(
                        "export_job_altered",
                        where,
                        f"its {what} is {kept!r} in the database but {said!r} in custody entry #{entry.body.seq}",
                    )
                )
    for export_id, entry in sorted(replay.items()):
        if export_id not in seen:
            problems.append(
                Problem(
                    "export_job_row_missing",
                    f"export {export_id}",
                    f"custody entry #{entry.body.seq} records its package but its job row is gone",
                )
            )
    return problems


# -- export download links -----------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadLinkRow:
    id: str
    export_id: str
    created_by: str
    recipient: str
    revoked: bool


def download_link_replay(entries: Iterable[SignedEntry]) -> dict[str, list[SignedEntry]]:
    """Every ``link_issued`` and ``link_revoked`` entry, by the link it names."""
    out: dict[str, list[SignedEntry]] = {}
    for e in entries:
        if e.body.action in (CustodyAction.LINK_ISSUED, CustodyAction.LINK_REVOKED):
            link = _details(e).get("link")
            if isinstance(link, str):
                out.setdefault(link, []).append(e)
    return out


def download_link_findings(
    replay: Mapping[str, list[SignedEntry]], rows: Iterable[DownloadLinkRow]
) -> list[Problem]:
    """Each download link row against its entries: issued once, by the issuer and for the recipient
    the row names, for the package it belongs to; revoked in the row when an entry revokes it; and
    no issued link without its row."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.id)
        where = f"download link {row.id} of export {row.export_id}"
        steps = replay.get(row.id, [])
        issued = [e for e in steps if e.body.action == CustodyAction.LINK_ISSUED]
        revoked = [e for e in steps if e.body.action == CustodyAction.LINK_REVOKED]
        if len(issued) != 1:
            problems.append(
                Problem(
                    "download_link_unrecorded" if not issued else "download_link_issued_twice",
                    where,
                    f"{len(issued)} custody entries issue it, not one",
                )
            )
        else:
            e = issued[0]
            recorded = (e.body.item_id, e.body.actor, _details(e).get("recipient"))
            if recorded != (row.export_id, row.created_by, row.recipient):
                problems.append(
                    Problem(
                        "download_link_altered",
                        where,
                        f"its row names {row.created_by} for {row.recipient!r}; custody entry "
                        f"#{e.body.seq} issued it on {recorded[0]} by {recorded[1]} for {recorded[2]!r}",
                    )
                )
        if revoked and not row.revoked:
            problems.append(
                Problem(
                    "download_link_altered",
                    where,
                    f"custody entry #{revoked[0].body.seq} revoked it but its row is not revoked",
                )
            )
        elif row.revoked and not revoked and issued:
            problems.append(
                Problem("download_link_altered", where, "its row is revoked but no custody entry revokes it")
            )
    for link, steps in sorted(replay.items()):
        if link not in seen:
            seqs = ", ".join(f"#{e.body.seq}" for e in steps)
            problems.append(
                Problem(
                    "download_link_row_missing",
                    f"download link {link}",
                    f"custody entries {seqs} name it but its row is gone",
                )
            )
    return problems
