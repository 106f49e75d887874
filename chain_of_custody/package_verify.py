"""Offline verification of an export package: needs the zip file and nothing else.

Only the standard library, ``cryptography`` and this package's pure modules are imported (never the
database or the object store), so an auditor can run it on any machine. Every check names the file,
item or custody entry it is about, so a failure says exactly what was changed.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .entries import ChainReport, CustodyAction, Problem, SignedEntry, check_item_chain, viewing_named
from .hashing import sha256_stream
from .keys import public_key_fingerprint, verify_signature
from .manifest import (
    CONTROL_FILES,
    FORMAT,
    MANIFEST,
    PUBLIC_KEY,
    SIGNATURE,
    SUMS,
    SUMS_SIGNATURE,
    is_safe_member,
    parse_sha256sums,
    stored_details,
    viewing_ranges_path,
)
from .merkle import leaf_hash, verify_inclusion
from .signed_tree_head import TreeHead
from .zip_structure import structure_findings

CHUNK = 1024 * 1024


@dataclass
class PackageReport(ChainReport):
    """The findings, plus what an auditor needs to state: which key signed it and how much was checked."""

    fingerprint: str | None = None
    export_id: str | None = None
    files_checked: int = 0
    items_checked: int = 0
    notes: list[str] = field(default_factory=list)


def normalise_fingerprint(value: str) -> str:
    """Accept hex in any case, with colons or spaces, as people copy fingerprints."""
    return re.sub(r"[\s:]", "", value).lower()


def _member_digest(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, int]:
    """SHA-256 and size of a member, streamed; the zip's own CRC check is skipped so a changed byte
    is reported as a hash mismatch against the signed manifest rather than as a read error."""
    unchecked = copy.copy(info)
    try:
        del unchecked.CRC
    except AttributeError:
        unchecked = info
    with zf.open(unchecked) as f:
        return sha256_stream(iter(lambda: f.read(CHUNK), b""))


def _member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise ValueError(f"{info.filename} is {info.file_size} bytes, more than a control file can be")
    unchecked = copy.copy(info)
    try:
        del unchecked.CRC
    except AttributeError:
        unchecked = info
    with zf.open(unchecked) as f:
        return f.read()


class _Package:
    """The zip's members by name, with reads that turn zip errors into findings.

    Every member the central directory names is looked at, directories included: a "directory" can
    carry bytes, and an extractor that drops it would hide them from a reader. A name that is flagged
    here (a directory, an unsafe path, a case variant, a duplicate) is named once, for what it is."""

    def __init__(self, zf: zipfile.ZipFile, report: PackageReport) -> None:
        self.zf = zf
        self.report = report
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.flagged: set[str] = set()
        folded: dict[str, str] = {}
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                self._flag(
                    "directory_member",
                    name,
                    f"a zip directory member ({info.file_size} bytes in it), which no manifest lists",
                )
                continue
            if not is_safe_member(name):
                self._flag("unsafe_path", name, "file name is absolute, climbs out with '..' or is unusual")
                continue
            if name in self.members:
                # The first is checked against the manifest; the second is named, once, for being there.
                self._flag("duplicate_file", name, "the package holds two files of this name")
                continue
            if name.casefold() in folded:
                self._flag(
                    "case_variant",
                    name,
                    f"differs from {folded[name.casefold()]} only in case (one overwrites the other on "
                    "Windows and macOS)",
                )
                continue
            folded.setdefault(name.casefold(), name)
            self.members[name] = info
        self.digests: dict[str, tuple[str, int]] = {}

    def _flag(self, kind: str, name: str, detail: str) -> None:
        self.flagged.add(name)
        self.report.problems.append(Problem(kind, name, detail))

    def read(self, name: str, limit: int = 64 * 1024 * 1024) -> bytes | None:
        info = self.members.get(name)
        if info is None:
            consequence = {
                PUBLIC_KEY: ": no signature in the package can be checked",
                MANIFEST: ": nothing in the package can be checked against it",
            }.get(name, "")
            self.report.problems.append(Problem("file_missing", name, "not in the package" + consequence))
            return None
        try:
            return _member_bytes(self.zf, info, limit)
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            self.report.problems.append(Problem("file_unreadable", name, str(exc)))
            return None

    def digest(self, name: str) -> tuple[str, int] | None:
        if name in self.digests:
            return self.digests[name]
        info = self.members.get(name)
        if info is None:
            return None
        try:
            self.digests[name] = _member_digest(self.zf, info)
        except (zipfile.BadZipFile, OSError) as exc:
            self.report.problems.append(
                Problem("file_unreadable", name, f"cannot be read from the zip: {exc}")
            )
            return None
        return self.digests[name]


def _load_key(pem: bytes | None, report: PackageReport) -> Ed25519PublicKey | None:
    if pem is None:
        return None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        report.problems.append(Problem("bad_public_key", PUBLIC_KEY, f"not a PEM public key: {exc}"))
        return None
    if not isinstance(key, Ed25519PublicKey):
        report.problems.append(Problem("bad_public_key", PUBLIC_KEY, "not an Ed25519 public key"))
        return None
    return key


def _check_signature(
    key: Ed25519PublicKey | None,
    signed: bytes | None,
    signature: bytes | None,
    kind: str,
    signed_name: str,
    sig_name: str,
    report: PackageReport,
) -> bool:
    if key is None or signed is None or signature is None:
        return False
    try:
        if len(signature) != 64:
            raise InvalidSignature
        key.verify(signature, signed)
        return True
    except InvalidSignature:
        report.problems.append(
            Problem(
                kind,
                signed_name,
                f"{sig_name} is not a valid signature of {signed_name} by {PUBLIC_KEY} "
                f"({signed_name} edited, or signed by another key)",
            )
        )
        return False


NO_TRUSTED_KEY = (
    "no trusted key was given: pass --key-fingerprint with the fingerprint obtained from the trust that "
    "made the package (its /.well-known/evidence-signing-key, the download link's page, or as its "
    "operator told you), never one read from the package; --accept-embedded-key trusts the key inside "
    "the package, which shows only that the package agrees with itself"
)
EMBEDDED_KEY_ACCEPTED = (
    "the key inside the package was trusted because --accept-embedded-key was given: anyone can re-sign "
    "a package with a key of their own, so compare {fp} with the fingerprint the trust publishes"
)


def _check_key(
    key: Ed25519PublicKey | None,
    manifest: dict[str, Any],
    expected: str | None,
    report: PackageReport,
    accept_embedded_key: bool = False,
) -> None:
    """The signing key must be one the user was given out of band: a key the package brings proves
    nothing, since a forger re-signs with a key of their own and ships it alongside."""
    if expected is None and not accept_embedded_key:
        report.problems.append(Problem("no_trusted_key", PUBLIC_KEY, NO_TRUSTED_KEY))
    if key is None:
        return
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    report.fingerprint = public_key_fingerprint(raw)
    stated = (manifest.get("signing_key") or {}).get("fingerprint_sha256")
    if manifest and stated != report.fingerprint:  # no manifest is a finding of its own
        report.problems.append(
            Problem(
                "key_mismatch",
                PUBLIC_KEY,
                f"key fingerprint is {report.fingerprint} but the manifest names {stated}",
            )
        )
    if expected is None:
        if accept_embedded_key:
            report.notes.append(EMBEDDED_KEY_ACCEPTED.format(fp=report.fingerprint))
    elif normalise_fingerprint(expected) != report.fingerprint:
        report.problems.append(
            Problem(
                "wrong_key",
                PUBLIC_KEY,
                f"package is signed by key {report.fingerprint}, not the expected {normalise_fingerprint(expected)}",
            )
        )


def _check_files(pkg: _Package, manifest: dict[str, Any], report: PackageReport) -> dict[str, str]:
    """Every listed file present with its hash and size; nothing unlisted. Returns path -> actual hash."""
    actual: dict[str, str] = {}
    listed: set[str] = set()
    for f in manifest.get("files", []):
        path, want, size = str(f.get("path")), f.get("sha256"), f.get("size")
        listed.add(path)
        if path not in pkg.members:
            report.problems.append(
                Problem("file_missing", path, "listed in the manifest but not in the package")
            )
            continue
        got = pkg.digest(path)
        if got is None:
            continue
        report.files_checked += 1
        digest, n = got
        actual[path] = digest
        if digest != want or n != size:
            report.problems.append(
                Problem(
                    "file_altered",
                    path,
                    f"SHA-256 {digest} ({n} bytes) but the signed manifest says {want} ({size} bytes)",
                )
            )
    for name in pkg.members:
        if name not in listed and name not in CONTROL_FILES and name not in pkg.flagged:
            report.problems.append(
                Problem("unlisted_file", name, "in the package but not in the signed manifest (added later)")
            )
    return actual


def _check_sums(pkg: _Package, sums: bytes | None, manifest: dict[str, Any], report: PackageReport) -> None:
    """SHA256SUMS must list exactly the manifest's files plus the manifest itself, with the same hashes."""
    if sums is None:
        return
    try:
        pairs = parse_sha256sums(sums)
    except (ValueError, UnicodeDecodeError) as exc:
        report.problems.append(Problem("sums_unreadable", SUMS, str(exc)))
        return
    expected = {str(f.get("path")): f.get("sha256") for f in manifest.get("files", [])}
    manifest_digest = pkg.digest(MANIFEST)
    if manifest_digest:
        expected[MANIFEST] = manifest_digest[0]
    listed = dict(pairs)
    for path, digest in listed.items():
        if path not in expected:
            report.problems.append(
                Problem("sums_disagree", SUMS, f"lists {path}, which the manifest does not")
            )
        elif expected[path] != digest:
            report.problems.append(
                Problem(
                    "sums_disagree", SUMS, f"gives {path} the hash {digest}, the manifest {expected[path]}"
                )
            )
    for path in expected.keys() - listed.keys():
        report.problems.append(Problem("sums_disagree", SUMS, f"does not list {path}"))


