"""The zip byte-structure check on zips that ``zipfile`` writes: ZIP64 data descriptors, ZIP64 end
records, and each kind of stray bytes placed by hand."""

from __future__ import annotations

import io
import zipfile

import pytest

from chain_of_custody.zip_structure import structure_findings


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def,override]
        self.data += b
        return len(b)


def _kinds(data: bytes) -> list[str]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return [f.kind for f in structure_findings(io.BytesIO(data), len(data), zf.infolist())]


def _streamed() -> bytes:
    """As the package is written: to a stream that cannot seek, so every member has a data descriptor."""
    out = _Unseekable()
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(3):
            with zf.open(f"f{i}", "w", force_zip64=True) as f:
                f.write(b"x" * 1000)
        zf.writestr("small", b"abc")
    return bytes(out.data)


def test_well_formed_zips_have_no_findings() -> None:
    assert _kinds(_streamed()) == []
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
def test_stray_bytes_are_named(tamper, kind: str) -> None:  # type: ignore[no-untyped-def]
    assert _kinds(tamper(_streamed())) == [kind]


def test_bytes_hidden_between_members_are_named() -> None:
    """A gap after the first member, with every offset after it moved on so that zipfile reads it."""
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("a", b"first")
        zf.writestr("b", b"second")
    data = plain.getvalue()
    second = zipfile.ZipFile(io.BytesIO(data)).getinfo("b").header_offset
    hidden = b"HIDDEN" * 10
    moved = io.BytesIO()
    with zipfile.ZipFile(moved, "w") as zf:
        zf.writestr("a", b"first")
        zf.fp.write(hidden)  # type: ignore[union-attr]
        zf.start_dir += len(hidden)  # where zipfile writes the next header
        zf.writestr("b", b"second")
    assert second > 0 and _kinds(moved.getvalue()) == ["bytes_in_zip"]
