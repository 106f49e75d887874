"""A player's ranged reads as viewings, through the real server, database and store: many ranges of one
item by one person, for one purpose and reason, from one sign-in, are one ``viewed`` entry and, once
the viewing is over, one ``viewing_closed`` entry whose summary is the ranges served; anything else
(another reason, person, sign-in, item or purpose, or a read after the viewing went idle) opens a
viewing of its own; no byte leaves before the opening entry is in a stored tree head; a range
altered after its seal is named by verification; an export carrying these entries verifies offline."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from chain_of_custody.entries import SignedEntry, withhold
from chain_of_custody.evidence import ByteRange
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, ViewingRange, ViewingSession
from chain_of_custody.package_verify import PackageReport, verify_package
from chain_of_custody.tree_heads import PREFIX
from chain_of_custody.verify import verify_service
from chain_of_custody.viewing import ViewingKey, ViewingPolicy, ranges_digest
from chain_of_custody.viewings import kept_ranges, record_range, seal_over, seal_served
from incidents.export.plan import own_chain
from tests.conftest import wait_for
from tests.test_export_package import download, export
from tests.test_incidents_kit import bearer, store_item, user

REASON = "checking the assault at the front desk"
DATA = bytes(range(256)) * 4096  # 1 MiB


def _entries(s: Any, item_id: str, action: str) -> list[dict[str, Any]]:
    import json

    with s.db.session() as session:
        rows = session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.item_id == item_id, CustodyEntry.action == action)
            .order_by(CustodyEntry.seq)
        ).all()
        return [{"seq": r.seq, "actor": r.actor, "details": json.loads(r.details)} for r in rows]


def _get(
    url: str, item_id: str, headers: dict[str, str], first: int, last: int, reason: str = REASON
) -> httpx.Response:
    return httpx.get(
        f"{url}/api/v1/evidence/{item_id}/content",
        headers={**headers, "Range": f"bytes={first}-{last}"},
        params={"reason": reason},
        timeout=60,
    )


def _sweep_later(s: Any) -> int:
    """The housekeeping sweep, as it runs once the idle time has passed."""
    policy = ViewingPolicy.from_settings(s.settings)
    return seal_over(s.db, s.ledger, policy, datetime.now(UTC) + policy.idle + timedelta(seconds=1))


def test_many_ranges_are_one_viewing_sealed_with_their_summary(live: Any) -> None:
    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    asked = [(0, 65535), (524288, 589823), (65536, 131071), (1048000, 1048575), (300000, 300000)] * 4
    for first, last in asked:
        r = _get(url, clip.id, admin, first, last)
        assert r.status_code == 206 and r.content == DATA[first : last + 1], r.text[:200]

    opened = _entries(s, clip.id, "viewed")
    assert len(opened) == 1 and opened[0]["details"]["reason"] == REASON
    assert opened[0]["details"]["range"] == list(asked[0])
    viewing_id = opened[0]["details"]["viewing"]
    assert _entries(s, clip.id, "viewing_closed") == []
    assert _sweep_later(s) == 1

    sealed = _entries(s, clip.id, "viewing_closed")
    assert len(sealed) == 1
    d = sealed[0]["details"]
    assert d["viewing"] == viewing_id and d["viewer"] == "user:admin" and d["closed"] == "idle"
    assert d["ranges"] == len(asked)
    assert d["bytes"] == sum(last - first + 1 for first, last in asked)
    with s.db.session() as session:
        kept = kept_ranges(session, viewing_id)
        row = session.get(ViewingSession, viewing_id)
        assert row is not None and row.open_key is None and row.closed_seq == sealed[0]["seq"]
    assert [(first, last) for _, first, last, _ in kept] == asked
    assert d["ranges_sha256"] == ranges_digest(kept)
    assert d["first_at"] < d["last_at"]
    assert "reason" not in d  # the reason is on the opening entry only

    # The trail reads as two steps, and the service's verification checks the seal against the rows.
    trail = httpx.get(f"{url}/api/v1/evidence/{clip.id}/custody", headers=admin).json()
    assert [e["action"] for e in trail][-2:] == ["viewed", "viewing_closed"]
    with s.db.session() as session:
        assert verify_service(session, s.store, s.key).ok
        session.execute(
            update(ViewingRange)
            .where(ViewingRange.viewing_id == viewing_id, ViewingRange.n == 3)
            .values(first_byte=0)
        )
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    assert [p.kind for p in report.problems] == ["viewing_ranges_altered"], report.problems


def test_another_reason_person_sign_in_or_item_opens_a_viewing_of_its_own(live: Any) -> None:
    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    copy = store_item(s, kind="redacted_clip", derived_from=clip.id, data=DATA)
    user(s, "inv", "admin")
    inv = bearer(s, "inv")
    admin_again = bearer(s, "admin")  # the same person by another sign-in
    reads: list[tuple[str, dict[str, str], str]] = [
        (clip.id, admin, REASON),
        (clip.id, admin, REASON),  # joins the first
        (clip.id, admin, "a different reason for the same footage"),
        (clip.id, inv, REASON),
        (clip.id, admin_again, REASON),
        (copy.id, admin, REASON),
    ]
    for item_id, headers, reason in reads:
        assert _get(url, item_id, headers, 10, 20, reason).status_code == 206
    opened = _entries(s, clip.id, "viewed")
    assert [(e["actor"], e["details"]["reason"]) for e in opened] == [
        ("user:admin", REASON),
        ("user:admin", "a different reason for the same footage"),
        ("user:inv", REASON),
        ("user:admin", REASON),
    ]
    assert len({e["details"]["viewing"] for e in opened}) == 4
    assert len(_entries(s, copy.id, "viewed")) == 1

    # Another purpose (the control room's, say) is another viewing too, even with all else the same.
    key = ViewingKey(clip.id, "user:admin", "sign-in", "view", REASON)
    policy = ViewingPolicy.from_settings(s.settings)
    first = record_range(s.db, s.ledger, key, clip, ByteRange(0, 9), policy)
    same = record_range(s.db, s.ledger, key, clip, ByteRange(10, 19), policy)
    other = record_range(
        s.db,
        s.ledger,
        ViewingKey(clip.id, "user:admin", "sign-in", "control room", REASON),
        clip,
        ByteRange(0, 9),
        policy,
    )
    assert first.opened and not same.opened and same.viewing_id == first.viewing_id
    assert other.opened and other.viewing_id != first.viewing_id

    # A whole read (a download) is an entry of its own every time, outside any viewing.
    for _ in range(2):
        r = httpx.get(f"{url}/api/v1/evidence/{clip.id}/content", headers=admin, params={"reason": REASON})
        assert r.status_code == 200 and r.content == DATA
    whole = [e for e in _entries(s, clip.id, "viewed") if "viewing" not in e["details"]]
    assert len(whole) == 2 and all(e["details"]["range"] is None for e in whole)


def test_a_read_after_the_viewing_went_idle_seals_it_and_opens_another(live: Any) -> None:
    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    for first in (0, 100, 200):
        assert _get(url, clip.id, admin, first, first + 99).status_code == 206
    (opened,) = _entries(s, clip.id, "viewed")
    gone = datetime.now(UTC) - timedelta(minutes=s.settings.viewing_idle_minutes, seconds=1)
    with s.db.session() as session:  # as if the person stopped watching that long ago
        session.execute(
            update(ViewingSession)
            .where(ViewingSession.id == opened["details"]["viewing"])
            .values(last_at=gone)
        )
    assert _get(url, clip.id, admin, 300, 399).status_code == 206
    viewings = [e["details"]["viewing"] for e in _entries(s, clip.id, "viewed")]
    assert len(viewings) == 2 and viewings[0] == opened["details"]["viewing"]
    (sealed,) = _entries(s, clip.id, "viewing_closed")
    assert sealed["details"]["viewing"] == viewings[0] and sealed["details"]["ranges"] == 3
    assert sealed["details"]["closed"] == "idle" and sealed["seq"] < _entries(s, clip.id, "viewed")[1]["seq"]

    # However busy, a viewing is sealed once it has been open for the longest time.
    with s.db.session() as session:
        long_ago = datetime.now(UTC) - timedelta(minutes=s.settings.viewing_longest_minutes, seconds=1)
        session.execute(
            update(ViewingSession).where(ViewingSession.id == viewings[1]).values(opened_at=long_ago)
        )
    assert _get(url, clip.id, admin, 400, 499).status_code == 206
    closed = _entries(s, clip.id, "viewing_closed")
    assert [e["details"]["closed"] for e in closed] == ["idle", "longest"]

    # What this process served and is still open is sealed when it shuts down.
    assert seal_served(s.db, s.ledger) == 1
    assert [e["details"]["closed"] for e in _entries(s, clip.id, "viewing_closed")] == [
        "idle",
        "longest",
        "shutdown",
    ]


def test_one_person_holds_a_bounded_number_of_viewings(live: Any) -> None:
    s, url, admin = live.services, live.url, live.admin()
    s.settings.max_open_viewings_per_user = 2
    clips = [store_item(s, data=DATA) for _ in range(3)]
    for clip in clips:
        assert _get(url, clip.id, admin, 0, 9).status_code == 206
    with s.db.session() as session:
        still_open = session.scalars(
            select(ViewingSession.item_id).where(
                ViewingSession.actor == "user:admin", ViewingSession.open_key.is_not(None)
            )
        ).all()
    assert sorted(still_open) == sorted(c.id for c in clips[1:])
    (sealed,) = _entries(s, clips[0].id, "viewing_closed")
    assert sealed["details"]["closed"] == "per_person" and sealed["details"]["ranges"] == 1


def test_no_byte_leaves_before_the_opening_entry_is_in_a_stored_tree_head(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    assert (
        _get(url, clip.id, admin, 0, 0, "a first look at the footage").status_code == 206
    )  # whole check done
    release = threading.Event()
    holding = threading.Event()
    original: Callable[..., Any] = s.store.put_bytes

    def slow_tree_heads(name: str, *a: Any, **k: Any) -> Any:
        if name.startswith(PREFIX):
            holding.set()
            assert release.wait(60)
        return original(name, *a, **k)

    monkeypatch.setattr(s.store, "put_bytes", slow_tree_heads)
    with ThreadPoolExecutor(2) as pool:
        opening = pool.submit(_get, url, clip.id, admin, 0, 99)
        wait_for(holding.is_set, 30, what="the opening entry's tree head to be on its way")
        joining = pool.submit(_get, url, clip.id, admin, 100, 199)

        def joined() -> bool:
            with s.db.session() as session:
                return bool(
                    session.scalar(select(ViewingSession.ranges).where(ViewingSession.reason == REASON)) == 2
                )

        wait_for(joined, 30, what="the second range to be recorded in the viewing")
        for pending in (opening, joining):  # recorded, but not served: the tree head is not stored yet
            with pytest.raises(FutureTimeout):
                pending.result(timeout=1.0)
        release.set()
        assert opening.result(timeout=60).content == DATA[:100]
        assert joining.result(timeout=60).content == DATA[100:200]


def test_an_export_with_viewings_verifies_offline(live: Any, tmp_path: Path) -> None:
    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    for first in (0, 4096, 8192):
        assert _get(url, clip.id, admin, first, first + 4095).status_code == 206
    assert _sweep_later(s) == 1
    result = export(s, [clip.id])
    path = download(s, result.export_id, tmp_path / result.filename)
    report = verify_package(path, s.key.fingerprint)
    assert report.ok, report.problems
    import json
    import zipfile

    with zipfile.ZipFile(path) as zf:
        chains = [
            json.loads(zf.read(n)) for n in zf.namelist() if n.startswith("custody/") and n.endswith(".json")
        ]
    actions = [
        e.get("action")
        for chain in chains
        for e in (chain if isinstance(chain, list) else chain.get("entries", []))
    ]
    assert "viewed" in actions and "viewing_closed" in actions

    # The seal's digest can be recomputed from the package alone, with sha256sum.
    (seal,) = _entries(s, clip.id, "viewing_closed")
    with zipfile.ZipFile(path) as zf:
        listed = zf.read(f"custody/viewings/{seal['details']['viewing']}.txt")
        manifest = json.loads(zf.read("manifest.json"))
    assert hashlib.sha256(listed).hexdigest() == seal["details"]["ranges_sha256"]
    assert [line.split()[1:3] for line in listed.decode().splitlines()] == [
        [str(first), str(first + 4095)] for first in (0, 4096, 8192)
    ]
    assert f"custody/viewings/{seal['details']['viewing']}.txt" in {f["path"] for f in manifest["files"]}
    assert not [n for n in report.notes if "viewing" in n], report.notes


# -- what an insider with the database, a colleague with an account, or a trimmed record could do --


def _key(item_id: str, actor: str = "user:inv", reason: str | None = REASON) -> ViewingKey:
    return ViewingKey(item_id, actor, "sign-in of " + actor, "view", reason)


def _policy(s: Any) -> ViewingPolicy:
    return ViewingPolicy.from_settings(s.settings)


def _kinds(s: Any) -> list[str]:
    with s.db.session() as session:
        return [p.kind for p in verify_service(session, s.store, s.key).problems]


def _first_entry_of(s: Any, item_id: str) -> int:
    with s.db.session() as session:
        return int(session.scalar(select(func.min(CustodyEntry.seq)).where(CustodyEntry.item_id == item_id)))


def test_a_viewing_row_made_in_the_database_is_never_joined(services: Any) -> None:
    """A row inserted with the key of someone's next read and an unrelated entry as its opening would
    let that person read with no ``viewed`` entry of their own: the read opens a viewing of its own,
    the row is set aside (never sealed, so no seal vouches for it) and verification names it."""
    s = services
    clip = store_item(s, data=DATA)
    other = record_range(s.db, s.ledger, _key(clip.id, "user:admin"), clip, ByteRange(0, 9), _policy(s))
    key = _key(clip.id)
    forged_openings = {
        "an unrelated entry": _first_entry_of(s, clip.id),
        "another person's opening": other.opened_seq,
        "no entry at all": 10**9,
    }
    for how, seq in forged_openings.items():
        with s.db.session() as session:
            forged = ViewingSession(
                open_key=key.digest(),
                item_id=clip.id,
                actor=key.actor,
                purpose=key.purpose,
                reason=key.reason,
                opened_seq=seq,
                opened_at=datetime.now(UTC),
                last_at=datetime.now(UTC),
            )
            session.add(forged)
            session.flush()
            forged_id = forged.id
        viewed = record_range(s.db, s.ledger, key, clip, ByteRange(100, 199), _policy(s))
        assert viewed.opened and viewed.viewing_id != forged_id, how
        opening = [e for e in _entries(s, clip.id, "viewed") if e["seq"] == viewed.opened_seq]
        assert (
            opening
            and opening[0]["actor"] == key.actor
            and opening[0]["details"]["viewing"] == viewed.viewing_id
        )
        with s.db.session() as session:
            row = session.get(ViewingSession, forged_id)
            assert row is not None and row.open_key is None and row.closed_seq is None, how
            assert kept_ranges(session, forged_id) == [], how
        # Seal the genuine one, so the next forged row takes the key again.
        assert seal_served(s.db, s.ledger) >= 1

    kinds = _kinds(s)  # none of the three is named by a viewed entry (one names another viewing)
    assert sorted(kinds) == ["viewing_closed_unsealed"] * 3 + ["viewing_unopened"] * 3, kinds

    # A sealed viewing whose key is put back (to reopen it under its genuine opening) is not joined
    # either, and the sweep never seals a row that stands for no opening entry.
    sealed_id = other.viewing_id
    with s.db.session() as session:
        row = session.get(ViewingSession, sealed_id)
        assert row is not None and row.closed_seq is not None
        row.open_key = _key(clip.id, "user:admin").digest()
    again = record_range(s.db, s.ledger, _key(clip.id, "user:admin"), clip, ByteRange(0, 9), _policy(s))
    assert again.opened and again.viewing_id != sealed_id
    with s.db.session() as session:
        session.add(
            ViewingSession(
                open_key="f" * 64,
                item_id=clip.id,
                actor="user:nobody",
                purpose="view",
                opened_seq=_first_entry_of(s, clip.id),
                opened_at=datetime.now(UTC) - timedelta(hours=1),
                last_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )
    before = len(_entries(s, clip.id, "viewing_closed"))
    _sweep_later(s)
    sealed = _entries(s, clip.id, "viewing_closed")
    assert all(e["details"]["viewer"] != "user:nobody" for e in sealed), sealed
    assert len(sealed) == before + 1  # the genuine open viewing only


def test_verification_pairs_viewing_entries_and_rows_both_ways(services: Any) -> None:
    s = services
    clip = store_item(s, data=DATA)
    policy = _policy(s)
    views = [
        record_range(s.db, s.ledger, _key(clip.id, f"user:p{i}"), clip, ByteRange(i, i + 9), policy)
        for i in range(5)
    ]
    _sweep_later(s)
    open_one = record_range(s.db, s.ledger, _key(clip.id, "user:p9"), clip, ByteRange(0, 9), policy)
    assert _kinds(s) == []

    with s.db.session() as session:
        # 0: its row removed (with its ranges): the entries that opened and sealed it name nothing.
        session.execute(delete(ViewingRange).where(ViewingRange.viewing_id == views[0].viewing_id))
        session.execute(delete(ViewingSession).where(ViewingSession.id == views[0].viewing_id))
        # 1: its row now says someone else read.
        session.execute(
            update(ViewingSession).where(ViewingSession.id == views[1].viewing_id).values(actor="user:other")
        )
        # 2: its row no longer names its seal.
        session.execute(
            update(ViewingSession).where(ViewingSession.id == views[2].viewing_id).values(closed_seq=None)
        )
        # the open one: closed in the database, with no seal.
        session.execute(
            update(ViewingSession)
            .where(ViewingSession.id == open_one.viewing_id)
            .values(open_key=None, closed_at=datetime.now(UTC))
        )
        # 3: sealed a second time.
        s.ledger.append(
            session,
            "viewing_closed",
            "service",
            item_id=clip.id,
            details={"viewing": views[3].viewing_id, "viewer": "user:p3", "purpose": "view"},
        )
    found: dict[str, set[str]] = {}
    with s.db.session() as session:
        for p in verify_service(session, s.store, s.key).problems:
            found.setdefault(p.kind, set()).add(p.where.split()[1])
    assert found.get("viewing_row_missing") == {views[0].viewing_id}, found
    assert views[1].viewing_id in found.get("viewing_row_altered", set()), found
    assert views[2].viewing_id in found.get("viewing_row_altered", set()), found
    assert found.get("viewing_closed_unsealed") == {open_one.viewing_id}, found
    assert found.get("viewing_sealed_twice") == {views[3].viewing_id}, found
    assert views[4].viewing_id not in {v for vs in found.values() for v in vs}, found


def test_ranges_of_an_open_viewing_edited_in_the_database_are_found_at_the_seal(services: Any) -> None:
    s = services
    clip = store_item(s, data=DATA)
    policy = _policy(s)
    viewings = []
    for actor in ("user:a", "user:b", "user:c"):
        for first in (0, 1000, 2000, 3000):
            viewed = record_range(
                s.db, s.ledger, _key(clip.id, actor), clip, ByteRange(first, first + 99), policy
            )
        viewings.append(viewed.viewing_id)
    edited, cut, kept = viewings
    with s.db.session() as session:
        session.execute(
            update(ViewingRange)
            .where(ViewingRange.viewing_id == edited, ViewingRange.n == 2)
            .values(last_byte=9)
        )
        session.execute(delete(ViewingRange).where(ViewingRange.viewing_id == cut, ViewingRange.n == 3))
        session.execute(
            update(ViewingRange).where(ViewingRange.viewing_id == cut, ViewingRange.n == 4).values(n=3)
        )
        session.execute(update(ViewingSession).where(ViewingSession.id == cut).values(ranges=3))
    with s.db.session() as session:  # found while still open
        problems = verify_service(session, s.store, s.key).problems
    assert sorted((p.kind, p.where) for p in problems) == sorted(
        [("viewing_ranges_altered", f"viewing {edited}"), ("viewing_ranges_altered", f"viewing {cut}")]
    ), problems
    assert _sweep_later(s) == 3
    seals = {e["details"]["viewing"]: e["details"] for e in _entries(s, clip.id, "viewing_closed")}
    assert "range 2" in seals[edited]["ranges_altered"] and "range 3" in seals[cut]["ranges_altered"]
    assert "ranges_altered" not in seals[kept] and seals[cut]["ranges"] == 3
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    assert sorted((p.kind, p.where.split()[1]) for p in report.problems) == sorted(
        [("viewing_ranges_altered_before_seal", edited), ("viewing_ranges_altered_before_seal", cut)]
    ), report.problems
    assert s.settings.viewing_longest_minutes == 10  # how long a list stays off the signed record


def test_a_read_of_every_byte_is_its_own_entry_and_the_answer_names_its_record(live: Any) -> None:
    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    first = _get(url, clip.id, admin, 0, 99)
    second = _get(url, clip.id, admin, 100, 199)
    whole = _get(url, clip.id, admin, 0, len(DATA) - 1)
    assert whole.status_code == 206 and whole.content == DATA
    opened = _entries(s, clip.id, "viewed")
    in_viewing = [e for e in opened if "viewing" in e["details"]]
    alone = [e for e in opened if "viewing" not in e["details"]]
    assert len(in_viewing) == 1 and len(alone) == 1
    assert alone[0]["details"]["range"] == [0, len(DATA) - 1]
    viewing_id = in_viewing[0]["details"]["viewing"]
    assert first.headers["X-Custody-Viewing"] == second.headers["X-Custody-Viewing"] == viewing_id
    assert first.headers["X-Custody-Viewing-State"] == "opened"
    assert second.headers["X-Custody-Viewing-State"] == "joined"
    assert first.headers["X-Custody-Entry"] == second.headers["X-Custody-Entry"] == str(in_viewing[0]["seq"])
    assert (
        whole.headers["X-Custody-Entry"] == str(alone[0]["seq"]) and "X-Custody-Viewing" not in whole.headers
    )
    download_ = httpx.get(
        f"{url}/api/v1/evidence/{clip.id}/content", headers=admin, params={"reason": REASON}
    )
    assert download_.headers["X-Custody-Entry"] == str(_entries(s, clip.id, "viewed")[-1]["seq"])
    with s.db.session() as session:
        assert session.get(ViewingSession, viewing_id).ranges == 2  # type: ignore[union-attr]


def test_a_package_carries_a_viewing_whole_or_withholds_it_whole(services: Any) -> None:
    """A reason that names another incident withholds the opening; its seal goes with it, and a
    package that carries a seal without its opening is named offline."""
    s = services
    clip = store_item(s, data=DATA)
    policy = _policy(s)
    why = "as in INC-OTHER-7"
    hidden = record_range(
        s.db, s.ledger, _key(clip.id, reason=why), clip, ByteRange(0, 9), policy, details={"reason": why}
    )
    shown = record_range(s.db, s.ledger, _key(clip.id, "user:b"), clip, ByteRange(0, 9), policy)
    _sweep_later(s)
    with s.db.session() as session:
        chain = [e.to_json() for e in Ledger.item_entries(session, clip.id)]
    carried = own_chain(clip.id, chain, "export-1", {"INC-OTHER-7"})

    def state(viewing_id: str) -> list[tuple[str | None, bool]]:
        return [
            (e["action"], "withheld" in c)
            for e, c in zip(chain, carried, strict=True)
            if (e.get("details") or {}).get("viewing") == viewing_id
        ]

    assert state(hidden.viewing_id) == [("viewed", True), ("viewing_closed", True)]
    assert state(shown.viewing_id) == [("viewed", False), ("viewing_closed", False)]
    # The API's trail for someone who may not see that incident shows the viewing the same way.
    from incidents.access import _withhold_marked

    carried = _withhold_marked(chain, {"INC-OTHER-7"})
    assert state(hidden.viewing_id) == [("viewed", True), ("viewing_closed", True)]
    assert state(shown.viewing_id) == [("viewed", False), ("viewing_closed", False)]

    from chain_of_custody.package_verify import _check_viewings

    report = PackageReport()
    _check_viewings("custody/x.json", [SignedEntry.from_json(e) for e in carried], {}, report)
    assert report.problems == []
    half = [withhold(e, "trimmed") if e["action"] == "viewed" else e for e in chain]
    report = PackageReport()
    _check_viewings("custody/x.json", [SignedEntry.from_json(e) for e in half], {}, report)
    assert sorted(p.kind for p in report.problems) == ["viewing_seal_unpaired"] * 2, report.problems


def test_one_housekeeping_job_failing_stops_none_of_the_others(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint failing (storage away, say) still lets the pass seal idle viewings and expire
    uploads; the pass keeps a gauge of the viewings open."""
    from ingest import app as application
    from ingest.metrics import VIEWINGS_OPEN

    s = services
    clip = store_item(s, data=DATA)
    idle = record_range(s.db, s.ledger, _key(clip.id), clip, ByteRange(0, 9), _policy(s))
    record_range(s.db, s.ledger, _key(clip.id, "user:b"), clip, ByteRange(0, 9), _policy(s))
    with s.db.session() as session:
        gone = datetime.now(UTC) - timedelta(minutes=s.settings.viewing_idle_minutes, seconds=1)
        session.execute(
            update(ViewingSession).where(ViewingSession.id == idle.viewing_id).values(last_at=gone)
        )
    expired: list[bool] = []

    def broken_checkpoint(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("checkpoint storage refused")

    monkeypatch.setattr(application, "write_checkpoint", broken_checkpoint)
    monkeypatch.setattr(s.uploads, "expire", lambda: expired.append(True))
    assert application.housekeeping_pass(s) == ["checkpoint"]
    assert expired == [True]
    (sealed,) = _entries(s, clip.id, "viewing_closed")
    assert sealed["details"]["viewing"] == idle.viewing_id
    assert VIEWINGS_OPEN._value.get() == 1


def test_a_viewing_whose_row_times_are_pushed_ahead_is_still_sealed_by_the_sweep(services: Any) -> None:
    """The sweep tells how long a viewing has been open by its opening entry too, not by its row alone."""
    s = services
    clip = store_item(s, data=DATA)
    viewed = record_range(s.db, s.ledger, _key(clip.id), clip, ByteRange(0, 9), _policy(s))
    ahead = datetime.now(UTC) + timedelta(days=365)
    with s.db.session() as session:
        session.execute(
            update(ViewingSession)
            .where(ViewingSession.id == viewed.viewing_id)
            .values(opened_at=ahead, last_at=ahead)
        )
    policy = _policy(s)
    assert seal_over(s.db, s.ledger, policy, datetime.now(UTC) + policy.longest + timedelta(seconds=1)) == 1
    (sealed,) = _entries(s, clip.id, "viewing_closed")
    assert sealed["details"]["viewing"] == viewed.viewing_id and sealed["details"]["closed"] == "longest"


def test_an_item_put_back_from_quarantine_in_the_database_is_not_served(live: Any) -> None:
    """Nothing releases a quarantine: a row set back to ``stored`` by hand serves nothing, is
    quarantined again, and verification names the row."""
    from chain_of_custody.evidence import quarantine
    from chain_of_custody.models import EvidenceItem

    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    with s.db.session() as session:
        quarantine(session, s.ledger, clip.id, "the camera's signature did not check", {})
    with s.db.session() as session:
        session.execute(
            update(EvidenceItem)
            .where(EvidenceItem.id == clip.id)
            .values(status="stored", quarantine_reason=None)
        )
    with s.db.session() as session:
        problems = verify_service(session, s.store, s.key).problems
    assert [(p.kind, p.where) for p in problems] == [("item_row_altered", f"evidence item {clip.id}")], (
        problems
    )
    # The first read finds the row disagreeing and quarantines the item again; the next is refused as such.
    for headers, why in (({"Range": "bytes=0-99"}, "record_altered"), ({}, "quarantined")):
        r = httpx.get(
            f"{url}/api/v1/evidence/{clip.id}/content",
            headers={**admin, **headers},
            params={"reason": REASON},
            timeout=60,
        )
        assert r.status_code == 409 and r.json()["reason"] == why, r.text
    with s.db.session() as session:
        row = session.get(EvidenceItem, clip.id)
        assert row is not None and row.status == "quarantined"
    assert [e for e in _entries(s, clip.id, "viewed")] == []


@pytest.mark.parametrize("field", ["kind", "derived_from_id"])
def test_an_original_made_to_look_like_a_copy_in_the_database_is_not_served(live: Any, field: str) -> None:
    """What an item is (an original, or a copy derived from one) decides whether a read needs a
    reason and an export needs authority for originals: the row must say what its ``stored`` entry
    says, or nothing is served by it."""
    from chain_of_custody.models import EvidenceItem

    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    edit = {"kind": "redacted_clip"} if field == "kind" else {"derived_from_id": store_item(s).id}
    assert _get(url, clip.id, admin, 0, 99, reason="").status_code == 422  # an original needs a reason
    with s.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == clip.id).values(**edit))
    with s.db.session() as session:
        problems = verify_service(session, s.store, s.key).problems
    where = f"evidence item {clip.id}"
    # the original an item derives from also decides a manager's reach, so its reach seal breaks too
    sealed = [("item_seal_broken", where)] if field == "derived_from_id" else []
    assert [(p.kind, p.where) for p in problems] == [*sealed, ("item_row_altered", where)], problems
    r = httpx.get(
        f"{url}/api/v1/evidence/{clip.id}/content", headers={**admin, "Range": "bytes=0-99"}, timeout=60
    )
    assert r.status_code == 409 and r.json()["reason"] == "record_altered", r.text
    assert _entries(s, clip.id, "viewed") == []