def _check_inclusion(
    log: Any, entries: list[SignedEntry], key: Ed25519PublicKey | None, cpath: str, report: PackageReport
) -> None:
    """Each custody entry was in the service's Merkle log: its inclusion proof (RFC 9162 section
    2.1.3.2) leads to the root of a tree head signed by the service key."""
    if log is None:
        report.notes.append(f"{cpath} carries no inclusion proofs (a package made before the custody log)")
        return
    try:
        head = TreeHead.from_json(log["tree_head"])
        proofs = {int(p["seq"]): p for p in log["inclusion"]}
    except (KeyError, TypeError, ValueError) as exc:
        report.problems.append(Problem("log_proof_unreadable", cpath, f"its log section is malformed: {exc}"))
        return
    if key is not None and not head.signed_by(key):
        report.problems.append(
            Problem(
                "bad_tree_head",
                cpath,
                f"its tree head of {head.tree_size} entries is not signed by {PUBLIC_KEY}",
            )
        )
        return
    root = bytes.fromhex(head.root_hash)
    for e in entries:
        if e.body.digest() != e.entry_hash:
            continue  # already named as altered
        where = f"custody entry #{e.body.seq} ({cpath})"
        p = proofs.get(e.body.seq)
        try:
            path = [bytes.fromhex(h) for h in p["path"]] if p else None
            index = int(p["leaf_index"]) if p else -1
        except (KeyError, TypeError, ValueError):
            path, index = None, -1
        if path is None or index != e.body.seq - 1:
            report.problems.append(Problem("not_in_log", where, "no inclusion proof for this entry"))
        elif not verify_inclusion(index, head.tree_size, leaf_hash(e.body.canonical()), path, root):
            report.problems.append(
                Problem(
                    "not_in_log",
                    where,
                    f"its inclusion proof does not lead to the signed tree head of {head.tree_size} entries "
                    f"(root {head.root_hash}): the entry is not the one the service logged",
                )
            )


