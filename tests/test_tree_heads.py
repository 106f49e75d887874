"""The custody ledger as a Merkle log: every commit that appends is covered by a signed tree head in
write-once storage before it returns, concurrent commits share them, and a tail cut from the
database (with the head row reset to match) is named by verification, on both databases."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select

from chain_of_custody.checkpoints import write_checkpoint
from chain_of_custody.merkle import MerkleTree, leaf_hash
from chain_of_custody.models import CustodyEntry, LedgerHead
from chain_of_custody.tree_heads import PREFIX, read_tree_heads
from chain_of_custody.verify import verify_service
from storage.objects import ObjectLocked, StorageError


def _append(services: Any, action: str = "viewed", item_id: str | None = None) -> int:
    with services.db.session() as session:
        seq = services.ledger.append(session, action, "user:test", item_id=item_id, details={"n": 1}).seq
    return int(seq)


def _newest(services: Any) -> int:
    heads, bad = read_tree_heads(services.store, services.key)
    assert not bad
    return heads[-1].tree_size if heads else 0


def test_a_commit_returns_only_once_a_tree_head_covers_it(services: Any) -> None:
    for _ in range(3):
        seq = _append(services)
        assert _newest(services) >= seq  # already in storage when the commit returned
    # The newest tree head is the root of the ledger as it stands.
    heads, _ = read_tree_heads(services.store, services.key)
    with services.db.session() as session:
        rows = session.scalars(select(CustodyEntry).order_by(CustodyEntry.seq)).all()
        from chain_of_custody.ledger import to_signed

        tree = MerkleTree([leaf_hash(to_signed(r).body.canonical()) for r in rows])
    assert heads[-1].root_hash == tree.root().hex() and heads[-1].tree_size == tree.size


def test_a_commit_whose_tree_head_cannot_be_stored_is_not_acknowledged(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _append(services)

    def refuse(*_a: Any, **_k: Any) -> None:
        raise StorageError("storage unavailable")

    monkeypatch.setattr(services.store, "put_bytes", refuse)
    with pytest.raises(StorageError):
        _append(services)
    monkeypatch.undo()
    # The next commit's tree head covers the entry that was not acknowledged as well.
    seq = _append(services)
    assert _newest(services) == seq


def test_concurrent_commits_share_tree_heads(services: Any) -> None:
    log = services.ledger.tree_heads
    before = log.written
    errors: list[BaseException] = []
    seqs: list[int] = []

    def work() -> None:
        try:
            for _ in range(10):
                seqs.append(_append(services))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(seqs) == 60 and _newest(services) >= max(seqs)
    assert log.written - before <= 60
    with services.db.session() as session:
        assert verify_service(session, services.store, services.key).ok


def _cut_after_checkpoint(services: Any) -> int:
    """The reproduced attack: service stopped, the entries after the last checkpoint deleted and
    ``ledger_head`` reset to the checkpoint's entry."""
    with services.db.session() as session:
        head = session.get(LedgerHead, 1)
        cp = head.checkpoint_seq
        last = session.scalar(select(CustodyEntry).where(CustodyEntry.seq == cp))
        session.execute(delete(CustodyEntry).where(CustodyEntry.seq > cp))
        head = session.get(LedgerHead, 1)
        head.last_seq, head.last_hash = cp, last.entry_hash
    return int(cp)


def test_entries_cut_after_the_last_checkpoint_are_named(services: Any) -> None:
    item = _append(services, "user_changed")
    with services.db.session() as session:
        assert write_checkpoint(session, services.store, services.key, retain_days=1) is not None
    # After the checkpoint: an export of original footage and its download.
    _append(services, "exported")
    last = _append(services, "viewed")
    cp = _cut_after_checkpoint(services)
    assert cp >= item and cp < last
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    assert [p.kind for p in report.problems] == ["ledger_truncated"], [str(p) for p in report.problems]
    assert f"entries #{cp + 1}..#{last} were removed" in report.problems[0].detail