def test_a_viewing_opened_before_its_ranges_were_chained_is_sealed_not_joined(services: Any) -> None:
    """A viewing left open across the upgrade that chained ranges (its opening names no key, its
    ranges carry no link) takes no more ranges: the next read seals it, as it was, and opens another;
    verification finds nothing wrong with it."""
    s = services
    clip = store_item(s, data=DATA)
    key = _key(clip.id)
    now = datetime.now(UTC)
    with s.db.session() as session:
        row = ViewingSession(
            open_key=key.digest(),
            item_id=clip.id,
            actor=key.actor,
            purpose=key.purpose,
            reason=key.reason,
            opened_seq=0,
            opened_at=now,
            last_at=now,
            ranges=1,
            bytes=10,
        )
        session.add(row)
        session.flush()
        entry = s.ledger.append(
            session,
            "viewed",
            key.actor,
            item_id=clip.id,
            details={"purpose": "view", "range": [0, 9], "sha256": clip.sha256, "viewing": row.id},
        )
        row.opened_seq = entry.seq
        session.add(ViewingRange(viewing_id=row.id, n=1, first_byte=0, last_byte=9, at=now))
        legacy = row.id
    assert _kinds(s) == []
    viewed = record_range(s.db, s.ledger, key, clip, ByteRange(10, 19), _policy(s))
    assert viewed.opened and viewed.viewing_id != legacy
    (sealed,) = _entries(s, clip.id, "viewing_closed")
    assert sealed["details"]["viewing"] == legacy and sealed["details"]["closed"] == "unchained"
    assert sealed["details"]["ranges"] == 1 and "ranges_altered" not in sealed["details"]
    assert _kinds(s) == []