def _check_items(
    pkg: _Package,
    manifest: dict[str, Any],
    key: Ed25519PublicKey | None,
    actual: dict[str, str],
    report: PackageReport,
) -> None:
    items = [i for i in manifest.get("items", []) if isinstance(i, dict)]
    by_id = {str(i.get("item_id")): i for i in items}
    stored: dict[str, dict[str, Any]] = {}
    media_hashes = {actual[p] for p in actual if p.startswith("evidence/")}
    listed = {f.get("path") for f in manifest.get("files", []) if isinstance(f, dict)}

    def signed_by_key(signature_b64: str, message: bytes) -> bool:
        return key is not None and verify_signature(key, signature_b64, message)

    # Without a usable key its absence is the one finding: every entry is not also called re-signed.
    verify_sig = signed_by_key if key is not None else None

    for item in items:
        item_id = str(item.get("item_id"))
        report.items_checked += 1
        custody = item.get("custody") or {}
        cpath = str(custody.get("path"))
        raw = pkg.read(cpath)
        if raw is None:
            continue
        try:
            doc = json.loads(raw)
            if doc.get("item_id") != item_id:
                raise ValueError(f"it is the custody of item {doc.get('item_id')}, not {item_id}")
            entries_json: list[dict[str, Any]] = list(doc["entries"])
            entries = [SignedEntry.from_json(e) for e in entries_json]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            report.problems.append(Problem("custody_unreadable", cpath, f"not a custody chain: {exc}"))
            continue
        report.entries_checked += len(entries)
        problems = check_item_chain(item_id, entries, verify_sig)
        for p in problems:
            p.where = f"{p.where} ({cpath})"
        report.problems.extend(problems)
        report.problems.extend(_withheld_as_signed(cpath, entries, custody.get("withheld")))
        if not problems:  # a chain already named broken is not named again for its proofs
            _check_inclusion(doc.get("log"), entries, key, cpath, report)
        _check_viewings(cpath, entries, actual, report)
        tip = entries[-1].entry_hash if entries else None
        if len(entries) != custody.get("entries") or tip != custody.get("tip"):
            report.problems.append(
                Problem(
                    "custody_truncated",
                    cpath,
                    f"holds {len(entries)} entries ending {tip}; the manifest records "
                    f"{custody.get('entries')} ending {custody.get('tip')}",
                )
            )
        details = stored_details(entries_json)
        if details is None:
            report.problems.append(
                Problem("item_unrecorded", f"item {item_id}", "its custody has no 'stored' entry")
            )
            continue
        stored[item_id] = details
        for fld in ("sha256", "size", "kind"):
            if details.get(fld) != item.get(fld):
                report.problems.append(
                    Problem(
                        "item_record_disagrees",
                        f"item {item_id}",
                        f"{fld} is {item.get(fld)!r} in the manifest but {details.get(fld)!r} in the custody record",
                    )
                )
        path = item.get("path")
        if path and path not in listed:
            report.problems.append(
                Problem("file_missing", str(path), f"item {item_id}'s file is not among the manifest's files")
            )
        elif path:
            got = actual.get(str(path))
            if got is not None and got != details.get("sha256"):
                report.problems.append(
                    Problem(
                        "item_hash_disagrees",
                        str(path),
                        f"file hashes to {got} but item {item_id} was stored as {details.get('sha256')}",
                    )
                )
        elif not item.get("withheld_reason"):
            report.problems.append(
                Problem("item_unaccounted", f"item {item_id}", "neither included nor withheld with a reason")
            )

    for item in items:
        item_id = str(item.get("item_id"))
        derived = item.get("derived_from")
        details = stored.get(item_id)
        recorded_origin = details.get("derived_from") if details else None
        if details is not None and recorded_origin != (derived or {}).get("item_id"):
            report.problems.append(
                Problem(
                    "derived_link_disagrees",
                    f"item {item_id}",
                    f"manifest says it was made from {(derived or {}).get('item_id')}, "
                    f"its custody record says {recorded_origin}",
                )
            )
        if not derived:
            continue
        origin_id, origin_hash = str(derived.get("item_id")), derived.get("sha256")
        in_package = origin_hash in media_hashes
        origin_record = stored.get(origin_id)
        in_custody = origin_id in by_id and origin_record is not None
        if origin_record and origin_record.get("sha256") != origin_hash:
            report.problems.append(
                Problem(
                    "original_hash_disagrees",
                    f"item {item_id}",
                    f"made from {origin_id} with SHA-256 {origin_hash}, but that item's custody "
                    f"record stores {origin_record.get('sha256')}",
                )
            )
        elif not in_package and not in_custody:
            report.problems.append(
                Problem(
                    "original_unaccounted",
                    f"item {item_id}",
                    f"made from {origin_id} (SHA-256 {origin_hash}), which is neither in the package "
                    "nor recorded by a custody chain in it",
                )
            )


