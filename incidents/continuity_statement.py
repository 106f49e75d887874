"""A continuity statement draft, pure: witness-statement wording (in the manner of the MG11) filled
from the custody record, for the producer of the exhibits to read, correct, complete and sign.

It is labelled a draft on every page: it is not a statement until its maker has checked every fact
in it against their own knowledge and signed it. Facts come only from the report
(``continuity.Continuity``), and the parts only the maker can say are left as marked gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from chain_of_custody.entries import CustodyAction

from .continuity import Continuity, ItemStory, Step

DRAFT = "DRAFT - NOT A STATEMENT until its maker has checked, corrected, completed and signed it"
DECLARATION = (
    "This statement (consisting of [ ] page(s) each signed by me) is true to the best of my knowledge "
    "and belief and I make it knowing that, if it is tendered in evidence, I shall be liable to "
    "prosecution if I have wilfully stated in it anything which I know to be false, or do not believe "
    "to be true."
)
GAP = "[to be completed by the maker]"


def _first(steps: Sequence[Step], action: CustodyAction) -> Step | None:
    return next((s for s in steps if s.action == action and not s.withheld), None)


def _hash(step: Step | None, name: str = "sha256") -> str | None:
    return None if step is None else dict(step.hashes).get(name)


def item_paragraphs(it: ItemStory) -> list[str]:
    """What the record says of one exhibit, in the first person of its producer."""
    ref = it.exhibit or "[exhibit reference]"
    out: list[str] = []
    if it.copy_type == "master copy":
        when = (
            f"between {it.recorded_from} and {it.recorded_to} (UTC, by the camera's clock)"
            if it.recorded_to
            else (
                f"from {it.recorded_from} (UTC, by the camera's clock)" if it.recorded_from else f"on {GAP}"
            )
        )
        device = f"body-worn camera {it.device}" if it.device else f"the device {GAP}"
        out.append(
            f"{when[:1].upper()}{when[1:]} I was wearing {device}, which made a {it.kind.replace('_', ' ')} recording. {GAP}"
        )
    else:
        made = _first(it.steps, CustodyAction.STORED)
        out.append(
            f"A working copy ({it.kind.replace('_', ' ')}) was made by the evidence service"
            f"{' on ' + made.at if made else ''} from {it.made_from or 'the master copy'}; the master copy "
            "was not changed."
        )
    received = _first(it.steps, CustodyAction.RECEIVED)
    if received is not None:
        out.append(
            f"The recording reached the evidence service at {received.at}"
            + (f" from {received.where}." if received.where else ".")
        )
    stored = _first(it.steps, CustodyAction.STORED)
    if stored is not None:
        out.append(
            f"The service stored it write-once at {stored.at} and recorded its SHA-256 hash as {_hash(stored) or it.sha256}."
        )
    verified = _first(it.steps, CustodyAction.VERIFIED)
    if verified is not None:
        out.append(f"At {verified.at} the service checked it against the camera's own hash and signature.")
    out += [f"The service's custody record shows: {words}" for words in it.quarantine]
    if it.status == "quarantined":
        out.append("The service has marked this item as quarantined: it did not check. " + GAP)
    for st in it.steps:
        if st.action == CustodyAction.EXPORTED and not st.withheld:
            package = _hash(st, "package_sha256") or _hash(st, "manifest_sha256")
            out.append(
                f"At {st.at} it was included in an export package"
                + (f" (SHA-256 {package})." if package else ".")
            )
    out.append(f"I produce this {it.copy_type} as exhibit {ref} (SHA-256 {it.sha256}, {it.size} bytes).")
    return out


def _by_producer(report: Continuity) -> dict[str, list[ItemStory]]:
    groups: dict[str, list[ItemStory]] = {}
    for it in report.items:
        groups.setdefault(it.wearer or GAP, []).append(it)
    return groups


def render_text(report: Continuity) -> str:
    lines: list[str] = []
    for producer, items in _by_producer(report).items():
        lines += [
            DRAFT,
            "",
            "WITNESS STATEMENT (continuity of exhibits)",
            "(Criminal Justice Act 1967, s.9; Magistrates' Courts Act 1980, s.5A(3)(a) and 5B; Criminal Procedure Rules 2020, r.16.2)",
            "",
            f"Statement of: {producer}",
            f"Occupation: {GAP}",
            f"Concerning: {report.subject}",
            "",
            DECLARATION,
            "",
            "Signature: ____________________    Date: ____________________",
            "",
            f"I am employed by {GAP} as {GAP}.",
        ]
        for it in items:
            lines.append("")
            lines += item_paragraphs(it)
        lines += [
            "",
            f"The custody record of these exhibits, from which the facts above were drafted at {report.generated_at}, "
            f"is signed by the service key with fingerprint {report.key_fingerprint}"
            + (
                " and checked when this draft was made."
                if report.checks
                else "; IT DID NOT CHECK when this draft was made:"
            ),
        ]
        lines += [f"  - {p}" for p in report.problems]
        lines += ["", "Signature: ____________________", "", DRAFT, "", ""]
    if not report.items:
        lines = [DRAFT, "", f"No exhibits to state for {report.subject}.", ""]
    return "\n".join(lines)


def render_statement_html(report: Continuity) -> bytes:
    """The same draft in a page of its own (no script, every word escaped)."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(DRAFT)}</title><style>body{{font-family:serif;margin:2em;max-width:50em}}"
        ".draft{color:#b00;font-weight:bold;border:2px solid #b00;padding:.4em}pre{white-space:pre-wrap;"
        "font-family:serif}</style></head><body>"
        f"<p class='draft'>{escape(DRAFT)}</p><pre>{escape(render_text(report))}</pre></body></html>\n"
    ).encode()
