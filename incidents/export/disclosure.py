"""The disclosure log of an incident: what left the trust, to whom, when, on whose authority and why.

It is read from the records that already exist, never kept apart from them: the export requests
(who asked, originals and the stated reason, the package's hash), their download links (the named
recipient, the purpose, who issued it, expiry, revocation) and the custody ledger's ``viewed``
entries that every download writes on the package (``link:<id>`` as actor). One function reads
(``disclosure_page``: a link allows any number of downloads, so the log is read a page of downloads
at a time), the others are pure: the events in time order and their CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chain_of_custody.entries import CustodyAction
from chain_of_custody.models import CustodyEntry

from ..models import Incident
from .models import ExportJob, ExportLink

EVENT_KINDS = ("package_built", "link_issued", "downloaded", "link_revoked")
CSV_COLUMNS = (
    "at",
    "event",
    "by",
    "recipient",
    "purpose",
    "export_id",
    "package_sha256",
    "link_id",
    "expires_at",
    "originals",
    "reason",
    "detail",
)


@dataclass(frozen=True)
class DisclosureEvent:
    """One line of the log (one CSV row)."""

    at: str
    event: str
    by: str
    recipient: str | None
    purpose: str | None
    export_id: str
    package_sha256: str | None
    link_id: str | None = None
    expires_at: str | None = None
    originals: bool = False
    reason: str | None = None
    detail: str | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def downloads_by_link(entries: Iterable[tuple[str, str, str]]) -> dict[str, list[dict[str, Any]]]:
    """(actor, at, details JSON) of ``viewed`` entries on packages -> each link's downloads, oldest first."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for actor, at, details in entries:
        if not actor.startswith("link:"):
            continue
        d = json.loads(details or "{}")
        if d.get("purpose") != "download":
            continue
        out[actor.removeprefix("link:")].append(
            {"at": at, "range": d.get("range"), "client": d.get("client"), "sha256": d.get("sha256")}
        )
    for rows in out.values():
        rows.sort(key=lambda r: r["at"])
    return dict(out)


