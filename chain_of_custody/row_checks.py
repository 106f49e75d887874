"""The database reads behind ``row_replay`` and ``registry_replay``: links, legal holds, users,
incidents' sites, assignments, export jobs, download links, staff and devices as rows.

The tables belong to other domains (incidents, accounts, devices), which may not be imported here; they are
named as plain tables, only the columns the comparison needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from storage.db import UTCDateTime

from .entries import ChainReport, SignedEntry
from .models import EvidenceItem
from .registry_replay import (
    AlarmRow,
    DeviceRow,
    StaffRow,
    alarm_findings,
    alarm_replay,
    alarms_unchecked,
    device_findings,
    device_replay,
    devices_unchecked,
    staff_findings,
    staff_replay,
)
from .row_replay import (
    AssignmentRow,
    DownloadLinkRow,
    ExportJobRow,
    HoldRow,
    LinkRow,
    UserRow,
    assignment_findings,
    assignment_replay,
    download_link_findings,
    download_link_replay,
    export_job_findings,
    export_replay,
    export_request_findings,
    export_request_replay,
    hold_findings,
    hold_replay,
    incident_site_findings,
    incident_site_replay,
    incidents_unchecked,
    item_hold_findings,
    item_hold_replay,
    link_findings,
    link_replay,
    password_digest,
    passwords_unchecked,
    user_findings,
    user_replay,
    users_unchecked,
)
from .window_replay import window_findings, window_record, window_replay, windows_unchecked

_LINKS = table(
    "incident_links",
    column("id"),
    column("incident_id"),
    column("target_kind"),
    column("target_id"),
    column("unlinked_at"),
)
_HOLDS = table("legal_holds", column("id"), column("target_kind"), column("target_id"), column("released_at"))
_USERS = table(
    "users",
    column("username"),
    column("role"),
    column("site"),
    column("active"),
    column("password_hash"),
    column("full_name"),
)
_ASSIGNMENTS = table(
    "incident_assignments", column("id"), column("incident_id"), column("user_id"), column("unassigned_at")
)
_USER_IDS = table("users", column("id"), column("username"))
_INCIDENTS = table("incidents", column("id"), column("site"))
_WINDOWS = table(
    "incidents",
    column("id"),
    column("wearer"),
    column("window_start", UTCDateTime),
    column("window_end", UTCDateTime),
)
_EXPORT_JOBS = table(
    "export_jobs",
    column("id"),
    column("incident_id"),
    column("requested_by"),
    column("status"),
    column("package_sha256"),
    column("package_size"),
    column("requester_role"),
    column("include_originals"),
    column("reason"),
    column("scope"),
)
_DOWNLOAD_LINKS = table(
    "export_links",
    column("id"),
    column("export_id"),
    column("created_by"),
    column("recipient"),
    column("revoked_at"),
)

_STAFF = table("staff", column("id"), column("site"))
_DEVICES = table("devices", column("id"), column("kind"), column("site"), column("assigned_staff_id"))
_ALARMS = table(
    "alarms",
    column("id"),
    column("site"),
    column("voice_memo_item_id"),
    column("provisional"),
    column("wearer"),
    column("incident_id"),
)


def link_rows(session: Session) -> list[LinkRow]:
    q = select(_LINKS.c.id, _LINKS.c.incident_id, _LINKS.c.target_kind, _LINKS.c.target_id).where(
        _LINKS.c.unlinked_at.is_(None)
    )
    return [LinkRow(int(i), str(inc), str(kind), str(target)) for i, inc, kind, target in session.execute(q)]


def hold_rows(session: Session) -> list[HoldRow]:
    q = select(_HOLDS.c.id, _HOLDS.c.target_kind, _HOLDS.c.target_id, _HOLDS.c.released_at)
    return [HoldRow(int(i), str(k), str(t), released is None) for i, k, t, released in session.execute(q)]


def user_rows(session: Session, password_secret: bytes | None = None) -> list[UserRow]:
    """The users; with ``password_secret``, each with the digest of its password hash (the hash is
    read here and goes no further)."""
    c = _USERS.c
    q = select(c.username, c.role, c.site, c.active, c.password_hash, c.full_name)
    return [
        UserRow(
            str(u),
            str(r),
            s,
            bool(a),
            password_digest(password_secret, h) if password_secret is not None and h else None,
            str(n or ""),
        )
        for u, r, s, a, h, n in session.execute(q)
    ]


def assignment_rows(session: Session) -> list[AssignmentRow]:
    a, u = _ASSIGNMENTS.c, _USER_IDS.c
    q = (
        select(a.id, a.incident_id, u.username)
        .select_from(_ASSIGNMENTS.outerjoin(_USER_IDS, u.id == a.user_id))
        .where(a.unassigned_at.is_(None))
    )
    return [AssignmentRow(int(i), str(inc), str(name)) for i, inc, name in session.execute(q)]


def export_job_rows(session: Session) -> list[ExportJobRow]:
    c = _EXPORT_JOBS.c
    q = select(
        c.id,
        c.incident_id,
        c.requested_by,
        c.status,
        c.package_sha256,
        c.package_size,
        c.requester_role,
        c.include_originals,
        c.reason,
        c.scope,
    )
    return [
        ExportJobRow(
            str(i),
            str(inc),
            str(by),
            str(st),
            sha,
            None if size is None else int(size),
            role,
            bool(originals),
            reason,
            hashlib.sha256(str(scope).encode()).hexdigest(),
        )
        for i, inc, by, st, sha, size, role, originals, reason, scope in session.execute(q)
    ]


def download_link_rows(session: Session) -> list[DownloadLinkRow]:
    c = _DOWNLOAD_LINKS.c
    q = select(c.id, c.export_id, c.created_by, c.recipient, c.revoked_at)
    return [
        DownloadLinkRow(str(i), str(e), str(b), str(r), rv is not None)
        for i, e, b, r, rv in session.execute(q)
    ]


def incident_windows(session: Session) -> dict[str, dict[str, Any]]:
    """Each incident's footage window, as its ``incident_changed`` entry records one."""
    c = _WINDOWS.c
    q = select(c.id, c.wearer, c.window_start, c.window_end)
    return {str(i): window_record(w, start, end) for i, w, start, end in session.execute(q)}