def test_a_rewritten_history_is_named_even_when_re_signed(services: Any) -> None:
    """An insider with the key rewrites an old entry and re-signs the whole chain: the hash chain
    holds, but the signed tree heads in storage do not match the ledger any more."""
    from chain_of_custody.entries import EntryBody
    from chain_of_custody.ledger import to_signed

    for _ in range(4):
        _append(services)
    with services.db.session() as session:
        rows = session.scalars(select(CustodyEntry).order_by(CustodyEntry.seq)).all()
        prev = rows[0].prev_hash
        for i, row in enumerate(rows):
            body = to_signed(row).body
            details = '{"n":2}' if i == 1 else body.details
            new = EntryBody(**{**body.__dict__, "details": details, "prev_hash": prev})
            row.details, row.prev_hash = new.details, prev
            row.entry_hash, row.signature = new.digest(), services.key.sign(new.canonical())
            prev = row.entry_hash
        head = session.get(LedgerHead, 1)
        head.last_hash = prev
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    assert [p.kind for p in report.problems] == ["tree_head_mismatch"], [str(p) for p in report.problems]


def _root_from_scratch(services: Any) -> tuple[int, str]:
    """The ledger's size and Merkle root computed from every row in the database."""
    from chain_of_custody.ledger import to_signed

    with services.db.session() as session:
        rows = session.scalars(select(CustodyEntry).order_by(CustodyEntry.seq)).all()
        tree = MerkleTree([leaf_hash(to_signed(r).body.canonical()) for r in rows])
    return tree.size, tree.root().hex()


def test_commits_grow_the_tree_without_reading_the_ledger_back(services: Any) -> None:
    """After the tree is read once at start, a commit's own leaves build it: no database read per head."""
    log = services.ledger.tree_heads
    _append(services)
    reads = log.ledger_reads
    for _ in range(5):
        seq = _append(services)
        assert log.published >= seq
    assert log.ledger_reads == reads
    heads, _ = read_tree_heads(services.store, services.key)
    assert (heads[-1].tree_size, heads[-1].root_hash) == _root_from_scratch(services)


def test_the_tree_kept_in_memory_is_the_ledger_after_random_appends_and_a_restart(
    services: Any, settings: Any
) -> None:
    """Random appends from several threads, some rolled back whole, some in a savepoint that is rolled
    back while the entries before it stand: every stored head is the root of the ledger's prefix,
    successive heads are consistent, and a new process (a restart) reads the same tree back."""
    from chain_of_custody.merkle import verify_consistency
    from ingest.services import build_services

    rng = random.Random(13)
    plans = [[rng.choice(["one", "two", "rollback", "savepoint"]) for _ in range(12)] for _ in range(4)]
    errors: list[BaseException] = []

    class Undo(Exception):
        pass

    def work(plan: list[str]) -> None:
        try:
            for step in plan:
                if step == "rollback":
                    with pytest.raises(Undo), services.db.session() as session:
                        services.ledger.append(session, "viewed", "user:test", details={"n": 0})
                        raise Undo
                    continue
                with services.db.session() as session:
                    services.ledger.append(session, "viewed", "user:test", details={"n": 1})
                    if step == "two":
                        services.ledger.append(session, "linked", "user:test", details={"n": 2})
                    if step == "savepoint":
                        with pytest.raises(Undo), session.begin_nested():
                            services.ledger.append(session, "viewed", "user:test", details={"n": 3})
                            raise Undo
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    size, root = _root_from_scratch(services)
    log = services.ledger.tree_heads
    assert log.published == size and log.tree.size == size
    assert log.tree.root().hex() == root
    heads, bad = read_tree_heads(services.store, services.key)
    assert not bad and heads[-1].tree_size == size and heads[-1].root_hash == root
    for a, b in zip(heads, heads[1:], strict=False):
        proof = log.tree.consistency_proof(a.tree_size, b.tree_size)
        assert verify_consistency(
            a.tree_size, b.tree_size, proof, bytes.fromhex(a.root_hash), bytes.fromhex(b.root_hash)
        )

    restarted = build_services(settings, migrate=False)
    try:
        seq = _append(restarted)
        assert restarted.ledger.tree_heads.ledger_reads == 1  # read once at start
        more = _append(restarted)
        assert restarted.ledger.tree_heads.ledger_reads == 1
        assert more == seq + 1 == size + 2
        assert restarted.ledger.tree_heads.tree.root(size).hex() == root
        assert (
            restarted.ledger.tree_heads.latest.tree_size,
            restarted.ledger.tree_heads.latest.root_hash,
        ) == (_root_from_scratch(restarted))
        with restarted.db.session() as session:
            assert verify_service(session, restarted.store, restarted.key).ok
    finally:
        restarted.db.dispose()


