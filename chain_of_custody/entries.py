"""Pure custody-entry logic: the body that is hashed and signed, and chain checks over a list of entries.

No I/O here, so the same code verifies entries read from the database and from an export package.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .canonical import canonical_json

GENESIS = "0" * 64


class CustodyAction(StrEnum):
    """What a custody entry records. Stored and signed as its value."""

    CAPTURED = "captured"
    RECEIVED = "received"
    STORED = "stored"
    VERIFIED = "verified"
    # An item stored before block lists were kept given its list, from a whole check of its object
    # that matched its record (``later_lists``): the entry commits to the list.
    BLOCKS_LISTED = "blocks_listed"
    VIEWED = "viewed"  # a read; a player's ranges open a viewing with it (``viewings``)
    VIEWING_CLOSED = "viewing_closed"  # a viewing sealed: its ranges counted and hashed
    QUARANTINED = "quarantined"
    # A quarantine for review (not for integrity) released by a person with their reason, naming the
    # ``quarantined`` entry it ends (``quarantines``): the item is evidence again.
    QUARANTINE_RELEASED = "quarantine_released"
    REDACTED = "redacted"
    EXPORT_REQUESTED = "export_requested"  # a package asked for: what its builder may build
    EXPORTED = "exported"
    LINK_ISSUED = "link_issued"  # a package's download link given to a named recipient
    LINK_REVOKED = "link_revoked"
    LINKED = "linked"
    EXHIBIT_REFERENCED = "exhibit_referenced"
    UNLINKED = "unlinked"
    RETENTION_CHANGED = "retention_changed"
    LEGAL_HOLD = "legal_hold"
    DELETED = "deleted"
    ALARM_RAISED = "alarm_raised"
    ALARM_CHANGED = "alarm_changed"
    DEVICE_ENROLLED = "device_enrolled"
    DEVICE_CHANGED = "device_changed"
    USER_CHANGED = "user_changed"
    STAFF_CHANGED = (
        "staff_changed"  # a member of staff added, or their site changed: whose footage a site sees
    )
    INCIDENT_CHANGED = "incident_changed"  # an incident opened, or its site changed: who sees it
    SUBJECT_ACCESS = "subject_access"  # a subject access request received, searched or answered
    # A bearer token revoked, a console session ended or a download's read grant used, named by a
    # keyed digest (``row_seals``): the row can be put back in the database, this entry cannot, and
    # it keeps the credential ended.
    CREDENTIAL_ENDED = "credential_ended"
    # A device disabled or enabled again, named by a keyed digest of its id (``row_seals``): the
    # latest decides whether it may speak, whatever its row says (``devices.ends``).
    DEVICE_DISABLED = "device_disabled"
    DEVICE_ENABLED = "device_enabled"
    # A lone visit opened, ended or sealed, with its wearer: whose missed check-in it raises.
    VISIT_CHANGED = "visit_changed"
    CHECKPOINT = "checkpoint"
    # ``upgrade-seals`` sealed every alarm outbox row queued before messages were sealed: an unsealed
    # row is nobody's the service knows from then on (``outbox_seals.SealsBegan``).
    OUTBOX_SEALED = "outbox_sealed"
    # ``upgrade-seals`` sealed the receipt of every device message stored before receipt seals whose
    # bytes the key then in force signed: an unsealed row is nobody's word from then on
    # (``receipt_upgrade``).
    RECEIPTS_SEALED = "receipts_sealed"
    # ``upgrade-seals`` gave the evidence items recorded before items kept their capture site the
    # site the ledger bears out (``capture_sites``): from then on no item awaits it.
    CAPTURE_SITES_RECORDED = "capture_sites_recorded"
    # A row of the device messages' table holding a message's event id that is not the service's
    # receipt of it (written or edited by SQL) moved aside when the genuine message came, so it was
    # acted on (``alarms.set_aside``): the entry names the row and its bytes' hash.
    EVENT_SET_ASIDE = "event_set_aside"
    # An alarm row holding the event id of a device's raise that the service did not raise from it
    # (written or edited by SQL), set aside when the raise came so it was raised (``alarms.alarm_keys``):
    # the entry names the row, whether it was moved or its key put back, and its columns' hash.
    ALARM_SET_ASIDE = "alarm_set_aside"
    # A lone-worker device's replay state whose seal did not hold (written or edited by SQL), rebuilt
    # from the device's received messages when its next message came (``alarms.replay_state``): the
    # entry names the device, what the state said and what it was rebuilt to.
    REPLAY_STATE_REBUILT = "replay_state_rebuilt"


@dataclass(frozen=True)
class EntryBody:
    """Everything in an entry except its hash and signature."""

    seq: int
    id: str
    at: str
    action: str
    actor: str
    item_id: str | None
    item_seq: int | None
    details: str  # canonical JSON text
    prev_hash: str
    item_prev_hash: str | None
    key_id: str

    def canonical(self) -> bytes:
        return canonical_json(
            {
                "v": 1,
                "seq": self.seq,
                "id": self.id,
                "at": self.at,
                "action": self.action,
                "actor": self.actor,
                "item_id": self.item_id,
                "item_seq": self.item_seq,
                "details": json.loads(self.details),
                "prev_hash": self.prev_hash,
                "item_prev_hash": self.item_prev_hash,
                "key_id": self.key_id,
            }
        )

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


# What an export keeps of an entry that does not belong to it (another incident's link and its reason,
# another package): enough to keep the item's chain linked, nothing of what the entry says.
WITHHELD_KEEPS = ("seq", "id", "at", "action", "item_id", "item_seq", "prev_hash", "item_prev_hash", "key_id")


def withhold(entry: dict[str, Any], reason: str) -> dict[str, Any]:
    """The entry as a package shows one it withholds: its place in the chain and its hash, with the
    reason, but no actor, details or signature. Its hash is still vouched for: the signed manifest
    lists every withheld entry's hash, and the item's next entry (signed) names it as ``item_prev_hash``."""
    kept = {k: entry.get(k) for k in WITHHELD_KEEPS}
    return {**kept, "entry_hash": entry["entry_hash"], "withheld": reason}


def details_name(entry: dict[str, Any], markers: Iterable[str]) -> bool:
    """Whether the entry's details name any of ``markers`` (another incident's id or reference,
    another package's id) anywhere in their text, as a free-text reason may: such an entry is
    withheld from whoever may not see what it names."""
    text = json.dumps(entry.get("details"), sort_keys=True, default=str)
    return any(m in text for m in markers)


def _viewing_of(entry: dict[str, Any]) -> str | None:
    details = entry.get("details") or {}
    if entry.get("action") in (CustodyAction.VIEWED, CustodyAction.VIEWING_CLOSED) and isinstance(
        details, dict
    ):
        viewing = details.get("viewing")
        return None if viewing is None else str(viewing)
    return None


def viewings_whole(
    entries: Sequence[dict[str, Any]], shown: list[dict[str, Any]], reason: str
) -> list[dict[str, Any]]:
    """``shown`` (``entries`` as a reader gets them, some withheld) with each viewing carried whole
    or withheld whole: when a viewing's opening (``viewed``) or its seal (``viewing_closed``) is
    withheld, so is the other (with ``reason``), so no seal is shown whose opening is hidden, nor
    the other way round."""
    hidden = {_viewing_of(e) for e, s in zip(entries, shown, strict=True) if "withheld" in s} - {None}
    if not hidden:
        return shown
    return [
        withhold(e, reason) if "withheld" not in s and _viewing_of(e) in hidden else s
        for e, s in zip(entries, shown, strict=True)
    ]


@dataclass(frozen=True)
class SignedEntry:
    body: EntryBody
    entry_hash: str
    signature: str
    withheld: str | None = None  # in a package: why the entry's content is left out (see ``withhold``)

    def to_json(self) -> dict[str, Any]:
        b = self.body
        return {
            "seq": b.seq,
            "id": b.id,
            "at": b.at,
            "action": b.action,
            "actor": b.actor,
            "item_id": b.item_id,
            "item_seq": b.item_seq,
            "details": json.loads(b.details),
            "prev_hash": b.prev_hash,
            "item_prev_hash": b.item_prev_hash,
            "key_id": b.key_id,
            "entry_hash": self.entry_hash,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedEntry:
        withheld = d.get("withheld")
        if withheld is not None:
            d = {"actor": "", "details": {}, "signature": "", **d}
        body = EntryBody(
            seq=int(d["seq"]),
            id=str(d["id"]),
            at=str(d["at"]),
            action=str(d["action"]),
            actor=str(d["actor"]),
            item_id=d.get("item_id"),
            item_seq=d.get("item_seq"),
            details=canonical_json(d.get("details", {})).decode(),
            prev_hash=str(d["prev_hash"]),
            item_prev_hash=d.get("item_prev_hash"),
            key_id=str(d["key_id"]),
        )
        return cls(
            body, str(d["entry_hash"]), str(d["signature"]), None if withheld is None else str(withheld)
        )


@dataclass
class Problem:
    """One precise finding of verification: what, where, and why it matters."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.where}: {self.detail}"