def _check_viewings(
    cpath: str, entries: list[SignedEntry], actual: dict[str, str], report: PackageReport
) -> None:
    """The package's viewings, each from its ``viewed`` opening to its ``viewing_closed`` seal in the
    one item's chain: a seal carried without its opening (or after it, twice, or for another person
    or purpose) is named; an opening without a seal is noted (open when the package was made); a
    seal's range list (``custody/viewings/<viewing>.txt``) must hash to its ``ranges_sha256``."""
    opens: dict[str, SignedEntry] = {}
    for e in entries:
        viewing = viewing_named(e) if e.withheld is None else None
        if viewing is None:
            continue
        where = f"custody entry #{e.body.seq} ({cpath})"
        if e.body.action == CustodyAction.VIEWED:
            if viewing in opens:
                report.problems.append(
                    Problem(
                        "viewing_opened_twice",
                        where,
                        f"viewing {viewing} was opened by #{opens[viewing].body.seq}",
                    )
                )
            opens[viewing] = e
            continue
        details = json.loads(e.body.details)  # a JSON object: ``viewing_named`` read it
        opening = opens.pop(viewing, None)
        if opening is None:
            report.problems.append(
                Problem(
                    "viewing_seal_unpaired",
                    where,
                    f"seals viewing {viewing}, whose opening 'viewed' entry the package does not carry "
                    "before it (withheld without saying so, or never opened)",
                )
            )
        else:
            opened = json.loads(opening.body.details)
            if (opening.body.actor, opened.get("purpose")) != (details.get("viewer"), details.get("purpose")):
                report.problems.append(
                    Problem(
                        "viewing_seal_unpaired",
                        where,
                        f"seals viewing {viewing} for {details.get('viewer')} ({details.get('purpose')}), "
                        f"but #{opening.body.seq} opened it for {opening.body.actor} ({opened.get('purpose')})",
                    )
                )
        listed = actual.get(viewing_ranges_path(viewing))
        if listed is None:
            report.notes.append(f"viewing {viewing} ({cpath}): the package carries no list of its ranges")
        elif listed != details.get("ranges_sha256"):
            report.problems.append(
                Problem(
                    "viewing_ranges_altered",
                    viewing_ranges_path(viewing),
                    f"hashes to {listed}, but its seal (#{e.body.seq}) says {details.get('ranges_sha256')}",
                )
            )
    for viewing, opening in opens.items():
        report.notes.append(
            f"viewing {viewing} (opened by custody entry #{opening.body.seq}, {cpath}) was not sealed "
            "when the package was made"
        )


