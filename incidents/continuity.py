"""The continuity report, pure: every custody event of an item (or of every item of an incident) from
capture to now, in plain words, and the same record's HTML.

It is made from the signed custody ledger, entry by entry, and says for each step who did what, when,
where, with which hashes, and what the step proves; each entry's own hash is printed so that a reader
can find it in the package's ``custody/<item>.json`` (or ask the trust for it) and check it. Whether the
record checked when the report was made (every entry's hash and signature, each item's chain, each
entry's inclusion in a signed tree head of the custody log) is said on the first page; a record that
did not check is flagged there, in red, with every finding. No I/O here (``continuity_record`` reads
the ledger; ``continuity_pdf`` lays the same report out as PDF).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from chain_of_custody.entries import CustodyAction, SignedEntry
from chain_of_custody.quarantines import REVIEW, STEPS, kind_of, standing_of

WHAT = {
    "captured": (
        "Recorded by the camera or device",
        "the device made this recording and signed its own hash of it",
    ),
    "received": ("Received by the service", "the file reached the service from the named dock or device"),
    "stored": (
        "Stored write-once and hashed",
        "the exact bytes were hashed as they arrived and locked in storage: they cannot be changed or "
        "deleted before the date shown",
    ),
    "verified": (
        "Checked against the device's own hash and signature",
        "the bytes stored are the bytes the device recorded",
    ),
    "blocks_listed": (
        "Checked whole and its block digests kept",
        "the stored bytes were read whole and matched the recorded hash; the digest of each 256 KiB "
        "block was kept so that later partial reads are checked block by block",
    ),
    "quarantined": (
        "Quarantined",
        "the item did not check: it is kept, but not served or exported as evidence",
    ),
    "quarantine_released": (
        "Released from quarantine after review",
        "the person named reviewed the item, held for review when it arrived, and released it as "
        "evidence for the reason given; its bytes are those stored and hashed above",
    ),
    "viewed": (
        "Viewed, downloaded or reported on",
        "who read the item, when and why (recorded before any byte left)",
    ),
    "viewing_closed": (
        "Viewing closed and sealed",
        "the ranges of the item read in the viewing opened above (named by its viewing id) were "
        "counted and hashed, in order, into this signed entry; ranges sha256 is their digest",
    ),
    "redacted": (
        "Working copy made (redacted)",
        "a copy was made with people obscured; the master copy is unchanged",
    ),
    "exported": (
        "Included in an export package",
        "the package's signed manifest names this item and its hash",
    ),
    "linked": (
        "Linked to an incident",
        "from this time the item belongs to the incident, for the reason given",
    ),
    "unlinked": (
        "Unlinked from an incident",
        "the item no longer belongs to the incident, for the reason given",
    ),
    "exhibit_referenced": ("Given its exhibit reference", "the reference a court knows this item by"),
    "retention_changed": ("Retention changed", "how long storage must keep the item, and why"),
    "legal_hold": ("Legal hold changed", "whether the item is held whatever its retention"),
    "deleted": ("Deleted under its retention class", "the bytes were removed; this record remains"),
    "alarm_raised": ("Alarm raised", "the lone-worker device raised the alarm"),
    "alarm_changed": ("Alarm changed", "the alarm was acknowledged, escalated or resolved"),
}
HELD_FOR_REVIEW = (
    "Quarantined for review",
    "the bytes are what the device signed and hashed, but its standing was in doubt (a retired key "
    "of the device, or the device disabled): kept, and not served or exported as evidence until a "
    "person reviewed it",
)
VIEWING_OPENED = (
    "Viewing opened (played, ranges read)",
    "who began reading the item in a player, when and why (recorded before any byte left); the ranges "
    "read in it are sealed by its closing entry below",
)
HASH_KEYS = ("sha256", "blake3", "manifest_sha256", "package_sha256", "ranges_sha256")
PLACE_KEYS = ("camera", "dock", "via", "bucket", "key", "version_id", "filename")
SKIP_KEYS = {"manifest", "camera_signature", "camera_public_key", "media", "incident_id", "link", "blocks"}


@dataclass(frozen=True)
class Step:
    """One custody entry, as the report says it."""

    item_seq: int
    seq: int
    at: str
    action: str
    what: str
    proves: str
    who: str
    where: str
    hashes: tuple[tuple[str, str], ...]
    facts: tuple[str, ...]
    entry_hash: str
    withheld: str | None = None


@dataclass(frozen=True)
class ItemStory:
    item_id: str
    exhibit: str | None
    kind: str
    copy_type: str
    status: str
    sha256: str
    size: int
    recorded_from: str | None
    recorded_to: str | None
    wearer: str | None
    device: str | None
    made_from: str | None  # "exhibit JS/1 (item ...)" for a working copy
    retention_basis: str | None
    retain_until: str | None
    steps: tuple[Step, ...]
    problems: tuple[str, ...] = ()
    quarantine: tuple[str, ...] = ()  # its quarantines and releases in words (``quarantine_words``)


@dataclass(frozen=True)
class Continuity:
    title: str
    subject: str
    generated_at: str
    generated_for: str
    key_fingerprint: str
    tree_head: str | None
    items: tuple[ItemStory, ...]
    incident: Mapping[str, Any] = field(default_factory=dict)
    checked_elsewhere: bool = (
        False  # a package's report: its signed manifest and ``evidence verify`` check it
    )

    @property
    def problems(self) -> list[str]:
        return [f"{it.exhibit or it.item_id}: {p}" for it in self.items for p in it.problems]

    @property
    def checks(self) -> bool:
        return not self.problems


# -- from custody entries to steps (pure) ---------------------------------------------------------


def person(actor: str, people: Mapping[str, str]) -> str:
    """An actor as a reader knows them: ``Jane Smith (investigator)``, a device, or the service."""
    if actor in people:
        return people[actor]
    kind, _, name = actor.partition(":")
    if kind == "user":
        return f"{name} (user)"
    if kind == "dock":
        return f"docking station {name}"
    if kind == "device":
        return f"device {name}"
    if kind == "service" or actor == "service":
        return "the evidence service (automatic)" + (f", {name.replace('-', ' ')}" if name else "")
    return actor


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(
            f"{k.replace('_', ' ')} {_text(v)}" for k, v in sorted(value.items()) if v not in (None, "")
        )
    return str(value)


def step_of(entry: Mapping[str, Any], people: Mapping[str, str]) -> Step:
    """A custody entry (as exported: ``SignedEntry.to_json``, or withheld) in words."""
    action = str(entry.get("action"))
    what, proves = WHAT.get(action, (action.replace("_", " ").capitalize(), ""))
    withheld = entry.get("withheld")
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    assert isinstance(details, dict)
    if action == CustodyAction.VIEWED and details.get("viewing"):
        what, proves = VIEWING_OPENED
    if action == CustodyAction.QUARANTINED and not withheld and kind_of(details) == REVIEW:
        what, proves = HELD_FOR_REVIEW
    hashes = tuple((k, str(details[k])) for k in HASH_KEYS if details.get(k))
    where = ", ".join(f"{k.replace('_', ' ')} {details[k]}" for k in PLACE_KEYS if details.get(k))
    facts = tuple(
        f"{k.replace('_', ' ')}: {_text(v)}"
        for k, v in sorted(details.items())
        if k not in HASH_KEYS and k not in PLACE_KEYS and k not in SKIP_KEYS and v not in (None, "", [], {})
    )
    return Step(
        item_seq=int(entry.get("item_seq") or 0),
        seq=int(entry.get("seq") or 0),
        at=str(entry.get("at")),
        action=action,
        what=what,
        proves=proves,
        who="" if withheld else person(str(entry.get("actor") or ""), people),
        where="" if withheld else where,
        hashes=() if withheld else hashes,
        facts=() if withheld else facts,
        entry_hash=str(entry.get("entry_hash")),
        withheld=str(withheld) if withheld else None,
    )


def quarantine_words(chain: Sequence[Mapping[str, Any]], people: Mapping[str, str]) -> tuple[str, ...]:
    """The item's quarantines in words, as its custody record has them (``chain_of_custody.quarantines``):
    each held for review and who released it, when and why; each still standing; and any entry
    that claims a release but releases nothing. Entries' hashes are checked here, their signatures
    by whoever checks the record (the report's first page, or the package's verifier)."""
    entries = [
        SignedEntry.from_json(dict(e)) for e in chain if e.get("action") in STEPS and not e.get("withheld")
    ]
    standing = standing_of(entries, None)
    out = []
    for q, r in standing.released:
        out.append(
            f"Quarantined for review at {q.at} (custody entry #{q.seq}): {q.reason}. Released from "
            f"quarantine at {r.at} by {person(r.actor, people)} after review (custody entry #{r.seq}), "
            f"stating: {r.reason}"
        )
    for q in standing.open:
        why = "for review" if q.kind == REVIEW else "because it did not check"
        out.append(f"Quarantined {why} at {q.at} (custody entry #{q.seq}): {q.reason}. Not released.")
    for seq, why in standing.unheld:
        out.append(f"Custody entry #{seq} claims a release from quarantine that releases nothing: {why}.")
    return tuple(out)


def retention_words(chain: Sequence[Mapping[str, Any]]) -> str | None:
    """What the item's lock runs from, as its ``stored`` entry recorded it."""
    for e in chain:
        basis = (
            (e.get("details") or {}).get("retention_basis")
            if e.get("action") == CustodyAction.STORED
            else None
        )
        if isinstance(basis, dict):
            source = (
                "the camera's recording time" if basis.get("from") == "capture" else "the time it arrived"
            )
            note = f" ({basis['note']})" if basis.get("note") else ""
            return f"from {source}, {basis.get('at')}{note}"
    return None