@dataclass
class ChainReport:
    problems: list[Problem] = field(default_factory=list)
    entries_checked: int = 0
    notes: list[str] = field(default_factory=list)  # what was checked, where it is not everything

    @property
    def ok(self) -> bool:
        return not self.problems


def report_unsealed(report: ChainReport, count: int, what: str) -> None:
    """A note on ``count`` rows a seal check could not hold to their seal (none yet, or one from
    before seals covered what they do now): ``"<count> <what>"``, and nothing when there are none."""
    if count:
        report.notes.append(f"{count} {what}")


Verifier = Callable[[str, bytes], bool]  # (signature_b64, message) -> valid


def viewing_named(entry: SignedEntry) -> str | None:
    """The viewing a ``viewed`` opening or a ``viewing_closed`` seal names (None for any other entry,
    a whole read, or details that are not a JSON object)."""
    if entry.body.action not in (CustodyAction.VIEWED, CustodyAction.VIEWING_CLOSED):
        return None
    try:
        details = json.loads(entry.body.details)
    except ValueError:
        return None
    viewing = details.get("viewing") if isinstance(details, dict) else None
    return None if viewing is None else str(viewing)


def details_object(text: Any) -> dict[str, Any] | None:
    """A ledger row's ``details`` as the JSON object every entry of the service holds, or None for
    what a database editor put there instead (text that is not JSON, JSON that is not an object):
    such a row is named by the chain's walk (:func:`check_entry`), and a reader takes nothing from it."""
    try:
        d = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None
    return d if isinstance(d, dict) else None