def package_view(
    job: ExportJob, links: Sequence[ExportLink], downloads: Mapping[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """One package and its links as the API shows them."""
    result = json.loads(job.result or "{}")
    return {
        "export_id": job.id,
        "status": job.status,
        "requested_by": job.requested_by,
        "requested_at": _iso(job.created_at),
        "built_at": _iso(job.finished_at),
        "include_originals": job.include_originals,
        "reason": job.reason,
        "filename": job.filename,
        "package_sha256": job.package_sha256,
        "manifest_sha256": result.get("manifest_sha256"),
        "key_fingerprint": result.get("key_fingerprint"),
        "items_included": len(result.get("included") or []),
        "links": [
            {
                "id": link.id,
                "recipient": link.recipient,
                "purpose": link.purpose,
                "created_by": link.created_by,
                "created_at": _iso(link.created_at),
                "expires_at": _iso(link.expires_at),
                "revoked_at": _iso(link.revoked_at),
                "revoked_by": link.revoked_by,
                "downloads": list(downloads.get(link.id, [])),
            }
            for link in links
        ],
    }


def events(packages: Sequence[Mapping[str, Any]]) -> list[DisclosureEvent]:
    """Every disclosure step of the packages, oldest first."""
    out: list[DisclosureEvent] = []
    for p in packages:
        sha = p["package_sha256"]
        if p["built_at"] and p["status"] == "ready":
            out.append(
                DisclosureEvent(
                    p["built_at"],
                    "package_built",
                    p["requested_by"],
                    None,
                    None,
                    p["export_id"],
                    sha,
                    originals=bool(p["include_originals"]),
                    reason=p["reason"],
                    detail=f"{p['items_included']} items with media; {p['filename'] or ''}".strip("; "),
                )
            )
        for link in p["links"]:
            common = {"recipient": link["recipient"], "purpose": link["purpose"], "export_id": p["export_id"]}
            out.append(
                DisclosureEvent(
                    link["created_at"],
                    "link_issued",
                    link["created_by"],
                    package_sha256=sha,
                    link_id=link["id"],
                    expires_at=link["expires_at"],
                    **common,
                )
            )
            for d in link["downloads"]:
                part = f"bytes {d['range'][0]}-{d['range'][1]}" if d.get("range") else "whole package"
                out.append(
                    DisclosureEvent(
                        d["at"],
                        "downloaded",
                        f"link:{link['id']}",
                        package_sha256=d.get("sha256") or sha,
                        link_id=link["id"],
                        detail=f"{part} from {d.get('client') or 'unknown address'}",
                        **common,
                    )
                )
            if link["revoked_at"]:
                out.append(
                    DisclosureEvent(
                        link["revoked_at"],
                        "link_revoked",
                        link["revoked_by"] or "",
                        package_sha256=sha,
                        link_id=link["id"],
                        **common,
                    )
                )
    # Links are stamped to the second: within one second, the order of the steps decides.
    out.sort(key=lambda e: (_when(e.at).replace(microsecond=0), EVENT_KINDS.index(e.event), _when(e.at)))
    return out


def _when(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text, never runs as a formula (recipients are typed by people)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(rows: Iterable[DisclosureEvent]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = asdict(row)
        writer.writerow([_cell(values[c]) for c in CSV_COLUMNS])
    return out.getvalue()


DISCLOSURE_PAGE = 500  # downloads in a page of the log, unless the caller asks for fewer
DISCLOSURE_PAGE_MAX = 5000


@dataclass(frozen=True)
class DisclosurePage:
    """One page of the log: ``log`` as :func:`disclosure_log` gives it, and the custody entry
    number the next page starts after (None on the last page)."""

    log: dict[str, Any]
    next_after: int | None


def disclosure_page(
    session: Session,
    incident: Incident,
    after: int = 0,
    limit: int = DISCLOSURE_PAGE,
    *,
    readable: Callable[[ExportJob], bool] | None = None,
) -> DisclosurePage:
    """A page of the incident's log: its packages and links (made by people, each a decision), with
    at most ``limit`` downloads (each link allows any number until it expires), those after custody
    entry ``after``. ``events`` are the page's downloads and the other steps between the previous
    page's last download and this page's last (to the end on the last page): the pages' events, one
    after the other, are the whole log in order. Each link says how many downloads it had in all.
    ``readable`` says which of the packages whose row names the incident the reader reads as its
    (``grants.export_job_read_as_its_incidents``); None: every one (the service itself)."""
    jobs = [
        job
        for job in session.scalars(
            select(ExportJob)
            .where(ExportJob.incident_id == incident.id)
            .order_by(ExportJob.created_at, ExportJob.id)
        )
        if readable is None or readable(job)
    ]
    ids = [j.id for j in jobs]
    links: dict[str, list[ExportLink]] = defaultdict(list)
    downloads: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, int] = {}
    next_after: int | None = None
    since: str | None = None
    until: str | None = None
    if ids:
        for link in session.scalars(
            select(ExportLink)
            .where(ExportLink.export_id.in_(ids))
            .order_by(ExportLink.created_at, ExportLink.id)
        ):
            links[link.export_id].append(link)
        by_link = _link_downloads().where(CustodyEntry.item_id.in_(ids))
        totals = {
            actor.removeprefix("link:"): int(n)
            for actor, n in session.execute(
                select(CustodyEntry.actor, func.count())
                .where(CustodyEntry.item_id.in_(ids), *_LINK_DOWNLOAD)
                .group_by(CustodyEntry.actor)
            )
        }
        rows = session.execute(
            by_link.where(CustodyEntry.seq > after).order_by(CustodyEntry.seq).limit(limit + 1)
        ).all()
        if len(rows) > limit:
            rows = rows[:limit]
            next_after = int(rows[-1].seq)
            until = rows[-1].at
        if after:
            since = session.scalar(select(CustodyEntry.at).where(CustodyEntry.seq == after))
        downloads = downloads_by_link((actor, at, details) for _, actor, at, details in rows)
    packages = [package_view(j, links[j.id], downloads) for j in jobs]
    for p in packages:
        for link in p["links"]:
            link["downloads_total"] = totals.get(link["id"], 0)

    def in_page(e: DisclosureEvent) -> bool:
        if e.event == "downloaded":
            return True
        at = _when(e.at)
        return (since is None or at > _when(since)) and (until is None or at <= _when(until))

    return DisclosurePage(
        {
            "incident": {"id": incident.id, "reference": incident.reference, "title": incident.title},
            "packages": packages,
            "events": [asdict(e) for e in events(packages) if in_page(e)],
        },
        next_after,
    )


_LINK_DOWNLOAD = (CustodyEntry.action == CustodyAction.VIEWED, CustodyEntry.actor.like("link:%"))


def _link_downloads() -> Any:
    return select(CustodyEntry.seq, CustodyEntry.actor, CustodyEntry.at, CustodyEntry.details).where(
        *_LINK_DOWNLOAD
    )


def disclosure_log(session: Session, incident: Incident) -> dict[str, Any]:
    """The first page of the incident's log (:func:`disclosure_page`)."""
    return disclosure_page(session, incident).log


def csv_pages(pages: Iterable[DisclosurePage]) -> Iterator[str]:
    """The log's CSV a page at a time (its header first), for an answer streamed as it is read."""
    yield to_csv(())
    for page in pages:
        yield to_csv(DisclosureEvent(**e) for e in page.log["events"]).split("\n", 1)[1]