def test_entries_of_another_process_are_read_from_the_ledger(services: Any, settings: Any) -> None:
    """Two processes on one ledger: each covers the other's entries, read from the database."""
    from ingest.services import build_services

    other = build_services(settings, migrate=False)
    try:
        for _ in range(3):
            _append(services)
            _append(other)
        from chain_of_custody.ledger import to_signed

        with services.db.session() as session:
            rows = session.scalars(select(CustodyEntry).order_by(CustodyEntry.seq)).all()
            tree = MerkleTree([leaf_hash(to_signed(r).body.canonical()) for r in rows])
        for s in (services, other):  # each covers its own last entry and everything before it
            latest = s.ledger.tree_heads.latest
            assert latest.root_hash == tree.root(latest.tree_size).hex()
        assert other.ledger.tree_heads.latest.tree_size == tree.size == 6
        assert services.ledger.tree_heads.ledger_reads == 3  # at start, then once for each of other's
        heads, bad = read_tree_heads(services.store, services.key)
        assert not bad and [h.tree_size for h in heads] == [1, 2, 3, 4, 5, 6]
    finally:
        other.db.dispose()


def test_a_handed_over_leaf_that_is_not_the_ledgers_is_refused(services: Any) -> None:
    """What a commit says it wrote is checked against the row once the tree has read it: a tree head
    is never signed over a leaf the ledger does not hold."""
    log = services.ledger.tree_heads
    seq = _append(services)
    with pytest.raises(RuntimeError, match=f"#{seq}"):
        log.committed({seq: b"\x00" * 32})


