"""The zip byte-structure check on zips as packages are written and as ``zipfile`` writes them (ZIP64
end records), and each kind of stray bytes placed by hand."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from chain_of_custody.zip_structure import structure_findings
from incidents.export.zip import ZipBuilder


def _kinds(data: bytes) -> list[str]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return [f.kind for f in structure_findings(io.BytesIO(data), len(data), zf.infolist())]


def _packaged(hidden: bytes = b"") -> bytes:
    """As a package is written (``ZipBuilder``: data descriptors, a stored and a deflated member),
    with ``hidden`` bytes between the two members if given."""
    zb = ZipBuilder(datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    data = b"x" * 1000
    out = zb.header("evidence/a.mp4", len(data), stored=True) + data
    out += zb.descriptor(zlib.crc32(data), len(data), len(data))
    out += hidden
    zb.pos += len(hidden)
    out += zb.deflated("VERIFY.txt", b"how to verify")
    return out + zb.end()


def test_well_formed_zips_have_no_findings() -> None:
    assert _kinds(_packaged()) == []
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:  # over 65,535 members: ZIP64 end records
        for i in range(70_000):
            zf.writestr(f"f{i}", b"")
    assert _kinds(many.getvalue()) == []


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (lambda z: b"MZ payload" + z, "bytes_before_zip"),
        (lambda z: z + b"trailing", "bytes_after_zip"),
        (lambda z: z[:-2] + b"\x05\x00hello", "zip_comment"),
    ],
    ids=["prepended", "appended", "comment"],
)
def test_stray_bytes_are_named(tamper: Callable[[bytes], bytes], kind: str) -> None:
    assert _kinds(tamper(_packaged())) == [kind]


def test_bytes_hidden_between_members_are_named() -> None:
    """A gap after the first member, every offset after it moved on so that zipfile reads it."""
    assert _kinds(_packaged(b"HIDDEN" * 10)) == ["bytes_in_zip"]
