"""A download link is checked when the request arrives, then its download is recorded in a write
transaction of its own. Whatever ends the link between the two (revoked, expired, its issuer's
access ended, an item it holds quarantined) refuses the download: the link is read and checked again,
locked, in the transaction that records it, and nothing is recorded or streamed (both databases;
the change is made deterministically by a hook on what the download calls between the two)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from accounts.models import User
from chain_of_custody.evidence import Provenance, quarantine
from chain_of_custody.models import CustodyEntry, EvidenceItem
from incidents.export import downloads
from incidents.export.models import ExportLink
from tests.conftest import backends_waiting_on_a_lock, start_server, wait_for
from tests.test_export_api import package_with_link
from tests.test_export_package import put_evidence


def _viewed_by_link(s: Any, export_id: str, link_id: str) -> int:
    with s.db.reading() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(CustodyEntry)
                .where(
                    CustodyEntry.item_id == export_id,
                    CustodyEntry.action == "viewed",
                    CustodyEntry.actor == f"link:{link_id}",
                )
            )
            or 0
        )


class Clock:
    """``datetime`` as the download module sees it, moved on by ``passes``."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def passes(self, by: timedelta) -> None:
        self.ahead += by

    def module(self) -> type[datetime]:
        clock = self

        class Moved(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.now(tz) + clock.ahead

        return Moved


def _revoke(s: Any, export_id: str, link_id: str, clock: Clock, item_id: str) -> None:
    """As ``DELETE /exports/{id}/links/{link}`` does: the row and a ``link_revoked`` entry."""
    with s.db.session() as session:
        link = session.get(ExportLink, link_id)
        assert link is not None
        link.revoked_at = datetime.now(UTC)
        link.revoked_by = "user:inv"
        s.ledger.append(
            session,
            "link_revoked",
            "user:inv",
            item_id=export_id,
            details={"link": link_id, "recipient": link.recipient},
        )


def _expire(s: Any, export_id: str, link_id: str, clock: Clock, item_id: str) -> None:
    clock.passes(timedelta(hours=2))  # the link was issued for one


def _issuer_gone(s: Any, export_id: str, link_id: str, clock: Clock, item_id: str) -> None:
    with s.db.session() as session:
        session.execute(update(User).where(User.username == "inv").values(active=False))


def _quarantine(s: Any, export_id: str, link_id: str, clock: Clock, item_id: str) -> None:
    with s.db.session() as session:
        quarantine(session, s.ledger, item_id, "stored object altered (found by a read)", {})


MEANWHILE: dict[str, tuple[Callable[..., None], int, str]] = {
    "revoked": (_revoke, 410, "link_gone"),
    "expired": (_expire, 410, "link_gone"),
    "issuer_deactivated": (_issuer_gone, 410, "link_gone"),
    "item_quarantined": (_quarantine, 409, "quarantined"),
}


@pytest.mark.parametrize("change", sorted(MEANWHILE))
def test_a_link_ended_after_its_check_and_before_its_record_serves_nothing(
    services: Any, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    s = services
    made, status, reason = MEANWHILE[change]
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    link_id = token.split(".")[0]
    clock = Clock()
    monkeypatch.setattr(downloads, "datetime", clock.module())
    slots = downloads.download_slots
    hooked: list[str] = []

    def meanwhile(settings: Any) -> Any:
        """Called after the link's check and before the download's record: the link ends here."""
        if hooked == ["armed"]:
            hooked.append("done")
            made(s, result.export_id, link_id, clock, memo.id)
        return slots(settings)

    monkeypatch.setattr(downloads, "download_slots", meanwhile)
    server, thread, url = start_server(s)
    try:
        target = f"{url}/api/v1/exports/download/{token}"
        assert httpx.get(target, timeout=60).status_code == 200  # the link serves
        before = _viewed_by_link(s, result.export_id, link_id)
        hooked.append("armed")
        got = httpx.get(target, timeout=60)
        assert hooked == ["armed", "done"]
        assert got.status_code == status, (change, got.status_code, got.headers.get("content-type"))
        assert got.json()["reason"] == reason, got.status_code
        assert _viewed_by_link(s, result.export_id, link_id) == before, "a refused download was recorded"
        # ...and it stays refused, now at its first check.
        again = httpx.get(target, timeout=60)
        assert again.status_code == status and again.json()["reason"] == reason, again.status_code
        assert _viewed_by_link(s, result.export_id, link_id) == before
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_package_holding_a_quarantined_item_is_not_served(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An item found altered is quarantined so that nothing serves it as evidence again: a link to a
    package that holds it is refused (409 ``quarantined``) and nothing is recorded (its page, which
    reads no evidence, still answers); another package's link still serves. The link's holder has
    no account: the answer names no item of the service's (the log does, for its staff)."""
    s = services
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    other = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    _, other_token = package_with_link(s, [other.id])
    with s.db.session() as session:
        quarantine(session, s.ledger, memo.id, "stored object altered (found by a read)", {})
    server, thread, url = start_server(s)
    try:
        link_id = token.split(".")[0]
        with caplog.at_level(logging.WARNING):
            got = httpx.get(f"{url}/api/v1/exports/download/{token}", timeout=60)
        assert got.status_code == 409 and got.json()["reason"] == "quarantined", got.status_code
        assert memo.id not in got.text, got.text
        assert any(getattr(r, "item", None) == memo.id for r in caplog.records)
        ranged = httpx.get(
            f"{url}/api/v1/exports/download/{token}", headers={"Range": "bytes=0-99"}, timeout=60
        )
        assert ranged.status_code == 409 and ranged.json()["reason"] == "quarantined", ranged.status_code
        assert _viewed_by_link(s, result.export_id, link_id) == 0
        assert httpx.get(f"{url}/api/v1/exports/download/{token}/about", timeout=60).status_code == 200
        assert httpx.get(f"{url}/api/v1/exports/download/{other_token}", timeout=60).status_code == 200
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_revocations_of_one_link_at_once_record_one(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two people revoke the same link at once (PostgreSQL, where two write transactions run side by
    side): the link's row is locked where it is read, so the second waits for the first and finds it
    revoked. One ``link_revoked`` entry, and the row names who revoked it first. The second is held
    where it would read the link until it is seen waiting on a lock, or has read it (before)."""
    from accounts.service import Principal
    from incidents.export import api as export_api

    s = services
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    link_id = token.split(".")[0]
    with s.db.reading() as session:
        inv = session.scalar(select(User.id).where(User.username == "inv"))
    revoker = Principal(int(inv), "inv", "admin", None)
    first_in, second_in, go = threading.Event(), threading.Event(), threading.Event()
    may_revoke = export_api.may_revoke
    calls: list[str] = []

    def held(*args: Any) -> bool:
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            first_in.set()
            assert go.wait(30)
        else:
            second_in.set()
        return bool(may_revoke(*args))

    monkeypatch.setattr(export_api, "may_revoke", held)
    errors: list[BaseException] = []

    def revoke() -> None:
        try:
            export_api.revoke_link(result.export_id, link_id, user=revoker, s=s)
        except BaseException as exc:  # reported below
            errors.append(exc)

    first = threading.Thread(target=revoke, name="first")
    second = threading.Thread(target=revoke, name="second")
    first.start()
    assert first_in.wait(30)
    second.start()

    def waiting_on_a_lock() -> bool:
        return bool(backends_waiting_on_a_lock(s.db.engine, "export_links"))

    wait_for(
        lambda: second_in.is_set() or waiting_on_a_lock(), 30, what="the second revocation to read or wait"
    )
    go.set()
    first.join(30)
    second.join(30)
    assert not errors, errors
    with s.db.reading() as session:
        revoked = session.scalar(
            select(func.count())
            .select_from(CustodyEntry)
            .where(CustodyEntry.item_id == result.export_id, CustodyEntry.action == "link_revoked")
        )
    assert revoked == 1, f"{revoked} link_revoked entries for one link (revocations read it at once: {calls})"


def test_a_download_checks_its_link_once_where_it_is_recorded(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download's link is checked once, in the transaction that records it, so the check and the
    record see one state: the read before it checks the token only (a made-up one takes no writer).
    Its issuer's access and what custody says of the link were each looked up twice a download."""
    s = services
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    calls: list[str] = []
    issuer_still_may, on_custody = downloads.issuer_still_may, downloads.on_custody

    def counted_issuer(*args: Any, **kwargs: Any) -> bool:
        calls.append("issuer")
        return issuer_still_may(*args, **kwargs)

    def counted_custody(*args: Any) -> None:
        calls.append("custody")
        on_custody(*args)

    monkeypatch.setattr(downloads, "issuer_still_may", counted_issuer)
    monkeypatch.setattr(downloads, "on_custody", counted_custody)
    server, thread, url = start_server(s)
    try:
        got = httpx.get(f"{url}/api/v1/exports/download/{token}", timeout=60)
        assert got.status_code == 200, got.text
        assert sorted(calls) == ["custody", "issuer"], calls
        assert _viewed_by_link(s, result.export_id, token.split(".")[0]) == 1
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_package_whose_record_is_altered_is_refused_naming_nothing_internal(
    services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A package whose row no longer says what its custody record does is refused (409); the link's
    holder, who has no account, is told that much and no item id, object key or digest of the
    service's: the log names them."""
    s = services
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    with s.db.session() as session:
        package = session.get(EvidenceItem, result.export_id)
        assert package is not None
        recorded_key, recorded_sha = package.object_key, package.sha256
    server, thread, url = start_server(s)
    try:
        for change in ({"size": 1}, {"sha256": "0" * 64}):
            with s.db.session() as session:
                session.execute(
                    update(EvidenceItem).where(EvidenceItem.id == result.export_id).values(**change)
                )
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                got = httpx.get(f"{url}/api/v1/exports/download/{token}", timeout=60)
            assert got.status_code == 409, (change, got.status_code)
            for internal in (result.export_id, memo.id, recorded_key, recorded_sha, "0" * 64):
                assert internal not in got.text, (change, got.text)
            assert any(getattr(r, "export", None) == result.export_id for r in caplog.records), change
            with s.db.session() as session:  # put back for the next change
                session.execute(
                    update(EvidenceItem)
                    .where(EvidenceItem.id == result.export_id)
                    .values(size=package.size, sha256=recorded_sha)
                )
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_link_whose_packages_link_entry_cannot_be_read_is_refused_not_a_server_error(
    services: Any,
) -> None:
    """A ``link_issued`` or ``link_revoked`` entry of the package whose details a database editor made
    something other than JSON (one that may have revoked the link) ended the link's check in a
    traceback (500) on its page and its download: the link is refused (410), as one whose row custody
    does not bear out, and nothing is recorded."""
    s = services
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    with s.db.session() as session:
        session.execute(
            update(CustodyEntry)
            .where(CustodyEntry.item_id == result.export_id, CustodyEntry.action == "link_issued")
            .values(details="not json {")
        )
    server, thread, url = start_server(s)
    try:
        for path in (f"/api/v1/exports/download/{token}", f"/api/v1/exports/download/{token}/about"):
            got = httpx.get(f"{url}{path}", timeout=60)
            assert got.status_code == 410 and got.json()["reason"] == "link_gone", (path, got.status_code)
        assert _viewed_by_link(s, result.export_id, token.split(".")[0]) == 0
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_an_issuers_deactivation_waits_for_a_download_checked_before_it(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL runs write transactions side by side: a download's record has checked the link's
    issuer (still active) and is held inside its transaction; an administrator deactivates the
    issuer meanwhile. The deactivation waits for the record's commit (the issuer's row is held for
    share) rather than committing between the check and it, so the download is recorded before the
    issuer is deactivated, in that order on the custody record."""
    from accounts.seals import record_user
    from accounts.service import update_user
    from tests.conftest import ADMIN_PASSWORD, recorded_user
    from tests.test_authority_race import waiting_on_users

    s = services
    memo = put_evidence(s, os.urandom(50_000), Provenance(kind="voice_memo", actor="t"))
    result, token = package_with_link(s, [memo.id])
    link_id = token.split(".")[0]
    with s.db.session() as session:
        recorded_user(session, s.ledger, "boss", ADMIN_PASSWORD, "admin")  # inv is not the last admin
        inv = session.scalar(select(User.id).where(User.username == "inv"))
    checked, go = threading.Event(), threading.Event()
    among = downloads.quarantined_among

    def held(*args: Any) -> Any:
        if threading.current_thread().name != "deactivation":
            checked.set()
            assert go.wait(60)
        return among(*args)

    monkeypatch.setattr(downloads, "quarantined_among", held)
    answers: dict[str, int] = {}

    def deactivate() -> None:
        with s.db.session() as session:
            user, done = update_user(session, int(inv), {"active": False}, s.key)
            record_user(session, s.ledger, user, "user:boss", {"user": "inv", "changes": done})
        answers["deactivated"] = 1

    server, thread, url = start_server(s)
    try:
        target = f"{url}/api/v1/exports/download/{token}"
        download = threading.Thread(
            target=lambda: answers.__setitem__("download", httpx.get(target, timeout=60).status_code)
        )
        download.start()
        assert checked.wait(60)
        other = threading.Thread(target=deactivate, name="deactivation")
        other.start()

        wait_for(
            lambda: waiting_on_users(s) or "deactivated" in answers,
            30,
            what="the deactivation to wait or end",
        )
        assert "deactivated" not in answers, (
            "the issuer was deactivated between the download's check and its record"
        )
        go.set()
        download.join(60)
        other.join(60)
        assert answers == {"download": 200, "deactivated": 1}, answers
        with s.db.reading() as session:
            viewed = session.scalar(
                select(func.max(CustodyEntry.seq)).where(CustodyEntry.actor == f"link:{link_id}")
            )
            ended = session.scalar(
                select(func.max(CustodyEntry.seq)).where(CustodyEntry.action == "user_changed")
            )
        assert viewed is not None and ended is not None and viewed < ended, (viewed, ended)
        assert httpx.get(target, timeout=60).status_code == 410  # and the link serves no more
    finally:
        go.set()
        server.should_exit = True
        thread.join(15)
