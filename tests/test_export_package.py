"""Export packages: laid out over the media held in the real SeaweedFS, assembled as a download,
verified offline by the project's verifier and by the sha256sum/openssl commands of VERIFY.txt, and
every kind of tampering named (in the package, and in storage under a package)."""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, update

from chain_of_custody import manifest as mf
from chain_of_custody import package_layout as pl
from chain_of_custody.canonical import canonical_json
from chain_of_custody.entries import SignedEntry
from chain_of_custody.evidence import Provenance, read_item, record_evidence
from chain_of_custody.ledger import Ledger
from chain_of_custody.models import CustodyEntry, EvidenceItem
from chain_of_custody.package_verify import verify_package
from chain_of_custody.verify import verify_service
from incidents.export.assemble import assemble, items_read, read_layout
from incidents.export.build import build_package
from incidents.export.media import PackageAltered
from incidents.export.models import ExportJob
from incidents.export.plan import (
    ExportError,
    ExportRequest,
    OriginalsPermission,
    gather_items,
    pin_redactions,
    plan_package,
)
from incidents.export.zip import ZipBuilder
from incidents.retention import RetentionRefused, RetentionRules, delete_by_hand, held_packages, sweep
from storage.digests import Digests
from storage.embedded import EmbeddedSeaweed
from storage.objects import StorageError
from tests.conftest import free_base_port, make_settings
from tests.media import make_test_clip

ROOT = Path(__file__).resolve().parent.parent
INCIDENT = {"id": "inc-test", "reference": "INC-2026-000042", "title": "Assault in A&E", "site": "QEH"}


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def put_evidence(services, path: Path | bytes, prov: Provenance, **entries: Any) -> EvidenceItem:  # type: ignore[no-untyped-def]
    """Store bytes in the real object store and record them through the custody services."""
    retain = datetime.now(UTC) + timedelta(days=1)
    key = f"test/{uuid.uuid4()}"
    if isinstance(path, bytes):
        stored = services.store.put_bytes(key, path, retain_until=retain, content_type=prov.content_type)
    else:
        with open(path, "rb") as f:
            stored = services.store.put_stream(
                key, f, retain_until=retain, content_type=prov.content_type, length=path.stat().st_size
            )
    with services.db.session() as session:
        return record_evidence(session, services.ledger, stored, prov, **entries)


@dataclass
class IncidentEvidence:
    clip: EvidenceItem
    redacted: EvidenceItem
    alarm: EvidenceItem
    memo: EvidenceItem

    @property
    def scope(self) -> list[str]:
        """What an incident links: the original clip, the alarm and the voice memo."""
        return [self.clip.id, self.alarm.id, self.memo.id]


def make_incident_evidence(services, tmp: Path) -> IncidentEvidence:  # type: ignore[no-untyped-def]
    """A real H.264/AAC clip, a real blurred copy of it, an alarm record and an AAC voice memo."""
    start = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    clip_file = make_test_clip(tmp / "clip.mp4", seconds=2)
    clip = put_evidence(
        services,
        clip_file,
        Provenance(
            kind="clip",
            actor="dock:DOCK-1",
            source_device_id="CAM-1",
            wearer="S-1",
            captured_start=start,
            captured_stop=start + timedelta(seconds=2),
            filename="20261122T100000Z_CAM-1.mp4",
            content_type="video/mp4",
        ),
        captured={"camera_serial": "CAM-1"},
        received={"dock": "DOCK-1"},
        verified={"camera_signature": "valid"},
    )
    blurred = tmp / "redacted.mp4"
    ffmpeg(
        "-i",
        str(clip_file),
        "-vf",
        "boxblur=10:1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "copy",
        str(blurred),
    )
    redacted = put_evidence(
        services,
        blurred,
        Provenance(
            kind="redacted_clip",
            actor="service:redaction",
            wearer="S-1",
            filename="20261122T100000Z_CAM-1.redacted.mp4",
            content_type="video/mp4",
            derived_from_id=clip.id,
        ),
    )
    with services.db.session() as session:
        services.ledger.append(
            session, "redacted", "service:redaction", item_id=clip.id, details={"redacted_item": redacted.id}
        )
        # Someone watched the original: a read is a custody entry.
        for _ in read_item(session, services.ledger, services.store, clip, "user:inv", None):
            pass
    alarm_doc = canonical_json(
        {"alarm_id": "A-1", "kind": "sos", "device_id": "LW-1", "raised_at": "2026-11-22T10:00:05Z"}
    )
    alarm = put_evidence(
        services,
        alarm_doc,
        Provenance(
            kind="alarm", actor="device:LW-1", source_device_id="LW-1", content_type="application/json"
        ),
        received={"topic": "lw/v1/LW-1/alarm"},
    )
    memo_file = tmp / "memo.m4a"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:sample_rate=16000",
        "-t",
        "1.5",
        "-c:a",
        "aac",
        str(memo_file),
    )
    memo = put_evidence(
        services,
        memo_file,
        Provenance(kind="voice_memo", actor="device:LW-1", source_device_id="LW-1", content_type="audio/mp4"),
        received={"topic": "lw/v1/LW-1/alarm"},
    )
    return IncidentEvidence(clip, redacted, alarm, memo)


