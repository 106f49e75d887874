"""The human-readable continuity report of an export package (one self-contained HTML file).

A court, a solicitor or an officer reads this; the machine-checkable proof is the manifest, its
signature and the custody files beside it. The report says the same things in words: each item, its
hashes, where it came from, and who did what to it, when.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from ..continuity import quarantine_words

ACTION_WORDS = {
    "captured": "Recorded by the device",
    "received": "Received by the service",
    "stored": "Stored write-once and hashed",
    "verified": "Integrity and device signature verified",
    "blocks_listed": "Checked whole against its hash; its block digests kept for ranged reads",
    "quarantined": "Quarantined (held for review, or did not check)",
    "quarantine_released": "Released from quarantine after review (by the person named, for the reason given)",
    "viewed": "Viewed or downloaded",
    "viewing_closed": "Viewing closed and sealed (its ranges counted and hashed)",
    "redacted": "Redacted copy made",
    "exported": "Included in an export package",
    "link_issued": "Download link given to a named recipient",
    "link_revoked": "Download link revoked",
    "linked": "Linked to an incident",
    "exhibit_referenced": "Given its exhibit reference",
    "unlinked": "Unlinked from an incident",
    "retention_changed": "Retention changed",
    "legal_hold": "Legal hold changed",
    "deleted": "Deleted under its retention class",
    "alarm_raised": "Alarm raised",
    "alarm_changed": "Alarm changed",
}

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Arial,sans-serif;margin:2em;color:#111;max-width:72em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #999}h3{font-size:1.05em}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}th,td{border:1px solid #bbb;padding:.3em .5em;
text-align:left;vertical-align:top;font-size:.9em}th{background:#eee}code,.hash{font-family:ui-monospace,
Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}.withheld{color:#7a4b00}.note{color:#444}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
@media print{body{margin:0}h2{page-break-before:auto}}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{n} bytes" if n < 1024 else f"{value:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def _details(details: Any) -> str:
    if not isinstance(details, dict) or not details:
        return ""
    parts = []
    for k in sorted(details):
        v = details[k]
        if v is None or v == "" or v == [] or v == {}:
            continue
        text = v if isinstance(v, str) else repr(v) if not isinstance(v, dict | list) else str(v)
        parts.append(f"<b>{_e(k)}</b>: <span class='hash'>{_e(text)}</span>")
    return "<br>".join(parts)


def _dl(pairs: Mapping[str, Any]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs.items() if v not in (None, ""))
    return f"<dl>{rows}</dl>"


def render_continuity_report(draft: Mapping[str, Any], chains: Mapping[str, list[dict[str, Any]]]) -> bytes:
    """HTML for the manifest ``draft`` (everything but the file list) and each item's custody entries."""
    items: list[dict[str, Any]] = list(draft["items"])
    originals = draft["originals"]
    key = draft["signing_key"]
    incident = draft.get("incident") or {}
    out: list[str] = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Continuity report: export {_e(draft['export_id'])}</title><style>{STYLE}</style></head><body>",
        "<h1>Evidence continuity report</h1>",
        "<p class='note'>This report describes every item in this export package and its chain of custody. "
        "The authoritative record is <code>manifest.json</code>, signed by the service key below, and the "
        "custody files in <code>custody/</code>. <code>VERIFY.txt</code> explains how to check them.</p>",
        "<h2>Export</h2>",
        _dl(
            {
                "Export id": draft["export_id"],
                "Created (UTC)": draft["created_at"],
                "Created by": draft["created_by"],
                "Signing key (Ed25519) SHA-256 fingerprint": (
                    f"{key['fingerprint_sha256']} (as this package states it: compare it with the "
                    "fingerprint the trust publishes at /.well-known/evidence-signing-key or on your "
                    "download link's page, never only with this report)"
                ),
                "Original footage": (
                    f"included, authorised by {originals.get('authorised_by')} "
                    f"({originals.get('authorised_role')}); reason: {originals.get('reason')}"
                    if originals.get("included")
                    else "not included: videos are the redacted copies; originals are identified by hash"
                ),
            }
        ),
        "<h2>Incident</h2>",
        _dl({str(k): v for k, v in incident.items() if not isinstance(v, dict | list)}) or "<p>-</p>",
        "<h2>Items</h2>",
        "<table><tr><th>Exhibit</th><th>Item</th><th>Kind</th><th>File in package</th><th>Size</th><th>SHA-256</th>"
        "<th>Made from (original SHA-256)</th></tr>",
    ]
    for it in items:
        derived = it.get("derived_from")
        where = (
            f"<code>{_e(it['path'])}</code>"
            if it.get("path")
            else f"<span class='withheld'>withheld: {_e(it.get('withheld_reason'))}</span>"
        )
        made_from = (
            f"item <code>{_e(derived['item_id'])}</code><br><span class='hash'>{_e(derived['sha256'])}</span>"
            if derived
            else ""
        )
        out.append(
            f"<tr><td>{_e(it.get('exhibit_reference') or '')}</td>"
            f"<td><code>{_e(it['item_id'])}</code></td><td>{_e(it['kind'])}, {_e(it.get('copy_type') or '')}"
            f"{' (quarantined: ' + _e(it.get('quarantine_reason')) + ')' if it.get('status') == 'quarantined' else ''}"
            f"</td><td>{where}</td><td>{_e(_size(int(it['size'])))}</td>"
            f"<td class='hash'>{_e(it['sha256'])}</td><td>{made_from}</td></tr>"
        )
    out.append("</table>")
    out.append("<h2>Chain of custody</h2>")
    for it in items:
        entries = chains.get(it["item_id"], [])
        exhibit = f"Exhibit {_e(it['exhibit_reference'])}: " if it.get("exhibit_reference") else ""
        out.append(f"<h3>{exhibit}{_e(it['kind'])} <code>{_e(it['item_id'])}</code></h3>")
        out.append(
            _dl(
                {
                    "File name": it.get("filename"),
                    "Wearer": it.get("wearer"),
                    "Device": it.get("source_device_id"),
                    "Recorded from": it.get("captured_start"),
                    "Recorded to": it.get("captured_stop"),
                    "SHA-256": it["sha256"],
                    "Quarantine": " ".join(quarantine_words(entries, {})),
                    "Custody file": f"custody/{it['item_id']}.json "
                    f"({len(entries)} {'entry' if len(entries) == 1 else 'entries'})",
                }
            )
        )
        out.append(
            "<table><tr><th>#</th><th>When (UTC)</th><th>What</th><th>Who</th><th>Details</th>"
            "<th>Entry hash</th></tr>"
        )
        for e in entries:
            action = str(e.get("action"))
            out.append(
                f"<tr><td>{_e(e.get('item_seq'))}</td><td>{_e(e.get('at'))}</td>"
                f"<td>{_e(ACTION_WORDS.get(action, action))}<br><code>{_e(action)}</code></td>"
                f"<td>{_e(e.get('actor'))}</td>"
                f"<td>{_e('withheld: ' + str(e['withheld'])) if 'withheld' in e else _details(e.get('details'))}</td>"
                f"<td class='hash'>{_e(e.get('entry_hash'))}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>\n")
    return "".join(out).encode()