def _withheld_as_signed(cpath: str, entries: list[SignedEntry], signed: Any) -> list[Problem]:
    """The entries a package withholds are exactly those its signed manifest lists, hash for hash."""
    listed = {str(k): v for k, v in (signed or {}).items()} if isinstance(signed, dict) else {}
    found = {str(e.body.item_seq): e.entry_hash for e in entries if e.withheld is not None}
    if found == listed:
        return []
    return [
        Problem(
            "custody_withheld_disagrees",
            cpath,
            f"entries withheld here {sorted(found)} are not those the manifest lists {sorted(listed)}",
        )
    ]


def verify_package(
    path: str | Path, key_fingerprint: str | None = None, *, accept_embedded_key: bool = False
) -> PackageReport:
    """Check every hash, both signatures, the signing key, every custody chain and every derivation.

    Without ``key_fingerprint`` the package fails (``no_trusted_key``) unless ``accept_embedded_key``
    says, explicitly, that the key inside the package is to be trusted."""
    report = PackageReport()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        report.problems.append(Problem("package_unreadable", str(path), f"not a readable zip file: {exc}"))
        return report
    with zf:
        with open(path, "rb") as raw:
            for finding in structure_findings(raw, Path(path).stat().st_size, zf.infolist()):
                report.problems.append(Problem(finding.kind, "the package", finding.detail))
        pkg = _Package(zf, report)
        manifest_raw = pkg.read(MANIFEST)
        manifest: dict[str, Any] = {}
        if manifest_raw is not None:
            try:
                manifest = json.loads(manifest_raw)
                if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                    raise ValueError(f"format is not {FORMAT}")
            except (ValueError, UnicodeDecodeError) as exc:
                report.problems.append(Problem("manifest_unreadable", MANIFEST, str(exc)))
                manifest = {}
        report.export_id = manifest.get("export_id")
        key = _load_key(pkg.read(PUBLIC_KEY, 64 * 1024), report)
        _check_key(key, manifest, key_fingerprint, report, accept_embedded_key)
        _check_signature(
            key,
            manifest_raw,
            pkg.read(SIGNATURE, 1024),
            "bad_manifest_signature",
            MANIFEST,
            SIGNATURE,
            report,
        )
        sums = pkg.read(SUMS)
        _check_signature(
            key, sums, pkg.read(SUMS_SIGNATURE, 1024), "bad_sums_signature", SUMS, SUMS_SIGNATURE, report
        )
        if not manifest:
            return report
        try:
            actual = _check_files(pkg, manifest, report)
            _check_sums(pkg, sums, manifest, report)
            _check_items(pkg, manifest, key, actual, report)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            report.problems.append(
                Problem(
                    "manifest_malformed", MANIFEST, f"not laid out as {FORMAT}: {type(exc).__name__}: {exc}"
                )
            )
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m chain_of_custody.package_verify PACKAGE.zip [--key-fingerprint FP]``: for auditors
    who have this package's source and ``cryptography`` but not the service."""
    ap = argparse.ArgumentParser(description="Verify an evidence export package offline.")
    ap.add_argument("package", type=Path)
    ap.add_argument(
        "--key-fingerprint",
        help="SHA-256 fingerprint of the service's signing key, as obtained from the trust (not the package)",
    )
    ap.add_argument(
        "--accept-embedded-key",
        action="store_true",
        help="trust the key inside the package (shows only that the package agrees with itself)",
    )
    args = ap.parse_args(argv)
    report = verify_package(args.package, args.key_fingerprint, accept_embedded_key=args.accept_embedded_key)
    for p in report.problems:
        print(f"FAIL {p}")
    for note in report.notes:
        print(f"NOTE {note}")
    if report.ok:
        print(
            f"OK export {report.export_id}: {report.files_checked} files, {report.items_checked} items and "
            f"{report.entries_checked} custody entries verified; signed by key {report.fingerprint}"
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