# -- HTML --------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,Arial,sans-serif;margin:2em;color:#111;max-width:75em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #999}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}th,td{border:1px solid #bbb;padding:.3em .5em;
text-align:left;vertical-align:top;font-size:.9em}th{background:#eee}.hash{font-family:monospace;
font-size:.8em;word-break:break-all}.bad{border:3px solid #b00;color:#b00;padding:.5em 1em}
.good{border:2px solid #070;padding:.5em 1em}.withheld{color:#7a4b00}.summary{page-break-after:always}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _dl(pairs: Sequence[tuple[str, object]]) -> str:
    return (
        "<dl>"
        + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs if v not in (None, ""))
        + "</dl>"
    )


def check_words(report: Continuity) -> str:
    if report.checked_elsewhere:
        return (
            "This report is part of a signed export package. Check the package as its VERIFY.txt says "
            "before relying on this report: the signed manifest and the custody files are the record."
        )
    if report.checks:
        return (
            "The custody record checked when this report was made: every entry's hash and the service's "
            "signature, each item's chain of entries, and each entry's inclusion in a signed tree head of "
            "the custody log."
        )
    return "THE CUSTODY RECORD DID NOT CHECK when this report was made. Do not rely on it until the trust explains:"


def item_facts(it: ItemStory) -> list[tuple[str, object]]:
    """What the report states about one item, in order: the same lines in the HTML and the PDF."""
    return [
        ("Evidence item", it.item_id),
        ("Status", it.status),
        ("SHA-256 of the stored bytes", it.sha256),
        ("Size", f"{it.size} bytes"),
        ("Recorded from (camera time, UTC)", it.recorded_from),
        ("Recorded to", it.recorded_to),
        ("Recorded by", it.wearer),
        ("Camera or device", it.device),
        ("Made from", it.made_from),
        ("Retention runs", it.retention_basis),
        ("Kept at least until", it.retain_until),
        ("Quarantine", " ".join(it.quarantine)),
    ]


def summary_rows(report: Continuity) -> list[tuple[str, str, str, str, str]]:
    """(exhibit, what, recorded, by whom, steps) for the one-page summary."""
    return [
        (
            it.exhibit or "(none)",
            f"{it.kind.replace('_', ' ')}, {it.copy_type}"
            + (f", {it.status}" if it.status != "stored" else ""),
            f"{it.recorded_from or 'unknown'}" + (f" to {it.recorded_to}" if it.recorded_to else ""),
            it.wearer or "",
            str(len(it.steps)),
        )
        for it in report.items
    ]


def render_html(report: Continuity) -> bytes:
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(report.title)}</title><style>{STYLE}</style></head><body>",
        "<section class='summary'>",
        f"<h1>{_e(report.title)}</h1>",
        _dl(
            [
                ("Subject", report.subject),
                ("Made (UTC)", report.generated_at),
                ("Made for", report.generated_for),
                ("Service signing key fingerprint (SHA-256)", report.key_fingerprint),
                ("Custody log tree head", report.tree_head),
            ]
        ),
        f"<p class='{'good' if report.checks or report.checked_elsewhere else 'bad'}'>{_e(check_words(report))}</p>",
    ]
    if report.problems:
        out.append("<ul class='bad'>" + "".join(f"<li>{_e(p)}</li>" for p in report.problems) + "</ul>")
    out.append(
        "<h2>Summary</h2><table><tr><th>Exhibit</th><th>What</th><th>Recorded (camera time, UTC)</th>"
        "<th>Recorded by</th><th>Custody steps</th></tr>"
    )
    for row in summary_rows(report):
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append(
        "</table><p>Compare the signing key fingerprint with the one the trust publishes (at its "
        "<code>/.well-known/evidence-signing-key</code> address, or on a download link's page), never "
        "only with this report. Each step below gives its custody entry's hash, which the entry in the "
        "signed ledger (and in an export package's <code>custody/</code> files) must have.</p></section>"
    )
    for it in report.items:
        out.append(
            f"<h2>Exhibit {_e(it.exhibit or '(none)')}: {_e(it.kind.replace('_', ' '))}, {_e(it.copy_type)}</h2>"
        )
        out.append(_dl(item_facts(it)))
        if it.problems:
            out.append("<ul class='bad'>" + "".join(f"<li>{_e(p)}</li>" for p in it.problems) + "</ul>")
        out.append(
            "<table><tr><th>#</th><th>When (UTC)</th><th>What, and what it proves</th><th>Who</th>"
            "<th>Where</th><th>Details and hashes</th><th>Entry hash</th></tr>"
        )
        for st in it.steps:
            if st.withheld:
                body = f"<td colspan='4' class='withheld'>{_e(st.what)}: withheld ({_e(st.withheld)})</td>"
            else:
                details = "<br>".join(_e(f) for f in st.facts)
                hashes = "<br>".join(f"{_e(k)}: <span class='hash'>{_e(v)}</span>" for k, v in st.hashes)
                body = (
                    f"<td><b>{_e(st.what)}</b><br>{_e(st.proves)}</td><td>{_e(st.who)}</td>"
                    f"<td>{_e(st.where)}</td><td>{details}{'<br>' if details and hashes else ''}{hashes}</td>"
                )
            out.append(
                f"<tr><td>{st.item_seq}</td><td>{_e(st.at)}</td>{body}<td class='hash'>{_e(st.entry_hash)}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>\n")
    return "".join(out).encode()