def export(services, item_ids: list[str], originals: OriginalsPermission | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        items = gather_items(session, item_ids)
    request = ExportRequest(
        export_id=str(uuid.uuid4()),
        incident=INCIDENT,
        actor="user:inv",
        retain_until=datetime.now(UTC) + timedelta(days=1),
        originals=originals,
    )
    result = build_package(services.db, services.store, services.ledger, services.key, items, request, **kw)
    # Its job, as the export worker leaves it: ``evidence verify`` checks a package's job.
    with services.db.session() as session:
        session.add(
            ExportJob(
                id=request.export_id,
                incident_id=INCIDENT["id"],
                requested_by=request.actor,
                requester_role="investigator",
                scope="{}",
                status="ready",
                package_sha256=result.package_sha256,
                package_size=result.package_size,
                filename=result.filename,
            )
        )
    return result


def layout_of(services, export_id: str) -> pl.Layout:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        item = session.get(EvidenceItem, export_id)
        session.expunge(item)
    return read_layout(services.store, item)


def download(services, export_id: str, dest: Path) -> Path:  # type: ignore[no-untyped-def]
    """The zip as a recipient gets it: assembled from the stored layout and the media objects."""
    with open(dest, "wb") as f:
        for block in assemble(services.store, layout_of(services, export_id)):
            f.write(block)
    return dest


@dataclass
class Built:
    services: Any
    evidence: IncidentEvidence
    result: Any
    path: Path


@pytest.fixture(scope="module")
def built(seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:  # type: ignore[no-untyped-def]
    from ingest.services import build_services

    tmp = tmp_path_factory.mktemp("export")
    services = build_services(make_settings(tmp, f"sqlite:///{tmp / 'evidence.db'}", seaweed))
    evidence = make_incident_evidence(services, tmp)
    result = export(services, evidence.scope, package_hash=True)
    yield Built(services, evidence, result, download(services, result.export_id, tmp / result.filename))
    services.db.dispose()


# -- helpers to read and rewrite packages ---------------------------------------------------------


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rewrite(src: Path, dest: Path, files: dict[str, bytes]) -> Path:
    """A package with the given contents, written as a forger would (fresh CRCs, same names)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return dest


def flip(data: bytes, at: int | None = None) -> bytes:
    i = len(data) // 2 if at is None else at
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def resign(files: dict[str, bytes], key: Ed25519PrivateKey) -> dict[str, bytes]:
    """Recompute the manifest's file hashes and SHA256SUMS and sign both with ``key``."""
    manifest = json.loads(files[mf.MANIFEST])
    for f in manifest["files"]:
        data = files[f["path"]]
        f["sha256"], f["size"] = hashlib.sha256(data).hexdigest(), len(data)
    body = mf.encode(manifest)
    sums = mf.sha256sums(
        [(f["path"], f["sha256"]) for f in manifest["files"]]
        + [(mf.MANIFEST, hashlib.sha256(body).hexdigest())]
    )
    return {
        **files,
        mf.MANIFEST: body,
        mf.SIGNATURE: key.sign(body),
        mf.SUMS: sums,
        mf.SUMS_SIGNATURE: key.sign(sums),
    }


def kinds_at(report) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {(p.kind, p.where) for p in report.problems}


def item_of(built: Built, item: EvidenceItem) -> dict[str, Any]:
    manifest = json.loads(members(built.path)[mf.MANIFEST])
    return next(i for i in manifest["items"] if i["item_id"] == item.id)


def verify_txt_commands(verify_txt: str) -> list[str]:
    return [line.strip()[2:] for line in verify_txt.splitlines() if line.startswith("    $ ")]


def run_verify_txt(
    directory: Path, fingerprint: str, package_sha256: str | None = None
) -> tuple[bool, list[str]]:
    """Run every command of VERIFY.txt as written, in plain bash, as a reader would; True when each
    succeeds and prints what the text says it must (the trust's fingerprint and package SHA-256,
    no zip comment, no warning, no differing member). ``package_sha256``: the one the trust published
    (the genuine package's, from ``built``)."""
    outputs = []
    ok = True
    for cmd in verify_txt_commands((directory / mf.INSTRUCTIONS).read_text()):
        r = subprocess.run(["bash", "-c", cmd], cwd=directory, capture_output=True, text=True)
        outputs.append(f"$ {cmd}\n{r.stdout}{r.stderr}")
        ok = ok and r.returncode == 0
        printed = r.stdout.split()
        if cmd.startswith("openssl pkey "):
            ok = ok and printed[:1] == [fingerprint]
        elif cmd.startswith("sha256sum ../"):
            ok = ok and package_sha256 is not None and printed[:1] == [package_sha256]
        elif cmd.startswith("unzip -tq "):
            ok = ok and "No errors detected" in r.stdout and "warning" not in (r.stdout + r.stderr)
        elif cmd.startswith("unzip -zq "):
            ok = ok and printed == ["0"]
        elif cmd.startswith("unzip -Z1 "):
            ok = ok and r.stdout == ""
    return ok, outputs


def unzip(path: Path, dest: Path) -> Path:
    """Unpack as VERIFY.txt says: the package file beside the directory, under the name it gives."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["unzip", "-qo", str(path), "-d", str(dest)], stdin=subprocess.DEVNULL, capture_output=True
    )
    name = next(
        line.split(":", 1)[1].strip()
        for line in (dest / mf.INSTRUCTIONS).read_text().splitlines()
        if line.startswith("Package:")
    )
    if path.resolve() != (dest.parent / name).resolve():
        shutil.copy(path, dest.parent / name)
    return dest


# -- the package as built -------------------------------------------------------------------------


def test_package_contents_and_custody(built: Built) -> None:
    s, ev = built.services, built.evidence
    files = members(built.path)
    manifest = json.loads(files[mf.MANIFEST])
    items = {i["item_id"]: i for i in manifest["items"]}
    # Redacted video, alarm and memo are in; the original is withheld but accounted for by hash.
    assert set(built.result.included) == {ev.redacted.id, ev.alarm.id, ev.memo.id}
    assert items[ev.clip.id]["path"] is None and "redacted copy" in items[ev.clip.id]["withheld_reason"]
    red = items[ev.redacted.id]
    assert red["derived_from"] == {"item_id": ev.clip.id, "sha256": ev.clip.sha256, "size": ev.clip.size}
    assert files[red["path"]] == b"".join(s.store.read(ev.redacted.object_key, ev.redacted.version_id))
    listed = {f["path"]: f for f in manifest["files"]}
    for item in (ev.redacted, ev.alarm, ev.memo):
        entry = listed[items[item.id]["path"]]
        assert (entry["sha256"], entry["size"]) == (item.sha256, item.size)
    # Every item's custody chain, the report, the key and its fingerprint are there.
    for item in (ev.clip, ev.redacted, ev.alarm, ev.memo):
        chain = json.loads(files[mf.custody_path(item.id)])["entries"]
        assert [e["item_seq"] for e in chain] == list(range(1, len(chain) + 1))
        assert item.sha256 in files[mf.REPORT].decode()
    assert manifest["signing_key"]["fingerprint_sha256"] == s.key.fingerprint
    assert files[mf.PUBLIC_KEY].decode() == s.key.public_pem
    assert len(files[mf.SIGNATURE]) == 64
    assert "viewed" in files[mf.REPORT].decode() and "user:inv" in files[mf.REPORT].decode()
    # Video is stored, not deflated, and the zip is sound by an independent tool.
    with zipfile.ZipFile(built.path) as zf:
        assert zf.getinfo(red["path"]).compress_type == zipfile.ZIP_STORED
    assert subprocess.run(["unzip", "-tq", str(built.path)], capture_output=True).returncode == 0

    # The package is evidence itself, and every item records that it was exported in it.
    with s.db.session() as session:
        pkg = session.get(EvidenceItem, built.result.export_id)
        assert pkg.kind == "export" and pkg.content_type == pl.CONTENT_TYPE
        assert pkg.sha256 == built.result.stored.sha256  # the item is the stored layout
        zipped = built.path.read_bytes()
        assert built.result.package_sha256 == hashlib.sha256(zipped).hexdigest()
        assert built.result.package_size == len(zipped)
        for item in (ev.clip, ev.redacted, ev.alarm, ev.memo):
            last = session.scalars(
                select(CustodyEntry)
                .where(CustodyEntry.item_id == item.id)
                .order_by(CustodyEntry.item_seq.desc())
            ).first()
            details = json.loads(last.details)
            assert last.action == "exported" and details["export_id"] == built.result.export_id
            assert details["media_included"] == (item.id != ev.clip.id)
        report = verify_service(session, s.store, s.key)
    assert report.ok, report.problems


def test_package_verifies_with_the_project_command(built: Built, tmp_path: Path) -> None:
    report = verify_package(built.path, built.services.key.fingerprint)
    assert report.ok, [str(p) for p in report.problems]
    assert report.items_checked == 4 and report.files_checked == 10 and report.entries_checked == 11
    # The installed command, as VERIFY.txt gives it, run away from the source tree (so that every
    # package it imports must be installed, not merely found in the working directory).
    cli = subprocess.run(
        [
            str(Path(sys.executable).parent / "evidence"),
            "verify",
            str(built.path),
            "--key-fingerprint",
            built.services.key.fingerprint,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "verify", str(built.path), "--key-fingerprint", "ab" * 32],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 1 and "wrong_key" in wrong.stdout
    # The verifier alone, as an auditor without the service runs it: no key given is a failure...
    alone = subprocess.run(
        [sys.executable, "-m", "chain_of_custody.package_verify", str(built.path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert alone.returncode == 1 and "no_trusted_key" in alone.stdout, alone.stdout
    # ...unless the embedded key is accepted in so many words, which is said back to the user.
    accepted = subprocess.run(
        [sys.executable, "-m", "chain_of_custody.package_verify", str(built.path), "--accept-embedded-key"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert accepted.returncode == 0 and f"signed by key {built.services.key.fingerprint}" in accepted.stdout
    assert "--accept-embedded-key was given" in accepted.stdout


def test_verify_txt_commands_work_as_written(built: Built, tmp_path: Path) -> None:
    directory = unzip(built.path, tmp_path / "package")
    commands = verify_txt_commands((directory / mf.INSTRUCTIONS).read_text())
    assert (
        any(c.startswith("sha256sum -c") for c in commands)
        and sum("pkeyutl -verify" in c for c in commands) == 2
    )
    ok, outputs = run_verify_txt(directory, built.services.key.fingerprint, built.result.package_sha256)
    assert ok, "\n".join(outputs)
    joined = "\n".join(outputs)
    assert joined.count("Signature Verified Successfully") == 2
    assert joined.count(": OK") == 11 and "FAILED" not in joined


def test_verifier_needs_neither_database_nor_storage() -> None:
    code = (
        "import sys, chain_of_custody.package_verify\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy','minio','urllib3','storage','psycopg','ingest','incidents'})\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- tampering ------------------------------------------------------------------------------------


def expected_problem(name: str) -> set[tuple[str, str]]:
    """What the verifier must say when one byte of ``name`` changes."""
    if name in (mf.MANIFEST, mf.SIGNATURE):
        return {("bad_manifest_signature", mf.MANIFEST)}
    if name in (mf.SUMS, mf.SUMS_SIGNATURE):
        return {("bad_sums_signature", mf.SUMS)}
    if name == mf.PUBLIC_KEY:
        return {("bad_public_key", name), ("wrong_key", name)}
    return {("file_altered", name)}


def test_one_flipped_byte_in_any_file_is_named(built: Built, tmp_path: Path) -> None:
    files = members(built.path)
    fp = built.services.key.fingerprint
    clean = unzip(built.path, tmp_path / "clean")
    assert run_verify_txt(clean, fp, built.result.package_sha256)[0]
    for name in files:
        # A forger's zip: one byte of one file changed, the zip itself consistent.
        at = None
        if name == mf.PUBLIC_KEY:
            at = files[name].index(b"\n") + 20  # inside the base64 key, not the PEM armour
        bad = rewrite(built.path, tmp_path / "bad.zip", {**files, name: flip(files[name], at)})
        report = verify_package(bad, fp)
        assert kinds_at(report) & expected_problem(name), (name, [str(p) for p in report.problems])
        # The same change is caught by the plain sha256sum/openssl commands of VERIFY.txt.
        directory = tmp_path / f"shell-{name.replace('/', '_')}"
        shutil.copytree(clean, directory)
        target = directory / name
        target.write_bytes(flip(target.read_bytes(), at))
        ok, outputs = run_verify_txt(directory, fp, built.result.package_sha256)
        assert not ok, (name, outputs)


def test_byte_flipped_inside_the_zip_names_the_file_and_its_hash(built: Built, tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    shutil.copy(built.path, bad)
    red_path = item_of(built, built.evidence.redacted)["path"]
    with zipfile.ZipFile(bad) as zf:
        info = zf.getinfo(red_path)
    with open(bad, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        name_len = int.from_bytes(m[info.header_offset + 26 : info.header_offset + 28], "little")
        extra_len = int.from_bytes(m[info.header_offset + 28 : info.header_offset + 30], "little")
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        m[at] ^= 0x01
    report = verify_package(bad, built.services.key.fingerprint)
    problems = {p.kind: p for p in report.problems if p.where == red_path}
    assert set(problems) == {"file_altered", "item_hash_disagrees"}, [str(p) for p in report.problems]
    assert built.evidence.redacted.sha256 in problems["file_altered"].detail


def test_edited_manifest_is_named(built: Built, tmp_path: Path) -> None:
    files = members(built.path)
    manifest = json.loads(files[mf.MANIFEST])
    for item in manifest["items"]:
        if item["item_id"] == built.evidence.clip.id:
            item["withheld_reason"] = "not relevant"
    bad = rewrite(built.path, tmp_path / "bad.zip", {**files, mf.MANIFEST: mf.encode(manifest)})
    report = verify_package(bad, built.services.key.fingerprint)
    assert [p.kind for p in report.problems] == ["bad_manifest_signature", "sums_disagree"], [
        str(p) for p in report.problems
    ]
    assert "manifest.sig is not a valid signature of manifest.json" in str(report.problems[0])


def _custody_edit(
    built: Built, tmp_path: Path, edit: Callable[[list[dict[str, Any]]], None], resign_with_service: bool
):  # type: ignore[no-untyped-def]
    files = members(built.path)
    clip_custody = mf.custody_path(built.evidence.clip.id)
    doc = json.loads(files[clip_custody])
    edit(doc["entries"])
    files = {**files, clip_custody: mf.encode(doc)}
    if resign_with_service:
        # Even a package re-signed by the service itself cannot hide a broken custody chain.
        manifest = json.loads(files[mf.MANIFEST])
        for item in manifest["items"]:
            if item["item_id"] == built.evidence.clip.id:
                item["custody"]["entries"] = len(doc["entries"])
                item["custody"]["tip"] = doc["entries"][-1]["entry_hash"]
        files = resign({**files, mf.MANIFEST: mf.encode(manifest)}, built.services.key.private)
    report = verify_package(rewrite(built.path, tmp_path / "bad.zip", files), built.services.key.fingerprint)
    return report, clip_custody


def test_dropped_custody_entry_is_named(built: Built, tmp_path: Path) -> None:
    clip = built.evidence.clip.id
    report, path = _custody_edit(built, tmp_path, lambda e: e.pop(1), resign_with_service=False)
    found = kinds_at(report)
    assert ("file_altered", path) in found and ("custody_truncated", path) in found
    assert ("entry_missing_or_reordered", f"custody entry 2 of item {clip} ({path})") in found

    report, path = _custody_edit(built, tmp_path, lambda e: e.pop(1), resign_with_service=True)
    assert {p.kind for p in report.problems} == {"entry_missing_or_reordered", "chain_broken"}, [
        str(p) for p in report.problems
    ]
    assert f"custody entry 2 of item {clip}" in str(report.problems[0])


def test_reordered_custody_entries_are_named(built: Built, tmp_path: Path) -> None:
    clip = built.evidence.clip.id

    def swap(entries: list[dict[str, Any]]) -> None:
        entries[1], entries[2] = entries[2], entries[1]

    report, path = _custody_edit(built, tmp_path, swap, resign_with_service=True)
    found = kinds_at(report)
    assert ("entry_missing_or_reordered", f"custody entry 2 of item {clip} ({path})") in found
    assert ("entry_missing_or_reordered", f"custody entry 3 of item {clip} ({path})") in found
    assert {k for k, _ in found} == {"entry_missing_or_reordered", "chain_broken"}


def test_edited_custody_entry_is_named(built: Built, tmp_path: Path) -> None:
    def edit(entries: list[dict[str, Any]]) -> None:
        entries[0]["actor"] = "dock:SOMEONE-ELSE"

    report, path = _custody_edit(built, tmp_path, edit, resign_with_service=True)
    first = json.loads(members(built.path)[path])["entries"][0]["seq"]
    assert kinds_at(report) == {("entry_altered", f"custody entry #{first} ({path})")}, [
        str(p) for p in report.problems
    ]


def test_resigned_with_another_key_is_named(built: Built, tmp_path: Path) -> None:
    files = members(built.path)
    fp = built.services.key.fingerprint
    other = Ed25519PrivateKey.generate()
    other_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_fp = hashlib.sha256(
        other.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).hexdigest()

    # Signature made with another key, the service's public key left in place.
    bad = rewrite(built.path, tmp_path / "a.zip", {**files, mf.SIGNATURE: other.sign(files[mf.MANIFEST])})
    assert [p.kind for p in verify_package(bad, fp).problems] == ["bad_manifest_signature"]

    # Everything re-signed with another key and its public key swapped in.
    manifest = json.loads(files[mf.MANIFEST])
    manifest["signing_key"]["fingerprint_sha256"] = other_fp
    forged = resign({**files, mf.MANIFEST: mf.encode(manifest), mf.PUBLIC_KEY: other_pem}, other)
    bad = rewrite(built.path, tmp_path / "b.zip", forged)
    report = verify_package(bad, fp)
    kinds = {p.kind for p in report.problems}
    assert kinds == {"wrong_key", "bad_signature"}, [str(p) for p in report.problems]
    assert f"signed by key {other_fp}, not the expected {fp}" in str(report.problems[0])
    # Without the expected fingerprint the custody entries still give it away: they carry the service's signatures.
    assert {p.kind for p in verify_package(bad).problems} == {"no_trusted_key", "bad_signature"}

    # Custody entries re-signed too: only the fingerprint can tell, and the verifier says which key signed.
    for item in manifest["items"]:
        path = item["custody"]["path"]
        doc = json.loads(forged[path])
        doc.pop("log")  # the log's tree head is the service's: the forger can only leave it out
        for e in doc["entries"]:
            body = {k: v for k, v in e.items() if k not in ("entry_hash", "signature")}
            e["signature"] = base64.b64encode(other.sign(canonical_json({"v": 1, **body}))).decode()
        forged[path] = mf.encode(doc)
    bad = rewrite(built.path, tmp_path / "c.zip", resign(forged, other))
    assert [p.kind for p in verify_package(bad, fp).problems] == ["wrong_key"]
    assert [p.kind for p in verify_package(bad).problems] == ["no_trusted_key"]
    unchecked = verify_package(bad, accept_embedded_key=True)
    assert unchecked.ok and unchecked.fingerprint == other_fp != fp


def forge_custody(
    doc: dict[str, Any], key: Ed25519PrivateKey, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Edit each entry of a custody document with ``edit``, then rehash, relink and re-sign the chain
    with ``key``: what a forger who holds a key of their own can do to any chain."""
    prev = None
    for e in doc["entries"]:
        edit(e)
        e["item_prev_hash"] = prev
        body = {k: v for k, v in e.items() if k not in ("entry_hash", "signature")}
        message = canonical_json({"v": 1, **body})
        e["entry_hash"] = hashlib.sha256(message).hexdigest()
        e["signature"] = base64.b64encode(key.sign(message)).decode()
        prev = e["entry_hash"]


def test_original_swapped_in_under_a_new_key_needs_the_trusted_fingerprint(
    built: Built, tmp_path: Path
) -> None:
    """The attack: the unredacted original put where the redacted copy was, every record made to
    agree, and the whole package re-signed with a key of the forger's own. Only a fingerprint obtained
    from the trust tells it apart, so verifying without one must fail."""
    s, ev = built.services, built.evidence
    files = members(built.path)
    manifest = json.loads(files[mf.MANIFEST])
    original = b"".join(s.store.read(ev.clip.object_key, ev.clip.version_id))
    digest = hashlib.sha256(original).hexdigest()
    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    other_fp = hashlib.sha256(raw).hexdigest()
    red = next(i for i in manifest["items"] if i["item_id"] == ev.redacted.id)
    forged = {**files, red["path"]: original}
    red["sha256"], red["size"] = digest, len(original)

    def swap(entry: dict[str, Any]) -> None:
        if entry["action"] == "stored":
            entry["details"]["sha256"], entry["details"]["size"] = digest, len(original)
            entry["details"].pop("blake3", None)

    for item in manifest["items"]:
        doc = json.loads(files[item["custody"]["path"]])
        doc.pop("log")  # the log's tree head is the service's: the forger can only leave it out
        forge_custody(doc, other, swap if item["item_id"] == ev.redacted.id else lambda e: None)
        forged[item["custody"]["path"]] = mf.encode(doc)
        item["custody"]["tip"] = doc["entries"][-1]["entry_hash"]
    manifest["signing_key"]["fingerprint_sha256"] = other_fp
    forged[mf.MANIFEST] = mf.encode(manifest)
    forged[mf.PUBLIC_KEY] = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bad = rewrite(built.path, tmp_path / "forged.zip", resign(forged, other))

    # The forgery agrees with itself: the embedded key, accepted explicitly, finds nothing wrong...
    assert verify_package(bad, accept_embedded_key=True).ok
    # ...so without a trusted key it must fail, and with the trust's fingerprint it is named.
    assert [p.kind for p in verify_package(bad).problems] == ["no_trusted_key"]
    assert [p.kind for p in verify_package(bad, s.key.fingerprint).problems] == ["wrong_key"]
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "evidence"), "verify", str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1 and "no_trusted_key" in cli.stdout, cli.stdout + cli.stderr
    # VERIFY.txt, followed as written, sends the reader to the trust for the fingerprint: the
    # forger's key prints its own, which differs from the trust's.
    directory = unzip(bad, tmp_path / "forged")
    text = (directory / mf.INSTRUCTIONS).read_text()
    assert s.key.fingerprint not in text and "/.well-known/evidence-signing-key" in text
    assert not run_verify_txt(directory, s.key.fingerprint)[0]


def test_original_missing_from_the_package_is_named(built: Built, tmp_path: Path) -> None:
    files = members(built.path)
    clip = built.evidence.clip.id
    manifest = json.loads(files[mf.MANIFEST])
    manifest["items"] = [i for i in manifest["items"] if i["item_id"] != clip]
    manifest["files"] = [f for f in manifest["files"] if f["path"] != mf.custody_path(clip)]
    files = {k: v for k, v in files.items() if k != mf.custody_path(clip)}
    bad = rewrite(
        built.path,
        tmp_path / "bad.zip",
        resign({**files, mf.MANIFEST: mf.encode(manifest)}, built.services.key.private),
    )
    report = verify_package(bad, built.services.key.fingerprint)
    assert [(p.kind, p.where) for p in report.problems] == [
        ("original_unaccounted", f"item {built.evidence.redacted.id}")
    ]
    assert built.evidence.clip.sha256 in report.problems[0].detail


def test_added_file_is_named(built: Built, tmp_path: Path) -> None:
    files = members(built.path)
    bad = rewrite(built.path, tmp_path / "bad.zip", {**files, "evidence/extra.mp4": b"planted"})
    assert [(p.kind, p.where) for p in verify_package(bad, built.services.key.fingerprint).problems] == [
        ("unlisted_file", "evidence/extra.mp4")
    ]


def _append_members(src: Path, dest: Path, members: list[tuple[str, bytes]], comment: bytes = b"") -> Path:
    """The genuine zip with members added after its own (and a comment), as ``zipfile`` appends them."""
    shutil.copy(src, dest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: that is the point
        with zipfile.ZipFile(dest, "a") as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, date_time=(2026, 11, 22, 10, 0, 0)), data)
            if comment:
                zf.comment = comment
    return dest


