"""One item's visibility (``visible_evidence``, asked on every range a player reads) agrees with the
scope clause every list and write uses (``evidence_scope``), along chains of derived items longer
than the depth the rule follows, for each level a chain may be linked or filmed at."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from accounts.seals import SignInSeals, manager_reach
from chain_of_custody.reach_seals import SiteReach, reach_secret
from incidents.access import DERIVATION_DEPTH, visible_evidence, visible_evidence_ids
from incidents.grants import sealed_assignment_ids
from incidents.service import IncidentDraft, assign_investigator, create_incident, link_evidence
from tests.test_incidents_kit import staff, store_item, user

LENGTH = DERIVATION_DEPTH + 3  # an original and more derived items than the rule follows


@dataclass(frozen=True)
class _Viewer:
    user_id: int
    role: str
    site: str | None
    assignments: frozenset[int] = frozenset()  # as the sign-in resolves them (``accounts.seals``)
    reach: SiteReach = SiteReach()  # as the sign-in resolves it (``accounts.seals.reach_of``)


def _signed_in(services, viewer: _Viewer) -> _Viewer:  # type: ignore[no-untyped-def]
    """The viewer with the reach their sign-in reads."""
    if viewer.role != "security_manager":
        return replace(viewer, reach=SiteReach(secret=reach_secret(services.key)))
    with services.db.reading() as session:
        return replace(viewer, reach=manager_reach(session, SignInSeals.of(services.key), viewer.site))


def _chain(services, wearer: str) -> list[str]:  # type: ignore[no-untyped-def]
    ids = [store_item(services, wearer=wearer).id]
    for _ in range(LENGTH - 1):
        ids.append(store_item(services, kind="redacted_clip", derived_from=ids[-1]).id)
    return ids


def test_one_item_and_the_scope_clause_agree_along_derivation_chains(services) -> None:  # type: ignore[no-untyped-def]
    s = services
    staff(s, "S-N", "nurse", "NORTH")
    staff(s, "S-S", "porter", "SOUTH")
    inv = user(s, "inv", "investigator")
    viewers = [
        _Viewer(inv, "investigator", None),
        _Viewer(user(s, "other", "investigator"), "investigator", None),
        _Viewer(user(s, "north", "security_manager", "NORTH"), "security_manager", "NORTH"),
        _Viewer(user(s, "south", "security_manager", "SOUTH"), "security_manager", "SOUTH"),
        _Viewer(user(s, "aud", "auditor"), "auditor", None),
        _Viewer(user(s, "op", "operator"), "operator", None),
    ]
    viewers = [_signed_in(s, v) for v in viewers]
    chains = {}
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", datetime.now(UTC), "NORTH", title="chain"),
            "user:admin",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, inv, "user:admin")
        incident_id = incident.id
        viewers[0] = replace(viewers[0], assignments=sealed_assignment_ids(session, s.key, inv))
    for level in (None, *range(LENGTH)):  # which item of the chain is linked (None: none)
        chain = _chain(s, "S-S")
        if level is not None:
            with s.db.session() as session:
                link_evidence(session, s.ledger, incident_id, chain[level], "user:admin", "on the incident")
        chains[level] = chain
    chains["north"] = _chain(s, "S-N")  # linked nowhere, filmed at NORTH
    seen_any = seen_none = 0
    with s.db.session() as session:
        for viewer in viewers:
            for chain in chains.values():
                by_clause = visible_evidence_ids(session, viewer, chain)
                for item_id in chain:
                    one = visible_evidence(session, viewer, item_id)
                    assert (one is not None) == (item_id in by_clause), (viewer, chain.index(item_id))
                    assert one is None or one.id == item_id
                    seen_any += one is not None
                    seen_none += one is None
        assert visible_evidence(session, viewers[0], "no-such-item") is None
    assert seen_any and seen_none  # both answers were given
    # The rule itself, for the investigator: an item is visible when it or one of the
    # DERIVATION_DEPTH items before it is linked.
    with s.db.session() as session:
        for level in range(LENGTH):
            for n, item_id in enumerate(chains[level]):
                want = level <= n <= level + DERIVATION_DEPTH
                assert (visible_evidence(session, viewers[0], item_id) is not None) == want, (level, n)


def test_a_broken_seal_along_a_chain_cuts_the_reach_it_decides_alike_for_one_item_and_the_clause(  # type: ignore[no-untyped-def]
    services,
) -> None:
    """An item whose reach seal does not hold (its row written in the database) is reached through a
    link only: neither by its wearer's site nor through its original, and what derives from it
    reaches no further through it. One item's answer and the clause's agree on every item."""
    from sqlalchemy import update

    from chain_of_custody.models import EvidenceItem

    s = services
    staff(s, "S-S", "porter", "SOUTH")
    inv = user(s, "inv", "investigator")
    with s.db.session() as session:
        incident = create_incident(
            session,
            IncidentDraft("physical_assault", datetime.now(UTC), "SOUTH", title="chain"),
            "user:admin",
            ledger=s.ledger,
        )
        assign_investigator(session, s.ledger, incident, inv, "user:admin")
        incident_id = incident.id
        assignments = sealed_assignment_ids(session, s.key, inv)
    south = _signed_in(s, _Viewer(user(s, "south", "security_manager", "SOUTH"), "security_manager", "SOUTH"))
    investigator = _signed_in(s, _Viewer(inv, "investigator", None, assignments))
    for broken in range(3):  # which item of the chain is written in the database
        chain = _chain(s, "S-S")
        with s.db.session() as session:
            link_evidence(session, s.ledger, incident_id, chain[0], "user:admin", "on the incident")
            session.execute(
                update(EvidenceItem).where(EvidenceItem.id == chain[broken]).values(reach_seal="0" * 64)
            )
        with s.db.session() as session:
            for viewer in (south, investigator):
                by_clause = visible_evidence_ids(session, viewer, chain)
                for n, item_id in enumerate(chain):
                    one = visible_evidence(session, viewer, item_id) is not None
                    assert one == (item_id in by_clause), (viewer.role, broken, n)
                    # The original is linked: it stays reached whatever its row says, and so do
                    # its copies through it; from a copy whose row was written, nothing further
                    # down is reached through it (nor the copy itself: it is linked nowhere).
                    want = n == 0 or (not 1 <= broken <= n and n <= DERIVATION_DEPTH)
                    assert one == want, (viewer.role, broken, n)