def package_continuity(
    draft: Mapping[str, Any], chains: Mapping[str, Sequence[Mapping[str, Any]]], people: Mapping[str, str]
) -> Continuity:
    """The report of an export package, from its manifest (without the file list) and the custody
    chains it carries: the package's own proof is its signed manifest, so whether the record checks
    is the verifier's to say (``evidence verify``), not this report's."""
    incident = draft.get("incident") or {}
    exhibit_of = {str(it["item_id"]): it.get("exhibit_reference") for it in draft["items"]}
    stories = []
    for it in draft["items"]:
        chain = chains.get(str(it["item_id"]), [])
        derived = it.get("derived_from")
        stories.append(
            ItemStory(
                item_id=str(it["item_id"]),
                exhibit=it.get("exhibit_reference"),
                kind=str(it["kind"]),
                copy_type=str(it.get("copy_type") or ("working copy" if derived else "master copy")),
                status=str(it["status"]),
                sha256=str(it["sha256"]),
                size=int(it["size"]),
                recorded_from=it.get("captured_start"),
                recorded_to=it.get("captured_stop"),
                wearer=it.get("wearer"),
                device=it.get("source_device_id"),
                made_from=(
                    f"exhibit {exhibit_of.get(str(derived['item_id'])) or '(none)'}, master copy "
                    f"{derived['item_id']}, SHA-256 {derived['sha256']}"
                    if derived
                    else None
                ),
                retention_basis=retention_words(chain),
                retain_until=None,
                steps=tuple(step_of(e, people) for e in chain),
                problems=(),
                quarantine=quarantine_words(chain, people),
            )
        )
    return Continuity(
        title=f"Evidence continuity report: {incident.get('reference') or draft['export_id']}",
        subject=f"export package {draft['export_id']}"
        + (f" of incident {incident['reference']}" if incident.get("reference") else ""),
        generated_at=str(draft["created_at"]),
        generated_for=str(draft["created_by"]),
        key_fingerprint=str(draft["signing_key"]["fingerprint_sha256"]),
        tree_head=None,
        items=tuple(stories),
        incident=incident,
        checked_elsewhere=True,
    )