def tamperings(built: Built, tmp: Path) -> dict[str, tuple[Path, set[str]]]:
    """Each way found to smuggle something into a genuine, correctly signed package: the tampered
    file and what the verifier must call it."""
    ev, genuine = built.evidence, built.path
    original = b"".join(built.services.store.read(ev.clip.object_key, ev.clip.version_id))
    red_path = item_of(built, ev.redacted)["path"]
    head, tail = red_path.rsplit("/", 1)
    out: dict[str, tuple[Path, set[str]]] = {}

    def case(name: str, kinds: set[str], members: list[tuple[str, bytes]], comment: bytes = b"") -> None:
        out[name] = (_append_members(genuine, tmp / f"{name}.zip", members, comment), kinds)

    case("directory_member", {"directory_member"}, [(f"evidence/{ev.redacted.id}/hidden.mp4/", original)])
    case("unlisted_copy", {"unlisted_file"}, [(f"evidence/{ev.clip.id}/original.mp4", original)])
    case("climbs_out", {"unsafe_path"}, [("../../x.mp4", original)])
    case("case_variant", {"case_variant"}, [(f"{head}/{tail.upper()}", original)])
    case("duplicate", {"duplicate_file"}, [(red_path, original)])
    case("zip_comment", {"zip_comment"}, [], comment=b"the original is at https://example.invalid/x")
    prepended = tmp / "prepended.zip"
    prepended.write_bytes(original[:4096] + genuine.read_bytes())
    out["prepended"] = (prepended, {"bytes_before_zip"})
    appended = tmp / "appended.zip"
    appended.write_bytes(genuine.read_bytes() + original[:4096])
    out["appended"] = (appended, {"bytes_after_zip"})
    return out