def test_a_viewings_opening_and_its_items_record_are_checked_once_per_process(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranges of one viewing read by one process read and check the opening entry (its
    signature, that it names this viewing) and the item's signed ``stored`` entry once, not once per
    range; a row edited since is checked afresh and refused, and a quarantine is asked about on
    every range."""
    import chain_of_custody.evidence as evidence
    import chain_of_custody.viewings as viewings
    from chain_of_custody.evidence import quarantine
    from chain_of_custody.models import EvidenceItem

    s, url, admin = live.services, live.url, live.admin()
    clip = store_item(s, data=DATA)
    assert _get(url, clip.id, admin, 0, 0).status_code == 206  # checked whole, viewing opened
    opening_checks: list[int] = []
    record_checks: list[str] = []
    check_entry, unrecorded = viewings.check_entry, evidence.unrecorded
    monkeypatch.setattr(viewings, "check_entry", lambda *a: opening_checks.append(1) or check_entry(*a))
    monkeypatch.setattr(
        evidence, "unrecorded", lambda it, *a: record_checks.append(it.id) or unrecorded(it, *a)
    )
    for n in range(1, 6):
        r = _get(url, clip.id, admin, n * 1000, n * 1000 + 99)
        assert r.status_code == 206 and r.content == DATA[n * 1000 : n * 1000 + 100]
        assert r.headers["X-Custody-Viewing-State"] == "joined"
    assert len(opening_checks) <= 1 and len(record_checks) <= 1, (opening_checks, record_checks)
    with s.db.session() as session:
        viewing = session.get(ViewingSession, r.headers["X-Custody-Viewing"])
        assert viewing is not None and viewing.ranges == 6  # every range still on the record
    # A row edited in the database is checked against its entry again, and refused.
    with s.db.session() as session:
        session.execute(update(EvidenceItem).where(EvidenceItem.id == clip.id).values(kind="redacted_clip"))
    r = _get(url, clip.id, admin, 9000, 9099)
    assert r.status_code == 409 and r.json()["reason"] == "record_altered", r.text
    # A quarantine on custody refuses the next range, however lately the row was checked.
    other = store_item(s, data=DATA)
    assert _get(url, other.id, admin, 0, 0).status_code == 206
    assert _get(url, other.id, admin, 10, 19).status_code == 206
    with s.db.session() as session:
        quarantine(session, s.ledger, other.id, "found altered elsewhere", {})
        session.execute(
            update(EvidenceItem)
            .where(EvidenceItem.id == other.id)
            .values(status="stored", quarantine_reason=None)
        )
    r = _get(url, other.id, admin, 20, 29)
    assert r.status_code == 409, r.text