def staff_rows(session: Session) -> list[StaffRow]:
    return [StaffRow(str(i), s) for i, s in session.execute(select(_STAFF.c.id, _STAFF.c.site))]


def device_rows(session: Session) -> list[DeviceRow]:
    c = _DEVICES.c
    q = select(c.id, c.kind, c.site, c.assigned_staff_id)
    return [DeviceRow(str(i), str(k), s, a) for i, k, s, a in session.execute(q)]


def alarm_rows(session: Session) -> list[AlarmRow]:
    c = _ALARMS.c
    q = select(c.id, c.site, c.voice_memo_item_id, c.provisional, c.wearer, c.incident_id)
    return [AlarmRow(str(i), s, m, bool(p), w, n) for i, s, m, p, w, n in session.execute(q)]


def check_registry(session: Session, entries: Sequence[SignedEntry], report: ChainReport) -> None:
    """Staff members' sites, devices' sites and assigned staff, and alarms' sites and voice memos
    against the ledger's replay (``registry_replay``): they decide which site's security managers
    and control room see whose footage and alarms."""
    report.problems.extend(staff_findings(staff_replay(entries), staff_rows(session)))
    devices = device_rows(session)
    replay = device_replay(entries)
    report.problems.extend(device_findings(replay, devices))
    unchecked = devices_unchecked(replay, devices)
    if unchecked:
        report.notes.append(
            f"the site or assigned staff of {len(unchecked)} device(s) is not in their custody record, "
            "so not checked: " + ", ".join(unchecked[:10])
        )
    alarms = alarm_rows(session)
    recorded = alarm_replay(entries)
    report.problems.extend(alarm_findings(recorded, alarms))
    unchecked = alarms_unchecked(recorded, alarms)
    if unchecked:
        report.notes.append(
            f"the site of {len(unchecked)} alarm(s) is not in their custody record, so not checked: "
            + ", ".join(unchecked[:10])
        )


def check_row_families(
    session: Session,
    entries: Sequence[SignedEntry],
    report: ChainReport,
    password_secret: bytes | None = None,
) -> None:
    """Links, legal holds (and each item's hold flag), users (and, given the service key's
    ``PASSWORD_DIGESTS`` secret, their passwords), their incident assignments, export jobs, download
    links, and the staff and devices of the registry against the ledger's replay (``row_replay``): one finding each disagreement."""
    report.problems.extend(link_findings(link_replay(entries), link_rows(session)))
    report.problems.extend(hold_findings(hold_replay(entries), hold_rows(session)))
    held = {i: bool(h) for i, h in session.execute(select(EvidenceItem.id, EvidenceItem.legal_hold))}
    report.problems.extend(item_hold_findings(item_hold_replay(entries), held))
    users = user_rows(session, password_secret)
    replay = user_replay(entries)
    report.problems.extend(user_findings(replay, users))
    unchecked = users_unchecked(replay, users)
    if unchecked:
        report.notes.append(
            f"the site of {len(unchecked)} user(s) is not in their custody record, so not checked: "
            + ", ".join(unchecked[:10])
        )
    unchecked = passwords_unchecked(replay, users) if password_secret is not None else []
    if unchecked:
        report.notes.append(
            f"the password of {len(unchecked)} user(s) is not in their custody record, so not checked: "
            + ", ".join(unchecked[:10])
        )
    sites = {str(i): s for i, s in session.execute(select(_INCIDENTS.c.id, _INCIDENTS.c.site))}
    recorded = incident_site_replay(entries)
    report.problems.extend(incident_site_findings(recorded, sites))
    unchecked = incidents_unchecked(recorded, sites)
    if unchecked:
        report.notes.append(
            f"the site of {len(unchecked)} incident(s) is not in the custody record, so not checked: "
            + ", ".join(unchecked[:10])
        )
    windows = incident_windows(session)
    recorded_windows = window_replay(entries)
    report.problems.extend(window_findings(recorded_windows, windows))
    unchecked = windows_unchecked(recorded_windows, windows)
    if unchecked:
        report.notes.append(
            f"the footage window of {len(unchecked)} incident(s) is not in the custody record, so not "
            "checked: " + ", ".join(unchecked[:10])
        )
    report.problems.extend(assignment_findings(assignment_replay(entries), assignment_rows(session)))
    jobs = export_job_rows(session)
    report.problems.extend(export_job_findings(export_replay(entries), jobs))
    report.problems.extend(export_request_findings(export_request_replay(entries), jobs))
    report.problems.extend(download_link_findings(download_link_replay(entries), download_link_rows(session)))
    check_registry(session, entries, report)