def test_package_holds_exactly_what_its_manifest_lists(built: Built, tmp_path: Path) -> None:
    """Every tampering found by hand is refused by the verifier, named once, and by VERIFY.txt's
    procedure run exactly as written; the genuine package passes both."""
    fp, published = built.services.key.fingerprint, built.result.package_sha256
    assert verify_package(built.path, fp).ok
    assert run_verify_txt(unzip(built.path, tmp_path / "genuine" / "package"), fp, published)[0]
    for name, (bad, kinds) in tamperings(built, tmp_path).items():
        report = verify_package(bad, fp)
        assert {p.kind for p in report.problems} == kinds, (name, [str(p) for p in report.problems])
        assert len(report.problems) == 1, (name, [str(p) for p in report.problems])
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "evidence"), "verify", str(bad), "--key-fingerprint", fp],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 1 and all(k in cli.stdout for k in kinds), (name, cli.stdout)
        directory = unzip(bad, tmp_path / name / "package")
        ok, outputs = run_verify_txt(directory, fp, published)
        assert not ok, (name, "\n".join(outputs))
        # And without the whole-file hash (a reader who skips step 0), the member steps alone catch it,
        # except bytes after the zip's end, which only the published SHA-256 shows.
        if name != "appended":
            ok, outputs = run_verify_txt(directory, fp, _own_hash(bad))
            assert not ok, (name, "member steps passed", "\n".join(outputs))