def test_commits_that_arrive_while_a_head_is_stored_share_the_next_one(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: three commits made while one head is being stored wait for it, and then one head
    covers all three instead of each storing its own."""
    log = services.ledger.tree_heads
    _append(services)
    before = log.written
    put = services.store.put_bytes
    storing, release = threading.Event(), threading.Event()

    def slow_first_put(*a: Any, **k: Any) -> Any:
        if not storing.is_set():
            storing.set()
            assert release.wait(60)
        return put(*a, **k)

    monkeypatch.setattr(services.store, "put_bytes", slow_first_put)
    seqs: list[int] = []
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            seqs.append(_append(services))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=commit)
    first.start()
    assert storing.wait(60)
    others = [threading.Thread(target=commit) for _ in range(3)]
    for t in others:
        t.start()
    deadline = threading.Event()
    for _ in range(6000):  # until all three have committed and handed their leaves over
        if len(log._handed) == 3:  # noqa: SLF001
            break
        deadline.wait(0.01)
    assert len(log._handed) == 3  # noqa: SLF001
    release.set()
    for t in [first, *others]:
        t.join(60)
    assert not errors, errors
    assert log.written - before == 2
    assert _newest(services) == max(seqs) == log.published


def test_a_stored_tree_head_is_locked_for_its_whole_retention(services: Any) -> None:
    """A tree head (a small object sent as one plain PUT) is stored under COMPLIANCE retention to the
    date asked for: it cannot be deleted, and a put of the same name leaves its version as it was."""
    log = services.ledger.tree_heads
    _append(services)
    name = max(services.store.list_keys(PREFIX))
    original = services.store.get_bytes(name)
    info = services.store.info(name)
    assert info.retention_mode == "COMPLIANCE" and info.retain_until is not None
    expected = datetime.now(UTC) + timedelta(days=log.retain_days)
    assert abs((info.retain_until - expected).total_seconds()) < 120
    with pytest.raises(ObjectLocked):
        services.store.delete_version(name, info.version_id)
    services.store.put_bytes(
        name, b"{}", retain_until=datetime.now(UTC) + timedelta(days=1), content_type="application/json"
    )
    assert services.store.get_bytes(name, info.version_id) == original
    with pytest.raises(ObjectLocked):
        services.store.delete_version(name, info.version_id)
    stored = services.store.put_bytes(
        "small.json", b'{"a": 1}', retain_until=expected, content_type="application/json"
    )
    assert stored.size == 8 and stored.sha256 == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert stored.version_id == services.store.info("small.json").version_id


def test_a_head_waits_for_an_append_under_way_and_covers_it_too(services: Any) -> None:
    """Group commit behind the ledger's head row: a commit about to store a tree head while another
    transaction of the process is appending (here waiting for the head row the first holds) waits for
    that one's commit, and one head covers both."""
    log = services.ledger.tree_heads
    log.gather_seconds = 30.0  # not the bound under test: the wait ends when the other commits
    _append(services)
    before = log.written
    seqs: list[int] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            seqs.append(_append(services))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    other = threading.Thread(target=second)
    with services.db.session() as session:
        first = int(services.ledger.append(session, "viewed", "user:test", details={"n": 1}).seq)
        other.start()
        waited = threading.Event()
        for _ in range(6000):  # until the second transaction is appending, behind this one
            if log.appending == 2:
                break
            waited.wait(0.01)
        assert log.appending == 2
    other.join(60)
    assert not errors, errors
    assert seqs == [first + 1]
    assert log.written - before == 1
    assert _newest(services) == first + 1 == log.published
    assert log.appending == 0


def test_the_wait_for_appends_under_way_is_bounded(services: Any) -> None:
    """A transaction that is appending and does not commit holds a tree head back by at most the
    bound; a commit alone does not wait at all."""
    log = services.ledger.tree_heads
    _append(services)
    log.gather_seconds = 0.3
    with services.db.session() as stalled:
        log.opening(stalled)  # as a transaction waiting for the head row would be
        t0 = time.monotonic()
        seq = _append(services)
        held = time.monotonic() - t0
        assert _newest(services) >= seq
    assert 0.3 <= held < 10
    assert log.appending == 0
    log.gather_seconds = 30.0
    t0 = time.monotonic()
    seq = _append(services)
    assert time.monotonic() - t0 < 10 and _newest(services) >= seq


def test_an_append_rolled_back_or_abandoned_stops_counting(services: Any) -> None:
    log = services.ledger.tree_heads
    with pytest.raises(RuntimeError), services.db.session() as session:
        services.ledger.append(session, "viewed", "user:test")
        raise RuntimeError("given up")
    assert log.appending == 0
    session = services.db.sessions()
    services.ledger.append(session, "viewed", "user:test")
    assert log.appending == 1
    session.close()  # neither committed nor rolled back by hand
    assert log.appending == 0
    seq = _append(services)
    assert _newest(services) == seq


def _start_again_and_append(settings: Any) -> tuple[Any, BaseException | None]:
    """A process started on the ledger as it now is, asked to record one entry."""
    from ingest.services import build_services

    other = build_services(settings, migrate=False)
    try:
        _append(other)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return other, exc
    return other, None


def test_a_process_started_on_a_cut_ledger_signs_nothing_over_it(services: Any, settings: Any) -> None:
    """The tail cut while the service was stopped: the next process finds a stored tree head of more
    entries than the ledger holds, refuses to sign a head over the rest, and acknowledges nothing."""
    from chain_of_custody.tree_heads import LedgerContradicted

    for _ in range(4):
        last = _append(services)
    with services.db.session() as session:
        session.execute(delete(CustodyEntry).where(CustodyEntry.seq > last - 2))
        kept = session.scalar(select(CustodyEntry).where(CustodyEntry.seq == last - 2))
        head = session.get(LedgerHead, 1)
        head.last_seq, head.last_hash = last - 2, kept.entry_hash
    before = _newest(services)
    other, refused = _start_again_and_append(settings)
    try:
        assert isinstance(refused, LedgerContradicted), refused
        # (the ledger it read holds the entry it was asked to record too, committed, not acknowledged)
        assert f"covers {last} custody entries; the ledger holds {last - 1}" in str(refused)
        assert _newest(services) == before  # nothing signed over the cut ledger
        with pytest.raises(LedgerContradicted):  # and it stays refused, without reading it all again
            _append(other)
        assert other.ledger.tree_heads.ledger_reads == 1
    finally:
        other.db.dispose()


def test_a_process_started_on_a_rewritten_ledger_signs_nothing_over_it(services: Any, settings: Any) -> None:
    """An entry rewritten (and re-signed, by an insider with the key) while the service was stopped,
    the ledger's length kept: the newest stored tree head of that length has another root."""
    from chain_of_custody.entries import EntryBody
    from chain_of_custody.ledger import to_signed
    from chain_of_custody.tree_heads import LedgerContradicted

    for _ in range(3):
        last = _append(services)
    with services.db.session() as session:
        row = session.scalar(select(CustodyEntry).where(CustodyEntry.seq == last))
        body = to_signed(row).body
        new = EntryBody(**{**body.__dict__, "details": '{"n":2}'})
        row.details, row.entry_hash, row.signature = (
            new.details,
            new.digest(),
            services.key.sign(new.canonical()),
        )
        session.get(LedgerHead, 1).last_hash = row.entry_hash
    other, refused = _start_again_and_append(settings)
    try:
        assert isinstance(refused, LedgerContradicted), refused
        assert f"first {last} custody entries are not those" in str(refused)
    finally:
        other.db.dispose()


def test_a_process_started_after_a_crash_before_its_head_checks_the_newest_head_below(
    services: Any, settings: Any
) -> None:
    """Entries committed without a tree head (a crash between the two) are no contradiction: the
    next process checks the newest head below them and covers the rest."""
    for _ in range(3):
        covered = _append(services)
    with services.db.session() as session:  # committed, and never covered: as after a crash
        services.ledger.append(session, "viewed", "user:test", details={"n": 3})
        session.info.clear()
    assert _newest(services) == covered
    other, refused = _start_again_and_append(settings)
    try:
        assert refused is None
        assert _newest(services) == covered + 2
    finally:
        other.db.dispose()


def _cut_and_hide(services: Any, keep: int) -> list[str]:
    """The attack with the store's credentials too: the entries after ``keep`` deleted and the head
    row reset (service stopped), and every tree head and checkpoint that would show the cut deleted
    by name. A locked version cannot be removed; the delete leaves a marker that hides its name from
    a plain listing and a plain read. Returns the names hidden."""
    from chain_of_custody import checkpoints

    with services.db.session() as session:
        session.execute(delete(CustodyEntry).where(CustodyEntry.seq > keep))
        kept = session.scalar(select(CustodyEntry).where(CustodyEntry.seq == keep))
        head = session.get(LedgerHead, 1)
        head.last_seq, head.last_hash = keep, kept.entry_hash
        head.checkpoint_seq = 0
    store = services.store
    hidden = [n for n in store.list_keys(PREFIX) if int(n.removeprefix(PREFIX)[:15]) > keep]
    hidden += store.list_keys(checkpoints.PREFIX)
    for name in hidden:
        store.client.remove_object(store.bucket, name)  # no version: a delete marker
    assert not set(hidden) & set(store.list_keys(PREFIX) + store.list_keys(checkpoints.PREFIX))
    return hidden


def test_tree_heads_and_checkpoints_hidden_by_a_delete_marker_are_still_read(services: Any) -> None:
    for _ in range(3):
        keep = _append(services)
    with services.db.session() as session:
        assert write_checkpoint(session, services.store, services.key, retain_days=1) is not None
    for _ in range(3):
        last = _append(services)
    hidden = _cut_and_hide(services, keep)
    assert len(hidden) >= 4  # three heads over the cut entries (at least) and the checkpoint
    with services.db.session() as session:
        report = verify_service(session, services.store, services.key)
    kinds = sorted(p.kind for p in report.problems)
    assert kinds.count("ledger_truncated") == 1, [str(p) for p in report.problems]
    truncated = next(p for p in report.problems if p.kind == "ledger_truncated")
    assert f"entries #{keep + 1}..#{last} were removed" in truncated.detail
    named = {p.where for p in report.problems if p.kind in ("hidden_tree_head", "hidden_checkpoint")}
    assert named == set(hidden), [str(p) for p in report.problems]
    assert set(kinds) == {"ledger_truncated", "hidden_tree_head", "hidden_checkpoint"}


def test_a_process_started_on_a_cut_ledger_whose_heads_are_hidden_signs_nothing(
    services: Any, settings: Any
) -> None:
    from chain_of_custody.tree_heads import LedgerContradicted

    for _ in range(4):
        last = _append(services)
    _cut_and_hide(services, last - 2)
    other, refused = _start_again_and_append(settings)
    try:
        assert isinstance(refused, LedgerContradicted), refused
        assert f"covers {last} custody entries; the ledger holds {last - 1}" in str(refused)
    finally:
        other.db.dispose()