def entry_number(value: Any) -> int | None:
    """A ledger row's ``seq`` or ``item_seq`` when it is a whole number, else None: SQLite keeps
    whatever SQL writes into a column (``'5a'``, ``5.5``, bytes), and no entry of the service is
    numbered so (``evidence verify`` names such a row: ``entry_number_not_integer``)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _details_shape(text: Any) -> str:
    """What a row's ``details`` are instead of a JSON object, without repeating them (they may be
    anything, a person's name included)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return "not JSON at all" if isinstance(text, str) else f"not text but {type(text).__name__}"
    return f"JSON, but {'null' if value is None else type(value).__name__}"


def check_entry(entry: SignedEntry, verify_sig: Verifier | None) -> list[Problem]:
    """The entry's own integrity: its hash matches its content and its signature is the service's.
    ``verify_sig`` None: there is no key to check signatures with (a finding of its own, said once
    by the caller), so only the hash is checked rather than every entry called re-signed."""
    where = f"custody entry #{entry.body.seq}"
    problems: list[Problem] = []
    if details_object(entry.body.details) is None:
        return [
            Problem(
                "entry_altered",
                where,
                f"its details are not a JSON object, as every entry's are ({_details_shape(entry.body.details)}): "
                "row edited",
            )
        ]
    try:
        digest = entry.body.digest()
    except (TypeError, ValueError) as exc:  # a column SQL filled with what no entry holds
        return [
            Problem(
                "entry_altered",
                where,
                f"content cannot be read as an entry's ({type(exc).__name__}: {exc}): row edited",
            )
        ]
    if digest != entry.entry_hash:
        problems.append(
            Problem("entry_altered", where, "content does not match its recorded hash (row edited)")
        )
    elif verify_sig is not None and not verify_sig(entry.signature, entry.body.canonical()):
        problems.append(
            Problem(
                "bad_signature",
                where,
                "hash is consistent but the signature is not the service key's (re-signed)",
            )
        )
    return problems


def check_global_chain(
    entries: Iterable[SignedEntry],
    verify_sig: Verifier,
    report: ChainReport,
    renumbered: Mapping[int, SignedEntry] | None = None,
) -> str:
    """Walk the whole ledger in seq order; returns the tip hash. Gaps and broken links are named.
    ``renumbered``: entries whose number is not a whole number (named by the caller), by the place
    their hash links give them: a gap they fill is not named again, and the walk links through them."""
    expected_seq = 1
    prev = GENESIS
    placed = renumbered or {}

    def through_renumbered(before: int | None) -> None:
        nonlocal expected_seq, prev
        while expected_seq in placed and (before is None or expected_seq < before):
            if placed[expected_seq].body.prev_hash != prev:
                return
            prev = placed[expected_seq].entry_hash
            expected_seq += 1

    for entry in entries:
        report.entries_checked += 1
        b = entry.body
        through_renumbered(b.seq)
        if b.seq != expected_seq:
            missing = f"#{expected_seq}" if b.seq == expected_seq + 1 else f"#{expected_seq}..#{b.seq - 1}"
            report.problems.append(
                Problem(
                    "entry_missing", f"custody entry {missing}", f"sequence jumps to #{b.seq} (entry deleted)"
                )
            )
        if b.prev_hash != prev:
            report.problems.append(
                Problem(
                    "chain_broken",
                    f"custody entry #{b.seq}",
                    "previous-hash link does not match the entry before it (entry deleted, reordered or altered)",
                )
            )
        report.problems.extend(check_entry(entry, verify_sig))
        prev = entry.entry_hash
        expected_seq = b.seq + 1
    through_renumbered(None)
    return prev


def check_item_chain(item_id: str, entries: list[SignedEntry], verify_sig: Verifier | None) -> list[Problem]:
    """One evidence item's own chain, as exported: contiguous item_seq and item_prev_hash links."""
    problems: list[Problem] = []
    prev: str | None = None
    for i, entry in enumerate(entries, start=1):
        b = entry.body
        where = f"custody entry {i} of item {item_id}"
        if b.item_id != item_id:
            problems.append(Problem("wrong_item", where, f"entry belongs to item {b.item_id}"))
        if b.item_seq != i:
            problems.append(
                Problem("entry_missing_or_reordered", where, f"item sequence is {b.item_seq}, expected {i}")
            )
        if b.item_prev_hash != prev:
            problems.append(
                Problem("chain_broken", where, "link to the item's previous entry does not match")
            )
        if entry.withheld is None:  # a withheld entry's hash is vouched for by the signed manifest
            problems.extend(check_entry(entry, verify_sig))
        prev = entry.entry_hash
    return problems