def _own_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_custody_entries_carry_inclusion_proofs_against_a_stored_tree_head(
    built: Built, tmp_path: Path
) -> None:
    from chain_of_custody.merkle import leaf_hash, verify_inclusion
    from chain_of_custody.signed_tree_head import TreeHead
    from chain_of_custody.tree_heads import read_tree_heads

    s = built.services
    files = members(built.path)
    stored, _ = read_tree_heads(s.store, s.key)
    path = mf.custody_path(built.evidence.clip.id)
    doc = json.loads(files[path])
    head = TreeHead.from_json(doc["log"]["tree_head"])
    assert head in stored and head.signed_by(s.key.public)  # the one in write-once storage
    for e, proof in zip(doc["entries"], doc["log"]["inclusion"], strict=True):
        leaf = leaf_hash(SignedEntry.from_json(e).body.canonical())
        path_ = [bytes.fromhex(h) for h in proof["path"]]
        assert verify_inclusion(e["seq"] - 1, head.tree_size, leaf, path_, bytes.fromhex(head.root_hash))

    # A proof that does not lead to the root, or a tree head not signed by the key, is named, even
    # in a package re-signed with the genuine key.
    bad_proof = json.loads(files[path])
    bad_proof["log"]["inclusion"][0]["path"][0] = "00" * 32
    bad_head = json.loads(files[path])
    bad_head["log"]["tree_head"]["tree_size"] += 1
    for doc_, kind in ((bad_proof, "not_in_log"), (bad_head, "bad_tree_head")):
        forged = resign({**files, path: mf.encode(doc_)}, s.key.private)
        report = verify_package(rewrite(built.path, tmp_path / f"{kind}.zip", forged), s.key.fingerprint)
        assert [p.kind for p in report.problems] == [kind], [str(p) for p in report.problems]


@pytest.mark.parametrize("missing", [mf.PUBLIC_KEY, mf.MANIFEST])
def test_a_missing_control_file_is_named_once(built: Built, tmp_path: Path, missing: str) -> None:
    """Without the key no signature can be checked, and without the manifest nothing can be checked
    against it: each is one finding, not one for every entry (or a manifest that "names None")."""
    files = {k: v for k, v in members(built.path).items() if k != missing}
    bad = rewrite(built.path, tmp_path / "bad.zip", files)
    report = verify_package(bad, built.services.key.fingerprint)
    assert [(p.kind, p.where) for p in report.problems] == [("file_missing", missing)], [
        str(p) for p in report.problems
    ]
    assert "None" not in str(report.problems[0])
    cli = subprocess.run(
        [
            str(Path(sys.executable).parent / "evidence"),
            "verify",
            str(bad),
            "--key-fingerprint",
            built.services.key.fingerprint,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1 and cli.stdout.count("FAIL") == 1, cli.stdout


def test_not_a_package(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    assert [p.kind for p in verify_package(junk).problems] == ["package_unreadable"]


# -- originals and refusals -----------------------------------------------------------------------


def test_originals_need_a_reason_and_are_recorded(built: Built, tmp_path: Path) -> None:
    s, ev = built.services, built.evidence
    with pytest.raises(ExportError, match="reason"):
        export(s, ev.scope, OriginalsPermission("user:boss", "security_manager", "  "))
    result = export(s, ev.scope, OriginalsPermission("user:boss", "security_manager", "CPS request 7781"))
    assert ev.clip.id in result.included and ev.redacted.id in result.included
    assert result.package_sha256 is None  # by default the pass checks items only (two at a time)
    path = download(s, result.export_id, tmp_path / "with-originals.zip")
    assert layout_of(s, result.export_id).size == path.stat().st_size == result.package_size
    assert verify_package(path, s.key.fingerprint).ok
    manifest = json.loads(members(path)[mf.MANIFEST])
    assert manifest["originals"] == {
        "included": True,
        "authorised_by": "user:boss",
        "authorised_role": "security_manager",
        "reason": "CPS request 7781",
    }
    with s.db.session() as session:
        last = session.scalars(
            select(CustodyEntry)
            .where(CustodyEntry.item_id == ev.clip.id)
            .order_by(CustodyEntry.item_seq.desc())
        ).first()
    details = json.loads(last.details)
    assert last.action == "exported" and details["original_footage"] is True
    assert details["reason"] == "CPS request 7781" and details["authorised_by"] == "user:boss"


def put_mismatched(services, data: bytes, recorded: bytes, *, blake3_kept: bool = True) -> EvidenceItem:  # type: ignore[no-untyped-def]
    """An item whose stored object holds ``data`` while its row and custody record (which agree) hold
    the digests of ``recorded``: an object swapped or altered at rest. ``blake3_kept=False`` records
    it as items stored before BLAKE3 was kept (SHA-256 only)."""
    stored = services.store.put_bytes(
        f"test/{uuid.uuid4()}",
        data,
        retain_until=datetime.now(UTC) + timedelta(days=1),
        content_type="audio/ogg",
    )
    d = Digests()
    d.update(recorded)
    sha, b3 = d.hexdigests()
    claimed = replace(stored, sha256=sha, blake3=b3 if blake3_kept else None, size=len(recorded))
    with services.db.session() as session:
        return record_evidence(session, services.ledger, claimed, Provenance(kind="voice_memo", actor="test"))


def custody_count(services) -> int:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        return session.scalar(select(func.count()).select_from(CustodyEntry)) or 0


def assert_nothing_exported(services, before: int) -> None:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(CustodyEntry)) == before
        exports = set(session.scalars(select(EvidenceItem.id).where(EvidenceItem.kind == "export")))
    stored = {
        k.removeprefix("exports/").removesuffix(".layout") for k in services.store.list_keys("exports/")
    }
    assert stored == exports  # no package was stored for the refused export


@pytest.mark.parametrize("blake3_kept", [True, False], ids=["blake3", "sha256-only"])
def test_altered_stored_object_is_never_exported_and_no_object_is_completed(
    built: Built, blake3_kept: bool
) -> None:
    """A large item first (read whole before the bad one), then an item whose bytes no longer match
    its record: checked with BLAKE3 where the record has it, with SHA-256 for older items."""
    s = built.services
    big = put_evidence(s, os.urandom(12 * 1024 * 1024), Provenance(kind="voice_memo", actor="test"))
    recorded = os.urandom(300_000)
    flipped = bytes([recorded[0] ^ 1]) + recorded[1:]
    bad = put_mismatched(s, flipped, recorded, blake3_kept=blake3_kept)
    assert (bad.blake3 is not None) == blake3_kept
    before = custody_count(s)
    d = Digests()
    d.update(flipped)
    found = d.hexdigests()[0 if not blake3_kept else 1]
    algorithm = "BLAKE3" if blake3_kept else "SHA-256"
    with pytest.raises(ExportError, match=f"{bad.id} hashes to {algorithm} {found} "):
        export(s, [big.id, bad.id])
    # Nothing exported; the altered item is quarantined (one custody entry, naming the digest).
    assert_nothing_exported(s, before + 1)
    with s.db.session() as session:
        row = session.get(EvidenceItem, bad.id)
        assert row is not None and row.status == "quarantined"
        assert row.quarantine_reason.startswith(f"stored object hashes to {algorithm} {found} ")
        intact = session.get(EvidenceItem, big.id)
        assert intact is not None and intact.status == "stored"


def test_row_that_disagrees_with_its_custody_record_is_never_exported(built: Built) -> None:
    """The media are checked against the row's digests, so the row must say what the signed custody
    record says: an edited hash, size or object in the database is refused before any media are read."""
    s, ev = built.services, built.evidence
    before = custody_count(s)
    for column, value in (
        ("sha256", "0" * 64),
        ("blake3", "1" * 64),
        ("size", 7),
        ("object_key", ev.clip.object_key),
        ("version_id", ev.clip.version_id),
    ):
        with s.db.session() as session:
            session.execute(update(EvidenceItem).where(EvidenceItem.id == ev.memo.id).values({column: value}))
        try:
            with pytest.raises(
                ExportError,
                match=f"evidence item {ev.memo.id}: {column} is .* in the database but .* in the custody record",
            ):
                export(s, [ev.clip.id, ev.memo.id])
        finally:
            with s.db.session() as session:
                session.execute(
                    update(EvidenceItem)
                    .where(EvidenceItem.id == ev.memo.id)
                    .values({column: getattr(ev.memo, column)})
                )
    assert_nothing_exported(s, before)


@pytest.mark.parametrize("rehashed", [False, True], ids=["entry_altered", "bad_signature"])
def test_stored_entry_edited_with_the_row_is_never_exported(built: Built, rehashed: bool) -> None:
    """Someone swaps an object and writes its BLAKE3 into both the row and the 'stored' custody
    entry: the entry no longer matches its hash, or, re-hashed, its signature, so the export stops."""
    s, ev = built.services, built.evidence
    forged = "2" * 64
    with s.db.session() as session:
        entry = session.scalars(
            select(CustodyEntry).where(CustodyEntry.item_id == ev.memo.id, CustodyEntry.action == "stored")
        ).one()
        original, original_hash = entry.details, entry.entry_hash
        details = json.loads(original)
        details["blake3"] = forged
        entry.details = canonical_json(details).decode()
        if rehashed:
            signed = Ledger.item_entries(session, ev.memo.id)
            body = next(e for e in signed if e.body.action == "stored").body
            entry.entry_hash = replace(body, details=entry.details).digest()
        session.execute(update(EvidenceItem).where(EvidenceItem.id == ev.memo.id).values(blake3=forged))
    before = custody_count(s)
    try:
        with pytest.raises(
            ExportError,
            match=f"evidence item {ev.memo.id}: its 'stored' custody entry fails its check .*"
            + ("bad_signature" if rehashed else "entry_altered"),
        ):
            export(s, [ev.clip.id, ev.memo.id])
    finally:
        with s.db.session() as session:
            session.execute(
                update(CustodyEntry)
                .where(CustodyEntry.item_id == ev.memo.id, CustodyEntry.action == "stored")
                .values(details=original, entry_hash=original_hash)
            )
            session.execute(
                update(EvidenceItem).where(EvidenceItem.id == ev.memo.id).values(blake3=ev.memo.blake3)
            )
    assert_nothing_exported(s, before)
    assert ev.memo.id in export(s, [ev.clip.id, ev.memo.id]).included  # restored: exported again


def test_items_stored_before_blake3_export_and_verify(built: Built, tmp_path: Path) -> None:
    """An item recorded with SHA-256 only is checked with SHA-256 at build and download, beside items
    checked with BLAKE3, and the package verifies offline."""
    s = built.services
    data = os.urandom(2 * 1024 * 1024)
    legacy = put_mismatched(s, data, data, blake3_kept=False)
    assert legacy.blake3 is None
    result = export(s, [legacy.id, built.evidence.memo.id])
    layout = layout_of(s, result.export_id)
    assert {m.item_id: m.blake3 is None for m in layout.media} == {
        legacy.id: True,
        built.evidence.memo.id: False,
    }
    report = verify_package(download(s, result.export_id, tmp_path / "p.zip"), built.services.key.fingerprint)
    assert report.ok, [str(p) for p in report.problems]


def test_plan_takes_the_pinned_or_latest_redaction_and_withholds_the_rest() -> None:
    t0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

    def item(kind: str, n: int, derived: str | None = None, status: str = "stored") -> EvidenceItem:
        return EvidenceItem(
            id=f"{kind}-{n}",
            kind=kind,
            status=status,
            derived_from_id=derived,
            created_at=t0 + timedelta(minutes=n),
        )

    clip, old, old_rec = (
        item("clip", 0),
        item("redacted_clip", 1, "clip-0"),
        item("redaction_record", 2, "clip-0"),
    )
    new, new_rec = item("redacted_clip", 3, "clip-0"), item("redaction_record", 4, "clip-0")
    bare, memo, gone = item("clip", 5), item("voice_memo", 6), item("alarm", 7, status="deleted")
    items = [clip, old, old_rec, new, new_rec, bare, memo, gone, item("export", 8)]
    describes = {old_rec.id: old.id, new_rec.id: new.id}

    reasons = {p.item.id: p.withheld_reason for p in plan_package(items, None, describes)}
    assert {i for i, r in reasons.items() if r is None} == {new.id, new_rec.id, memo.id}
    assert reasons[clip.id] == f"original footage; its redacted copy {new.id} is included"
    assert reasons[bare.id] == "original footage with no redacted copy chosen for this package"
    assert (
        reasons[old.id]
        == f"not the redaction this package holds ({new.id} is: the latest redaction of the clip)"
    )
    assert reasons[old_rec.id] == f"describes the redaction {old.id}, not the one this package holds"
    assert "deleted" in reasons[gone.id] and reasons["export-8"] == "an earlier export package"

    # Asked for before the later version was made: the earlier one, whatever is made afterwards.
    asked = pin_redactions(items, (), t0 + timedelta(minutes=2))
    plan = {p.item.id: p for p in plan_package(items, None, describes, pins=asked)}
    assert {i for i, p in plan.items() if p.include_media} == {old.id, old_rec.id, memo.id}
    assert plan[old.id].chosen and plan[old.id].chosen.startswith("the latest redaction of the clip when")
    assert f"({old.id} is:" in str(plan[new.id].withheld_reason)
    # Named by the exporter: that version, even when a later one existed at the time.
    named = pin_redactions(items, [old.id], t0 + timedelta(minutes=9))
    plan = {p.item.id: p for p in plan_package(items, None, describes, pins=named)}
    assert {i for i, p in plan.items() if p.include_media} == {old.id, old_rec.id, memo.id}
    assert plan[old.id].chosen == "chosen by the exporter when the export was asked for"
    with pytest.raises(ExportError, match="choose one redacted copy"):
        pin_redactions(items, [old.id, new.id], t0 + timedelta(minutes=9))

    permitted = plan_package(
        items, OriginalsPermission("user:boss", "security_manager", "court order 12"), describes
    )
    assert {p.item.id for p in permitted if p.include_media} == {
        clip.id,
        new.id,
        new_rec.id,
        bare.id,
        memo.id,
    }


def test_malformed_manifest_is_a_finding_not_a_crash(built: Built, tmp_path: Path) -> None:
    files = members(built.path)
    manifest = json.loads(files[mf.MANIFEST])
    manifest["files"] = ["not", "objects"]
    bad = rewrite(built.path, tmp_path / "bad.zip", {**files, mf.MANIFEST: mf.encode(manifest)})
    kinds = [p.kind for p in verify_package(bad, built.services.key.fingerprint).problems]
    assert kinds[0] == "bad_manifest_signature" and "manifest_malformed" in kinds


# -- the zip's bytes and assembling on download ----------------------------------------------------


class _Sink:
    """A stream zipfile cannot seek; keeps what is written except the blocks named in ``skip``."""

    def __init__(self, skip: bytes = b"") -> None:
        self.data = bytearray()
        self.skip = skip
        self.skipped = 0

    def write(self, b: bytes) -> int:
        if self.skip and b is self.skip:
            self.skipped += len(b)
        else:
            self.data += b
        return len(b)

    def flush(self) -> None:
        pass


def _zipfile_writes(sink: _Sink, members: list[tuple[zipfile.ZipInfo, list[bytes]]]) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:  # type: ignore[arg-type]
        for like, blocks in members:
            info = zipfile.ZipInfo(like.filename, date_time=like.date_time)
            info.compress_type, info.external_attr = like.compress_type, like.external_attr
            info.file_size = sum(len(b) for b in blocks)
            with zf.open(info, "w") as w:
                for b in blocks:
                    w.write(b)
        return zf.infolist()


def test_package_is_byte_for_byte_what_zipfile_writes(built: Built) -> None:
    with zipfile.ZipFile(built.path) as zf:
        members_ = [(i, [zf.read(i)]) for i in zf.infolist()]
    sink = _Sink()
    _zipfile_writes(sink, members_)
    assert bytes(sink.data) == built.path.read_bytes()


def test_zip64_sizes_and_offsets_match_zipfile() -> None:
    """A 5 GiB member (ZIP64 sizes) and members after it (ZIP64 offsets and end records)."""
    when = datetime(2026, 11, 22, 10, 0, 7)
    zeros = bytes(64 * 1024 * 1024)
    big = [zeros] * 80
    like = zipfile.ZipInfo("evidence/big.mp4", date_time=when.timetuple()[:6])
    like.compress_type, like.external_attr = zipfile.ZIP_STORED, 0o644 << 16
    small = zipfile.ZipInfo("manifest.json", date_time=like.date_time)
    small.compress_type, small.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
    sink = _Sink(skip=zeros)
    infos = _zipfile_writes(sink, [(like, big), (small, [b'{"a": 1}' * 100])])
    assert sink.skipped == 80 * len(zeros) and infos[1].header_offset > 2**32

    z = ZipBuilder(when)
    ours = z.header("evidence/big.mp4", 80 * len(zeros), stored=True)
    ours += z.descriptor(infos[0].CRC, 80 * len(zeros), 80 * len(zeros))
    ours += z.deflated("manifest.json", b'{"a": 1}' * 100) + z.end()
    assert ours == bytes(sink.data) and b"PK\x06\x06" in ours
    assert z.pos == len(ours) + 80 * len(zeros)


def test_downloads_are_identical_and_ranges_stitch(built: Built) -> None:
    s = built.services
    layout = layout_of(s, built.result.export_id)
    whole = built.path.read_bytes()
    assert layout.size == len(whole) and layout.sha256 == hashlib.sha256(whole).hexdigest()
    assert b"".join(assemble(s.store, layout)) == whole  # a second download, the same bytes
    media = layout.media
    assert [m.item_id for m in media] == [
        built.evidence.redacted.id,
        built.evidence.alarm.id,
        built.evidence.memo.id,
    ]
    first, last = media[0], media[-1]
    cuts = sorted(
        {
            0,
            1,
            first.start - 3,  # inside the first local header
            first.start + 7,  # inside the first media member
            first.start + first.length - 1,  # one byte before the member's end
            last.start + 5,
            last.start + last.length + 5,  # inside a data descriptor
            len(whole) - 22,  # the end record
            len(whole),
        }
    )
    parts = [b"".join(assemble(s.store, layout, a, b - 1)) for a, b in zip(cuts, cuts[1:], strict=False)]
    for (a, b), part in zip(zip(cuts, cuts[1:], strict=False), parts, strict=True):
        assert part == whole[a:b], (a, b)
    assert b"".join(parts) == whole
    assert items_read(layout, 0, first.start - 1) == []
    assert items_read(layout, first.start + first.length - 1, last.start) == [m.item_id for m in media]
    assert items_read(layout, len(whole) - 22) == []


def test_altered_media_breaks_the_download_off(built: Built) -> None:
    """An object that no longer matches what the package recorded: the hook hears of it, the stream
    raises, and the member's last block never leaves, so what arrived never looks whole."""
    s = built.services
    layout = layout_of(s, built.result.export_id)
    target = layout.media[0]
    assert target.blake3 is not None  # checked with BLAKE3, the digest recorded beside the SHA-256
    expecting_other = replace(
        layout,
        segments=tuple(replace(g, blake3="0" * 64) if g is target else g for g in layout.segments),
    )
    heard: list[tuple[str, str, str, int]] = []
    got = bytearray()
    with pytest.raises(PackageAltered, match=f"{target.item_id} hashes to BLAKE3 {target.blake3} "):
        for block in assemble(
            s.store,
            expecting_other,
            on_altered=lambda g, check: heard.append((g.item_id, check.algorithm, check.found, check.size)),
        ):
            got += block
    assert heard == [(target.item_id, "BLAKE3", target.blake3, target.length)]
    assert target.start <= len(got) < target.start + target.length
    assert bytes(got) == built.path.read_bytes()[: len(got)]


def test_altered_package_layout_is_refused(built: Built) -> None:
    s = built.services
    with s.db.session() as session:
        item = session.get(EvidenceItem, built.result.export_id)
        session.expunge(item)
    with pytest.raises(PackageAltered, match="hashes to"):
        read_layout(s.store, replace_item(item, sha256="1" * 64))


def replace_item(item: EvidenceItem, **values: Any) -> EvidenceItem:
    copy = EvidenceItem(**{c.name: getattr(item, c.name) for c in EvidenceItem.__table__.columns})
    for k, v in values.items():
        setattr(copy, k, v)
    return copy


@pytest.fixture
def private_seaweed(tmp_path: Path) -> Iterator[EmbeddedSeaweed]:
    """A store of its own: damaging a volume on disk must not break the session's shared store."""
    store = EmbeddedSeaweed(tmp_path / "own-s3", free_base_port(), "512MiB")
    store.start()
    yield store
    store.kill()  # thrown away with tmp_path: no graceful stop (about 2 s)


def _match_needle_checksum(seaweed: EmbeddedSeaweed, data: bytes, altered: bytes) -> None:
    """Replace the CRC-32C of ``data`` kept after the needle holding ``altered`` with that of
    ``altered`` (in whichever of SeaweedFS's two forms it is kept)."""
    from tests.test_altered_evidence import _crc32c, _masked

    old, new = _crc32c(data), _crc32c(altered)
    done = False
    for dat in Path(seaweed.data_dir).rglob("*.dat"):
        with open(dat, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            at = m.find(altered)
            if at < 0:
                continue
            end = at + len(altered)
            for form in (lambda c: c, _masked):
                found = m.find(form(old).to_bytes(4, "big"), end, end + 1024)
                if found >= 0:
                    m[found : found + 4] = form(new).to_bytes(4, "big")
                    done = True
    assert done, "altered object bytes and their needle checksum not found on the volume"


def test_object_altered_at_rest_under_a_package(tmp_path: Path, private_seaweed: EmbeddedSeaweed) -> None:
    """Bytes of a packaged item changed on the storage server's disk: no download completes."""
    from ingest.services import build_services
    from tests.test_altered_evidence import flip_on_disk

    s = build_services(make_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", private_seaweed))
    marker = b"EVIDENCE-UNDER-PACKAGE-" + uuid.uuid4().hex.encode()
    data = marker + os.urandom(300_000)
    item = put_evidence(s, data, Provenance(kind="voice_memo", actor="test"))
    result = export(s, [item.id])
    layout = layout_of(s, result.export_id)
    intact = b"".join(assemble(s.store, layout))
    flip_on_disk(private_seaweed, marker)
    got = bytearray()
    with pytest.raises((PackageAltered, StorageError)) as broken:
        for block in assemble(s.store, layout):
            got += block
    # SeaweedFS notices its own needle checksum and fails the read; a store that does not is caught
    # by the package's hash (test_altered_media_breaks_the_download_off). Either way, no whole zip.
    assert isinstance(broken.value, PackageAltered) or "InternalError" in str(broken.value)
    assert len(got) < len(intact)
    # The needle's checksum made to match, as someone with the disk would: the store now serves the
    # altered bytes (a second read failing the checksum would stall about 13 s in SeaweedFS's
    # retries; a store that cannot read the object at all is tests/test_custody_tamper.py's).
    altered = bytearray(data)
    altered[len(marker) + 10] ^= 0x01
    _match_needle_checksum(private_seaweed, data, bytes(altered))
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    # One finding for the item, and it names the package that can no longer be served whole.
    about = [p for p in report.problems if item.id in p.where]
    assert len(about) == 1 and result.export_id in about[0].detail, [str(p) for p in report.problems]
    s.db.dispose()


# -- a package keeps what it is assembled from -----------------------------------------------------


def test_retention_keeps_what_a_held_package_is_assembled_from(sqlite_services) -> None:  # type: ignore[no-untyped-def]
    s = sqlite_services
    alarm = put_evidence(
        s, b'{"alarm": "sos"}', Provenance(kind="alarm", actor="t", content_type="application/json")
    )
    clip = put_evidence(s, b"original footage", Provenance(kind="clip", actor="t", content_type="video/mp4"))
    result = export(s, [alarm.id, clip.id])
    assert result.included == [alarm.id] and clip.id in result.withheld
    # Storage too keeps the packaged item's object as long as the package, and custody says why.
    with s.db.session() as session:
        package = session.get(EvidenceItem, result.export_id)
        packaged = session.get(EvidenceItem, alarm.id)
        assert packaged.retain_until is not None and packaged.retain_until >= package.retain_until
        assert session.get(EvidenceItem, clip.id).retain_until is None  # withheld: untouched
        why = session.scalars(
            select(CustodyEntry.details).where(
                CustodyEntry.item_id == alarm.id, CustodyEntry.action == "retention_changed"
            )
        ).one()
    assert f"export package {result.export_id}" in json.loads(why)["cause"]
    assert s.store.info(alarm.object_key, alarm.version_id).retain_until >= package.retain_until
    rules = RetentionRules(unlinked=timedelta(days=1), after_closure=timedelta(days=1))
    later = datetime.now(UTC) + timedelta(days=30)  # every item's class has expired by then

    report = sweep(s.db, s.ledger, s.store, rules, clock=lambda: later)
    assert alarm.id not in report.deleted
    assert f"held export package {result.export_id}" in report.refused[alarm.id]
    # The withheld clip is not in the package's bytes: only its own object lock keeps it today.
    assert "storage refuses" in report.refused[clip.id]
    with s.db.session() as session:
        with pytest.raises(RetentionRefused) as refused:
            delete_by_hand(session, s.ledger, s.store, alarm.id, "user:admin", "recorded by mistake", later)
        assert refused.value.reason == "in_export_package"
        assert held_packages(session, alarm.id) == [result.export_id]
        # Once the package itself is gone, nothing of it holds the item any more.
        session.execute(
            update(EvidenceItem).where(EvidenceItem.id == result.export_id).values(status="deleted")
        )
        assert held_packages(session, alarm.id) == []
    report = sweep(s.db, s.ledger, s.store, rules, clock=lambda: later)
    assert "storage refuses" in report.refused[alarm.id]


@pytest.mark.parametrize("column", ["version_id", "blake3"])
def test_service_verify_checks_what_a_package_names(sqlite_services, column: str) -> None:  # type: ignore[no-untyped-def]
    s = sqlite_services
    memo = put_evidence(s, b"memo bytes", Provenance(kind="voice_memo", actor="t", content_type="audio/mp4"))
    result = export(s, [memo.id])
    with s.db.session() as session:
        assert verify_service(session, s.store, s.key).ok
        session.execute(update(EvidenceItem).where(EvidenceItem.id == memo.id).values({column: "f" * 64}))
    with s.db.session() as session:
        report = verify_service(session, s.store, s.key)
    found = kinds_at(report)
    assert ("package_reference_broken", f"export package {result.export_id}") in found, report.problems
    assert ("item_row_altered", f"evidence item {memo.id}") in found
